"""Build of the Cython kernels: every src_ext/*.pyx becomes fastrnn._ext.<name>.

On x86-64 the kernel modules (``KERNELS``) are built a second time as
``fastrnn._ext.<name>_v3`` with ``-march=x86-64-v3`` (AVX2, FMA: Haswell, Zen
and later), and ``fastrnn._cython_backend`` imports those where the CPU has
them: the wheel stays portable and the fused loops still run 8 wide with FMA.
FASTRNN_V3=0 skips the second build; FASTRNN_NATIVE=1 builds everything for
this CPU only.

OpenMP is used where the compiler accepts it and the build still works without
it; set FASTRNN_OPENMP=0 to build without, FASTRNN_FAIL_NO_OPENMP=1 to make a
missing OpenMP an error.
"""
import glob
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).parent
OPENMP_FLAGS = {"unix": ["-fopenmp"], "msvc": ["/openmp"], "mingw32": ["-fopenmp"]}
OPENMP_PROBE = """
#include <omp.h>
int main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }
"""
# Let the fused element-wise loops vectorise: -fno-trapping-math allows
# if-converting the branch-free selects of _vmath.h (we never read FP exception
# flags), and the fused loops touch up to ~10 arrays, more pairs than GCC's
# default limit of runtime alias checks.
VECTORISE_FLAGS = ["-fno-trapping-math", "--param=vect-max-version-for-alias-checks=64"]
PLAIN_PROBE = "int main(void) { return 0; }\n"


def compiler_accepts(compiler, flags, source=PLAIN_PROBE):
    """Compile and link ``source`` with ``flags`` using the compiler setuptools will use."""
    tmp = tempfile.mkdtemp()
    try:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(source)
        objects = compiler.compile([src], output_dir=tmp, extra_postargs=flags)
        compiler.link_executable(objects, os.path.join(tmp, "probe"), extra_postargs=flags)
        return True
    except Exception:
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class BuildExt(build_ext):
    def build_extensions(self):
        kind = self.compiler.compiler_type
        flags = OPENMP_FLAGS.get(kind, [])
        use = os.environ.get("FASTRNN_OPENMP", "1") != "0" and flags and \
            compiler_accepts(self.compiler, flags, OPENMP_PROBE)
        if not use:
            msg = "fastrnn: building without OpenMP (kernels run single-threaded outside BLAS)"
            if os.environ.get("FASTRNN_FAIL_NO_OPENMP"):
                sys.exit(msg + " and FASTRNN_FAIL_NO_OPENMP is set")
            print(msg)
        opt = ["/O2"] if kind == "msvc" else ["-O3"]
        opt += [f for f in VECTORISE_FLAGS if kind != "msvc" and compiler_accepts(self.compiler, [f])]
        if os.environ.get("FASTRNN_NATIVE") == "1":
            # opt-in: tuned for this CPU only, the wheel will not run elsewhere
            opt += ["-march=native"]
        v3 = [e for e in self.extensions if e.name.endswith("_v3")]
        if v3 and not compiler_accepts(self.compiler, V3_FLAGS):
            print("fastrnn: the compiler does not accept -march=x86-64-v3; "
                  "building the baseline kernels only")
            self.extensions = [e for e in self.extensions if e not in v3]
        for ext in self.extensions:
            ext.extra_compile_args = opt + (flags if use else []) + \
                (V3_FLAGS if ext in v3 else [])
            ext.extra_link_args = flags if use else []
        super().build_extensions()


#: the modules with the time loops, built a second time for x86-64-v3, and the
#: activations module through which tests bound that build's error too
KERNELS = ("lstm", "gru", "rnn", "activations")
V3_FLAGS = ["-march=x86-64-v3"]


def v3_sources():
    """Copies of the kernel sources named <name>_v3.pyx (Cython names a module
    after its file), or none where a second build cannot help."""
    if platform.machine().lower() not in ("x86_64", "amd64") or sys.platform == "win32" \
            or os.environ.get("FASTRNN_V3", "1") == "0" or os.environ.get("FASTRNN_NATIVE") == "1":
        return []
    out = HERE / "build" / "src_v3"
    out.mkdir(parents=True, exist_ok=True)
    copies = []
    for name in KERNELS:
        src, dst = HERE / "src_ext" / f"{name}.pyx", out / f"{name}_v3.pyx"
        text = src.read_text()
        if not dst.exists() or dst.read_text() != text:    # keep the mtime: no needless rebuild
            dst.write_text(text)
        copies.append(str(dst.relative_to(HERE)))
    return copies


extensions = [
    Extension(f"fastrnn._ext.{Path(p).stem}", [p],
              include_dirs=["src_ext"],
              define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")])
    for p in sorted(glob.glob("src_ext/*.pyx")) + v3_sources()
]

setup(
    ext_modules=cythonize(extensions, include_path=["src_ext"],
                          compiler_directives={"language_level": 3}),
    cmdclass={"build_ext": BuildExt},
)
