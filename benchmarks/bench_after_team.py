"""What an OpenMP team leaves behind: a split batch right after a unit split.

A unit-split call (``_cython_backend.unit_parts``) runs on an OpenMP team; a
split batch (``_parallel.run_parts``) runs its second part on a Python
thread. If the team's idle thread still spins for its next region when the
split batch starts, the two share a core. This times a split-batch call
(GRU medium inference) right after one of its own kind and right after a
unit-split call (GRU latency inference), taking turns, median of 60:

    python benchmarks/bench_after_team.py [--rounds 60]
    GOMP_SPINCOUNT=300000 python benchmarks/bench_after_team.py   # libgomp's default

``fastrnn._ext`` sets libgomp's spin count (``GOMP_SPINCOUNT``) when it
loads, unless the environment sets it or ``OMP_WAIT_POLICY``.
"""
import argparse
import time

import numpy as np

from fastrnn import _parallel, _peers, bench


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=60)
    args = p.parse_args()
    _parallel.set_num_threads(2)
    handle = _parallel.limit_threads(2)     # BLAS at 2 threads while the handle lives
    team = bench._runner("cython", _peers.make_case("gru", "latency"), "inference", 2)
    split = bench._runner("cython", _peers.make_case("gru", "medium"), "inference", 2)
    for _ in range(20):
        team()
        split()
    alone, after = [], []
    for _ in range(args.rounds):
        for _ in range(3):
            split()
        t = time.perf_counter()
        split()
        alone.append(time.perf_counter() - t)
        team()
        t = time.perf_counter()
        split()
        after.append(time.perf_counter() - t)
    del handle
    print(f"GRU medium inference (a split batch), median of {args.rounds}: "
          f"after its own kind {np.median(alone) * 1e3:.2f} ms, right after a unit-split "
          f"call {np.median(after) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
