"""What an OpenMP team leaves behind: a split batch right after a unit split.

A unit-split call (``_cython_backend.unit_parts``) runs on an OpenMP team; a
split batch (``_parallel.run_parts``) ran its second part on a Python
thread. If the team's idle thread still spun for its next region when the
split batch started, the two shared a core (the parts now run on the team
itself: ``_parallel.TEAM_PARTS``). This times a split-batch call
(GRU medium inference) right after one of its own kind and right after a
unit-split call (GRU latency inference), taking turns, median of 60:

    python benchmarks/bench_after_team.py [--rounds 60]
    GOMP_SPINCOUNT=300000 python benchmarks/bench_after_team.py   # libgomp's default

``fastrnn._ext`` sets libgomp's spin count (``GOMP_SPINCOUNT``) when it
loads, unless the environment sets it or ``OMP_WAIT_POLICY``, or a libgomp
was loaded before it. ``--after torch`` puts a torch product (256 x 256 x
256, torch's threads at 2) before the timed call instead of the unit split;
``--torch-first`` imports torch before fastrnn, as a PyTorch program may,
whose ``libgomp.so.1`` the kernels then share with its default spin count::

    python benchmarks/bench_after_team.py --after torch --torch-first
    python benchmarks/bench_after_team.py --after torch
"""
import argparse
import time

import numpy as np


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--after", choices=("team", "torch"), default="team")
    p.add_argument("--torch-first", action="store_true",
                   help="import torch before fastrnn")
    args = p.parse_args()
    if args.torch_first:
        import torch        # noqa: F401
    from fastrnn import _parallel, _peers, bench
    if args.after == "torch":
        import torch
    _parallel.set_num_threads(2)
    handle = _parallel.limit_threads(2)     # BLAS at 2 threads while the handle lives
    split = bench._runner("cython", _peers.make_case("gru", "medium"), "inference", 2)
    if args.after == "torch":
        torch.set_num_threads(2)
        a, b = torch.randn(256, 256), torch.randn(256, 256)
        before = lambda: a @ b      # noqa: E731
        what = "a torch product" + (", torch imported first" if args.torch_first else "")
    else:
        before = bench._runner("cython", _peers.make_case("gru", "latency"), "inference", 2)
        what = "a unit-split call"
    for _ in range(20):
        before()
        split()
    alone, after = [], []
    for _ in range(args.rounds):
        for _ in range(3):
            split()
        t = time.perf_counter()
        split()
        alone.append(time.perf_counter() - t)
        before()
        t = time.perf_counter()
        split()
        after.append(time.perf_counter() - t)
    del handle
    print(f"GRU medium inference (a split batch), median of {args.rounds}: "
          f"after its own kind {np.median(alone) * 1e3:.2f} ms, right after {what} "
          f"{np.median(after) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
