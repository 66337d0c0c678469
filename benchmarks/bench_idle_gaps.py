"""Frozen short calls with idle time between them, as a stream has.

The bench times every call right after calls of its own kind. A stream's
steps come with other work between them (a decoder's softmax and sampling),
or with nothing to do until the next input arrives; fastrnn's OpenMP thread
spins for about 0.2 ms after a region, then sleeps. This times frozen
one-step calls after gaps of busy work or of sleep, with settings taking
turns in blocks of calls (float32, 2 threads, random initial states), and
prints the median time of a call under each setting, gap by gap. The
defaults compare the team always (``IDLE_TEAM_S=None``) with fastrnn's rule
(a short call after an idle gap runs on the calling thread)::

    python benchmarks/bench_idle_gaps.py --cells lstm,gru,rnn_tanh \\
        --shapes 1,1,128,128,4,1,256,256,8,1,256,256,1,1,512,512

Settings as ``benchmarks/ab_setting.py`` takes them (``module.ATTR=value``).
``--peers onnxruntime,torch`` times those after the same gaps too (2
threads each, their default spinning), after fastrnn's settings. ``--gaps``
sets the gaps (``0:none,300:busy,1000:sleep,...``). libgomp's spin count is
the process's: compare it across processes, one setting each, e.g.
``GOMP_SPINCOUNT=300000 python benchmarks/bench_idle_gaps.py
"_parallel.TEAM_PARTS=True"`` against the same without the variable.
"""
import argparse
import time

import numpy as np

from ab_setting import applier     # benchmarks/, the script's directory
from fastrnn import _parallel, _peers, bench

GAPS = ((0, "none"), (300, "busy"), (1000, "busy"), (1000, "sleep"))


def busy(us):
    end = time.perf_counter() + us * 1e-6
    while time.perf_counter() < end:
        pass


def timed_calls(run, gap_us, how, n):
    """Seconds of each of ``n`` calls, each after ``gap_us`` of ``how``."""
    times = []
    for _ in range(n):
        if how == "sleep":
            time.sleep(gap_us * 1e-6)
        elif how == "busy":
            busy(gap_us)
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return times


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("settings", nargs="*",
                   default=["_cython_backend.IDLE_TEAM_S=None",
                            "_cython_backend.IDLE_TEAM_S=150e-6"])
    p.add_argument("--cells", default="lstm,gru,rnn_tanh")
    p.add_argument("--shapes", default="1,1,128,128,4,1,256,256,8,1,256,256,1,1,512,512")
    p.add_argument("--peers", default="", help="onnxruntime,torch: time them too")
    p.add_argument("--rounds", type=int, default=4, help="blocks of calls per setting and gap")
    p.add_argument("--calls", type=int, default=100, help="timed calls per block")
    p.add_argument("--gaps", default=",".join(f"{g}:{h}" for g, h in GAPS),
                   help="the gaps, us:busy or us:sleep (0:none for none)")
    args = p.parse_args()
    gaps = [(int(g), h) for g, h in (item.split(":") for item in args.gaps.split(","))]
    apply = applier(args.settings)
    _parallel.set_num_threads(2)
    handle = _parallel.limit_threads(2)     # noqa: F841 (BLAS at 2 threads while it lives)
    print(f"# {args.rounds} blocks of {args.calls} calls per setting and gap; median us a call")
    peers = [name for name in args.peers.split(",") if name]
    print("# settings: " + " | ".join(f"[{k}] {s}" for k, s in enumerate(args.settings))
          + "".join(f" | {name}" for name in peers))
    print("| cell | shape | " + " | ".join(f"{g} us {h}" if g else "no gap" for g, h in gaps)
          + " |")
    print("|---|---|" + "---|" * len(gaps))
    for cell in args.cells.split(","):
        for shape in bench._parse_shapes(args.shapes):
            case = _peers.make_case(cell, shape, dtype=np.float32, initial_states=True)
            runs = []
            for k in range(len(args.settings)):
                # a frozen layer for each setting: its first call decides under it
                apply(k)
                runs.append(_peers.fastrnn_runner(case, "inference", "cython"))
                runs[k]()
            apply(None)
            for name in peers:
                runner = getattr(_peers, f"{name}_runner")
                runs.append(runner(case, "inference", threads=2))
                runs[-1]()
            cells = []
            for gap, how in gaps:
                times = [[] for _ in runs]
                for r in range(args.rounds):
                    order = range(len(runs))
                    for k in (order if r % 2 == 0 else reversed(order)):
                        apply(k if k < len(args.settings) else None)
                        timed_calls(runs[k], gap, how, 5)   # into the gap's state first
                        times[k] += timed_calls(runs[k], gap, how, args.calls)
                apply(None)
                cells.append(" / ".join(f"{np.median(t) * 1e6:.1f}" for t in times))
            print(f"| {cell} | {bench._shape_name(shape)} | " + " | ".join(cells) + " |",
                  flush=True)


if __name__ == "__main__":
    main()
