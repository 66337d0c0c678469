"""What fastrnn's spin count costs torch: torch ops after an idle gap.

``import fastrnn`` sets GNU OpenMP's spin count (``GOMP_SPINCOUNT``) for the
``libgomp.so.1`` it loads, which torch then shares when it is imported after
fastrnn: its idle threads sleep after about 0.2 ms instead of about 6 ms,
and a torch op after a longer gap waits for them to wake. This times two
torch ops (a 256 x 256 x 256 product and a Linear(512, 512) over 64 rows,
torch's threads at 2) after gaps of busy work on the calling thread, median
of ``--calls``, importing fastrnn first or torch first (each in a process of
its own, the two taking turns ``--runs`` times)::

    python benchmarks/bench_torch_after_gap.py

The other side of the trade, fastrnn's split batch after a torch op, is
``benchmarks/bench_after_team.py --after torch [--torch-first]``.
"""
import argparse
import subprocess
import sys
import time

GAPS_US = (0, 100, 300, 1000, 3000)


def child(first, calls):
    if first == "torch":
        import torch
        import fastrnn      # noqa: F401
    else:
        import fastrnn      # noqa: F401
        import torch
    import numpy as np
    torch.set_num_threads(2)
    a, b = torch.randn(256, 256), torch.randn(256, 256)
    x, linear = torch.randn(64, 512), torch.nn.Linear(512, 512)
    ops = (("256^3 product", lambda: a @ b), ("Linear, 64 rows", lambda: linear(x)))
    for name, op in ops:
        row = []
        for gap in GAPS_US:
            times = []
            for _ in range(calls):
                end = time.perf_counter() + gap * 1e-6
                while time.perf_counter() < end:
                    pass
                t = time.perf_counter()
                op()
                times.append(time.perf_counter() - t)
            row.append(np.median(times) * 1e6)
        print(name, *(f"{v:.1f}" for v in row), sep="\t")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--child", choices=("fastrnn", "torch"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child, args.calls)
        return
    print(f"| first | op | " + " | ".join(f"after {g} µs" for g in GAPS_US) + " |")
    print("|---|---|" + "---|" * len(GAPS_US))
    for _ in range(args.runs):
        for first in ("torch", "fastrnn"):
            out = subprocess.run([sys.executable, __file__, "--child", first, "--calls",
                                  str(args.calls)], capture_output=True, text=True, check=True)
            for line in out.stdout.splitlines():
                name, *values = line.split("\t")
                print(f"| {first} | {name} | " + " | ".join(values) + " |", flush=True)


if __name__ == "__main__":
    main()
