"""Build of the Cython kernels: every src_ext/*.pyx becomes fastrnn._ext.<name>.

On x86-64 the kernel modules (``KERNELS``) are built twice more, as
``fastrnn._ext.<name>_v3`` with ``-march=x86-64-v3`` (AVX2, FMA: Haswell, Zen
and later) and ``fastrnn._ext.<name>_v4`` with ``-march=x86-64-v4`` (AVX-512:
Skylake-SP, Ice Lake, Sapphire Rapids, Zen 4 and later), and
``fastrnn._cython_backend`` imports the best build the CPU runs: the wheel
stays portable and the kernels still use the vector units of the machine.
FASTRNN_V3=0 skips both extra builds; FASTRNN_NATIVE=1 builds everything for
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
        isa_flags = {}
        for suffix, level_flags in ISA_LEVELS.items():
            level = [e for e in self.extensions if e.name.endswith(suffix)]
            if level and not compiler_accepts(self.compiler, level_flags):
                print(f"fastrnn: the compiler does not accept {level_flags[0]}; "
                      f"not building the {suffix[1:]} kernels")
                self.extensions = [e for e in self.extensions if e not in level]
            isa_flags.update((e.name, level_flags) for e in level)
        for ext in self.extensions:
            ext.extra_compile_args = opt + (flags if use else []) + isa_flags.get(ext.name, [])
            ext.extra_link_args = flags if use else []
        super().build_extensions()


#: the modules with the time loops, built again for each x86-64 level; the
#: activations and packing modules, through which tests check each build's
#: activations and packed product directly
KERNELS = ("lstm", "gru", "rnn", "activations", "packing")
#: module suffix -> the flags of that build
ISA_LEVELS = {"_v3": ["-march=x86-64-v3"], "_v4": ["-march=x86-64-v4"]}


def isa_sources():
    """Copies of the kernel sources named <name>_v3.pyx, <name>_v4.pyx (Cython
    names a module after its file), or none where more builds cannot help."""
    if platform.machine().lower() not in ("x86_64", "amd64") or sys.platform == "win32" \
            or os.environ.get("FASTRNN_V3", "1") == "0" or os.environ.get("FASTRNN_NATIVE") == "1":
        return []
    copies = []
    for suffix in ISA_LEVELS:
        out = HERE / "build" / f"src{suffix}"
        out.mkdir(parents=True, exist_ok=True)
        for name in KERNELS:
            src, dst = HERE / "src_ext" / f"{name}.pyx", out / f"{name}{suffix}.pyx"
            text = src.read_text()
            if not dst.exists() or dst.read_text() != text:    # keep the mtime: no needless rebuild
                dst.write_text(text)
            copies.append(str(dst.relative_to(HERE)))
    return copies


extensions = [
    Extension(f"fastrnn._ext.{Path(p).stem}", [p],
              include_dirs=["src_ext"],
              define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")])
    for p in sorted(glob.glob("src_ext/*.pyx")) + isa_sources()
]

setup(
    ext_modules=cythonize(extensions, include_path=["src_ext"],
                          compiler_directives={"language_level": 3}),
    cmdclass={"build_ext": BuildExt},
)
