"""A/B: the builds of the Cython kernels (baseline, x86-64-v3, x86-64-v4) in one process.

Each build this CPU runs takes turns as fastrnn's "cython" backend (the kernel
modules of ``fastrnn._cython_backend`` swapped before each call), in
``bench.interleaved_times``' balanced orders; float32, 2 threads, as the
bench. Prints medians and, for each build, the median of the per-round ratios
of the first build's time to it (above 1: faster than the first).

    python benchmarks/ab_isa.py [rounds [cells [shapes [modes [builds]]]]]

``shapes`` as the bench takes them (names, or B,T,I,H four numbers at a time).

``builds``: comma-separated FASTRNN_ISA names, default every runnable one. A
name followed by ``@DIR`` takes that build's kernel modules from DIR, another
checkout's ``fastrnn/_ext`` built in place: a kernel change against the
kernels before it, with the Python of this checkout, e.g.
``x86-64-v4@/tmp/old/fastrnn/_ext,x86-64-v4``.

Each build runs its own fastrnn layer: a frozen layer keeps the kernel its
first call of a shape found (``SplitBackend._planned``).
"""
import glob
import importlib
import importlib.util
import os
import sys

import numpy as np

from fastrnn import _cython_backend, _parallel, _peers, bench

rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 7
cells = sys.argv[2].split(",") if len(sys.argv) > 2 else ["lstm", "gru", "rnn_tanh"]
shapes = bench._parse_shapes(sys.argv[3]) if len(sys.argv) > 3 else list(_peers.SHAPES)
modes = sys.argv[4].split(",") if len(sys.argv) > 4 else ["inference", "training"]
runnable = dict(_cython_backend.runnable_builds())
builds = sys.argv[5].split(",") if len(sys.argv) > 5 else list(runnable)[::-1]


def kernel_module(name, build):
    """The kernel module ``name`` ("lstm", ...) of ``build`` ("ISA" or "ISA@DIR")."""
    isa, _, directory = build.partition("@")
    stem = f"{name}{runnable[isa]}"
    if not directory:
        return importlib.import_module(f"fastrnn._ext.{stem}")
    paths = glob.glob(os.path.join(directory, f"{stem}.cpython-*.so"))
    if not paths:
        raise SystemExit(f"no {stem} extension in {directory}")
    # a package of its own, so that it does not replace this checkout's module;
    # the extension's init function is found by the last part of the name
    spec = importlib.util.spec_from_file_location(f"fastrnn_ab_{abs(hash(build))}.{stem}",
                                                  paths[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


modules = {b: tuple(kernel_module(n, b) for n in ("lstm", "gru", "rnn")) for b in builds}
loaded = (_cython_backend._lstm, _cython_backend._gru, _cython_backend._rnn)

_parallel.set_num_threads(2)
handle = _parallel.limit_threads(2)     # BLAS at 2 threads while the handle lives
first = builds[0]
print(f"# rounds={rounds}; medians in ms; {first}/X: median of per-round ratios")
print("| cell | shape | mode | " + " | ".join(f"{b} ms" for b in builds) + " | "
      + " | ".join(f"{first}/{b}" for b in builds[1:]) + " |")
print("|---" * (3 + 2 * len(builds) - 1) + "|")
for cell in cells:
    for shape in shapes:
        for mode in modes:
            case = _peers.make_case(cell, shape, dtype=np.float32)

            def with_build(build):
                run = _peers.fastrnn_runner(case, mode, "cython")

                def call():
                    _cython_backend._lstm, _cython_backend._gru, _cython_backend._rnn = \
                        modules[build]
                    return run()
                return call
            times = [np.array(t) for t in
                     bench.interleaved_times([with_build(b) for b in builds], rounds)]
            medians = " | ".join(f"{np.median(t) * 1e3:.3g}" for t in times)
            ratios = " | ".join(f"{np.median(times[0] / t):.2f}" for t in times[1:])
            print(f"| {cell} | {shape} | {mode} | {medians} | {ratios} |", flush=True)
_cython_backend._lstm, _cython_backend._gru, _cython_backend._rnn = loaded
