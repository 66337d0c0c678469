"""Build of the Cython kernels: every src_ext/*.pyx becomes fastrnn._ext.<name>.

OpenMP is used where the compiler accepts it and the build still works without
it; set FASTRNN_OPENMP=0 to build without, FASTRNN_FAIL_NO_OPENMP=1 to make a
missing OpenMP an error.
"""
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).parent
OPENMP_FLAGS = {"unix": ["-fopenmp"], "msvc": ["/openmp"], "mingw32": ["-fopenmp"]}


def compiler_supports_openmp(compiler, flags):
    """Compile and link a tiny OpenMP program with the compiler setuptools will use."""
    tmp = tempfile.mkdtemp()
    try:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(textwrap.dedent("""
                #include <omp.h>
                int main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }
            """))
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
            compiler_supports_openmp(self.compiler, flags)
        if not use:
            msg = "fastrnn: building without OpenMP (kernels run single-threaded outside BLAS)"
            if os.environ.get("FASTRNN_FAIL_NO_OPENMP"):
                sys.exit(msg + " and FASTRNN_FAIL_NO_OPENMP is set")
            print(msg)
        opt = ["/O2"] if kind == "msvc" else ["-O3"]
        for ext in self.extensions:
            ext.extra_compile_args = opt + (flags if use else [])
            ext.extra_link_args = flags if use else []
        super().build_extensions()


extensions = [
    Extension(f"fastrnn._ext.{Path(p).stem}", [p],
              define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")])
    for p in sorted(glob.glob("src_ext/*.pyx"))
]

setup(
    ext_modules=cythonize(extensions, include_path=["src_ext"],
                          compiler_directives={"language_level": 3}),
    cmdclass={"build_ext": BuildExt},
)
