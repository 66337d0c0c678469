"""Interleaved side-by-side timings of fastrnn and its peers over the grid.

    python benchmarks/compare.py [--shapes latency,small] [--cells lstm] [--rounds 9]

Every implementation of one cell x shape x mode runs in turn (A B C A B C ...)
in one process, so a noisy machine slows them alike; the table gives medians
in ms and the ratio of the fastest peer's median to fastrnn's (> 1: fastrnn
is faster). Threads: 2 for BLAS, torch and ONNX Runtime (--threads).
"""
import os

# torch's OpenMP workers spin after each call by default and would slow
# whatever is timed next; set before torch (or anything OpenMP) loads
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import platform
import time

import numpy as np  # noqa: E402

import fastrnn  # noqa: E402
from fastrnn import _peers  # noqa: E402


def interleaved_medians(runs, rounds):
    for run in runs:                 # warm-up: JIT, first-touch allocation
        run()
    times = [[] for _ in runs]
    for _ in range(rounds):
        for i, run in enumerate(runs):
            t = time.perf_counter()
            run()
            times[i].append(time.perf_counter() - t)
    return [1e3 * float(np.median(t)) for t in times]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default=",".join(_peers.SHAPES))
    parser.add_argument("--cells", default=",".join(_peers.CELLS))
    parser.add_argument("--modes", default=",".join(_peers.MODES))
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from threadpoolctl import threadpool_limits
    threadpool_limits(args.threads)
    ours = [b for b in ("cython", "numba") if b in fastrnn.available_backends()]
    peers = [p for p in ("torch", "onnxruntime") if importlib.util.find_spec(p)]
    print(f"# {platform.processor() or platform.machine()}, threads={args.threads}, "
          f"float32, median ms of {args.rounds} interleaved rounds\n")
    names = ours + peers
    print("| cell | shape | mode | " + " | ".join(names) + " | best peer / best fastrnn |")
    print("|---" * (len(names) + 4) + "|")
    for cell in args.cells.split(","):
        for shape in args.shapes.split(","):
            case = _peers.make_case(cell, shape)
            for mode in args.modes.split(","):
                runs, cols = [], []
                for name in names:
                    if name in ours:
                        runs.append(_peers.fastrnn_runner(case, mode, name))
                    elif name == "torch":
                        runs.append(_peers.torch_runner(case, mode, args.threads))
                    elif mode == "inference":
                        runs.append(_peers.onnxruntime_runner(case, mode, args.threads))
                    else:
                        runs.append(None)
                    cols.append(name)
                medians = interleaved_medians([r for r in runs if r], args.rounds)
                it = iter(medians)
                row = {c: (next(it) if r else None) for c, r in zip(cols, runs)}
                best_ours = min(row[n] for n in ours)
                best_peer = min((row[n] for n in peers if row[n] is not None), default=None)
                ratio = f"{best_peer / best_ours:.2f}x" if best_peer else "-"
                cells_txt = " | ".join("-" if row[n] is None else f"{row[n]:.2f}" for n in names)
                print(f"| {cell} | {shape} | {mode} | {cells_txt} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
