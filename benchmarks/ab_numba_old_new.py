"""A/B: the Numba backend before and after a change, and Cython, in one process.

Old and new backend modules take turns as fastrnn's "numba" backend
(``_backends.get("numba").module``), with Cython as a third run, in
``bench.interleaved_times``' balanced orders; float32, 2 threads, as the bench.
Prints medians and the median of per-round ratios.

The old backend is imported as ``fastrnn._numba_backend_old`` over
``fastrnn._numba.kernels_old``; make them from the commit to compare against
(not to be committed), run, then delete them and their ``__pycache__`` files::

    git show main:fastrnn/_numba/kernels.py > fastrnn/_numba/kernels_old.py
    git show main:fastrnn/_numba_backend.py | sed 's/import kernels as _k/import kernels_old as _k/' \
        > fastrnn/_numba_backend_old.py
    python benchmarks/ab_numba_old_new.py [rounds [cells [shapes [modes]]]]
"""
import sys
import numpy as np
from fastrnn import _backends, _parallel, _peers, bench
from fastrnn import _numba_backend as new, _numba_backend_old as old

rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 7
cells = sys.argv[2].split(",") if len(sys.argv) > 2 else ["lstm", "gru", "rnn_tanh"]
shapes = sys.argv[3].split(",") if len(sys.argv) > 3 else list(_peers.SHAPES)
modes = sys.argv[4].split(",") if len(sys.argv) > 4 else ["inference", "training"]
_parallel.set_num_threads(2)
handle = _parallel.limit_threads(2)     # BLAS at 2 threads while the handle lives
split = _backends.get("numba")
print(f"# rounds={rounds}; medians in ms; ratios are medians of per-round ratios")
print("| cell | shape | mode | old numba | new numba | old/new | cython | new numba/cython |")
print("|---|---|---|---|---|---|---|---|")
for cell in cells:
    for shape in shapes:
        for mode in modes:
            case = _peers.make_case(cell, shape, dtype=np.float32)
            nb = _peers.fastrnn_runner(case, mode, "numba")
            cy = _peers.fastrnn_runner(case, mode, "cython")

            def with_module(m):
                def run():
                    split.module = m
                    return nb()
                return run
            t_old, t_new, t_cy = bench.interleaved_times([with_module(old), with_module(new), cy],
                                                         rounds)
            t_old, t_new, t_cy = map(np.array, (t_old, t_new, t_cy))
            print(f"| {cell} | {shape} | {mode} | {np.median(t_old)*1e3:.3g} | "
                  f"{np.median(t_new)*1e3:.3g} | {np.median(t_old / t_new):.2f} | "
                  f"{np.median(t_cy)*1e3:.3g} | {np.median(t_new / t_cy):.2f} |", flush=True)
split.module = new
