"""A/B: the Python of a frozen layer's call, before and after a change, in one process.

A frozen layer's short call is mostly Python: its plan (``fastrnn/_inference_plan.py``)
and the Cython backend's ``ForwardCall`` around the kernel. This times the
plan and ``ForwardCall`` of another checkout (the old ones) against this
checkout's, on the same frozen weights and kernels, alternating in blocks
of ``--calls`` calls (a call of a few microseconds is too short to time
alone), and checks that both give the same bits. Float32, 2 threads, each
implementation given the same random initial states. Prints medians and the
median of per-round ratios old / new (above 1: the new code is faster).

Make the old files from the commit to compare against, then run::

    mkdir -p /tmp/old && for f in _inference_plan.py _cython_backend.py; do
        git show 95f9843:fastrnn/$f > /tmp/old/$f; done
    python benchmarks/ab_frozen_python.py /tmp/old lstm:1,1,128,128 gru:4,1,100,100

Each case is ``cell:B,T,I,H``.
"""
import argparse
import importlib.util
import os
import time

import numpy as np

from fastrnn import _inference_plan, _parallel, _peers


def load(directory, name):
    """Module ``name`` of the old checkout, inside the ``fastrnn`` package (its
    relative imports resolve to this checkout's other modules)."""
    spec = importlib.util.spec_from_file_location(f"fastrnn.{name}_old",
                                                  os.path.join(directory, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("old", help="a directory with the old _inference_plan.py and _cython_backend.py")
    p.add_argument("cases", nargs="+", help="cell:B,T,I,H")
    p.add_argument("--rounds", type=int, default=41)
    p.add_argument("--calls", type=int, default=200)
    args = p.parse_args()
    old_plan, old_backend = load(args.old, "_inference_plan"), load(args.old, "_cython_backend")
    _parallel.set_num_threads(2)
    handle = _parallel.limit_threads(2)     # noqa: F841 (BLAS at 2 threads while it lives)
    print(f"# rounds={args.rounds} of {args.calls} calls; medians in us; old/new: median of "
          "per-round ratios")
    print("| cell | shape | old us | new us | old/new | same bits |")
    print("|---|---|---|---|---|---|")
    for case_arg in args.cases:
        cell, shape = case_arg.split(":")
        shape = tuple(int(v) for v in shape.split(","))
        case = _peers.make_case(cell, shape, dtype=np.float32, initial_states=True)
        frozen = _peers.fastrnn_layer(case, "cython").freeze()
        layer, x = frozen._layer, case.x
        hx = tuple(np.ascontiguousarray(s[None]) for s in case.states)
        hx = hx if cell == "lstm" else hx[0]
        new = _inference_plan.make(layer, x.shape)
        old = old_plan.make(layer, x.shape)
        call = new.runs[0]
        if not hasattr(call, "options"):
            raise SystemExit(f"{case_arg}: the plan's call is not a ForwardCall")
        T, B, _ = x.shape
        old.runs = [old_backend.ForwardCall(cell, call.dtype, T, B, layer._params_cache[0],
                                            False, False, unit_parts=call.unit_parts)]
        a, b = old(x, hx), new(x, hx)
        flat = lambda r: [r[0]] + (list(r[1]) if isinstance(r[1], tuple) else [r[1]])  # noqa: E731
        same = all(np.array_equal(u, v) for u, v in zip(flat(a), flat(b)))
        runs = [lambda: old(x, hx), lambda: new(x, hx)]
        times = [[], []]
        for r in range(args.rounds):
            for i in ((0, 1) if r % 2 == 0 else (1, 0)):
                t0 = time.perf_counter()
                for _ in range(args.calls):
                    runs[i]()
                times[i].append((time.perf_counter() - t0) / args.calls * 1e6)
        t_old, t_new = np.array(times[0]), np.array(times[1])
        print(f"| {cell} | {shape} | {np.median(t_old):.2f} | {np.median(t_new):.2f} | "
              f"{np.median(t_old / t_new):.3f} | {same} |", flush=True)


if __name__ == "__main__":
    main()
