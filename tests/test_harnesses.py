"""The C harnesses under benchmarks/ still build against src_ext's headers.

RESULTS.md quotes figures from them, each with the command in its header;
they include the kernels' own headers (``_packed_gemm.h``, ``_vmath.h``), so
a change of a kernel's signature there must reach them too. Each is built
here with the first ``gcc`` command of its header comment (compiled and
linked, not run: their timings are benchmarks, not tests).
"""
import pathlib
import re
import shlex
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
HARNESSES = sorted((ROOT / "benchmarks").glob("*.c"))

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="no gcc here")


def build_command(source):
    """The first ``gcc ...`` line of the header, up to ``&&``, as arguments."""
    match = re.search(r"^\s*\*\s*(gcc [^\n]*)", source.read_text(), re.M)
    assert match, f"{source.name}: its header gives no gcc command"
    return shlex.split(match.group(1).split("&&")[0])


@pytest.mark.parametrize("source", HARNESSES, ids=[p.name for p in HARNESSES])
def test_harness_builds(source, tmp_path):
    args = build_command(source)
    assert "-o" in args, f"{source.name}: its gcc command names no output"
    args[args.index("-o") + 1] = str(tmp_path / source.stem)
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(args)}\n{done.stderr[-3000:]}"
