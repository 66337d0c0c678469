"""Streaming overhead: one LSTM time step at B=1 with carried state.

Compares, in microseconds per step (median of repeats, 1 thread everywhere):

- ``fastrnn.LSTM.step``            the layer's streaming call
- ``fastrnn.LSTM(x[t:t+1], hx)``   the ordinary forward with T=1
- ``fastrnn.lstm_forward``         the kernel function alone (no layer)
- ``torch.nn.LSTM`` with T=1       under ``torch.no_grad()``, if torch is installed

Run: ``python benchmarks/bench_streaming.py [--hidden 128] [--input 128] [--backend auto]``
"""
import argparse
import contextlib
import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import time  # noqa: E402

import numpy as np  # noqa: E402

import fastrnn  # noqa: E402


def per_step_us(steps, n_steps, repeats):
    """``{name: (median, min)}`` over ``repeats`` rounds of the mean time of
    ``n_steps`` calls of ``step(t)``, the steps taking turns in every round
    (A B C A B C ...), so that a shared machine's drift falls on all alike."""
    for step in steps.values():
        for t in range(min(n_steps, 200)):
            step(t)                                    # warm-up (and JIT compilation)
    times = {name: [] for name in steps}
    for r in range(repeats):
        names = list(steps)
        for name in names[r % len(names):] + names[:r % len(names)]:
            step = steps[name]
            t0 = time.perf_counter()
            for t in range(n_steps):
                step(t)
            times[name].append((time.perf_counter() - t0) / n_steps * 1e6)
    return {name: (float(np.median(ts)), float(np.min(ts))) for name, ts in times.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--input", type=int, default=128)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--backend", default="auto")
    args = ap.parse_args()
    H, I, N = args.hidden, args.input, args.steps
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((N, 1, I)).astype(np.float32)
    lstm = fastrnn.LSTM(I, H, backend=args.backend, rng=0)
    steps = {}

    state = [None]

    def layer_step(t):
        _, state[0] = lstm.step(xs[t], state[0])
    steps["fastrnn LSTM.step"] = layer_step

    state = [None]

    def layer_call(t):
        _, state[0] = lstm(xs[t:t + 1], state[0])
    steps["fastrnn LSTM(x[t:t+1], hx)"] = layer_call

    p = lstm.state_dict()
    w = (p["weight_ih_l0"], p["weight_hh_l0"], p["bias_ih_l0"], p["bias_hh_l0"])
    hc = [np.zeros((1, H), np.float32), np.zeros((1, H), np.float32)]

    def kernel_step(t):
        out = fastrnn.lstm_forward(xs[t:t + 1], hc[0], hc[1], *w, backend=args.backend)
        hc[0], hc[1] = out.h_n, out.c_n
    steps["fastrnn.lstm_forward (kernel only)"] = kernel_step

    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        torch.set_num_threads(1)
        module = lstm.to_torch().eval()
        xt = torch.from_numpy(xs)
        tstate = [None]

        def torch_step(t):
            _, tstate[0] = module(xt[t:t + 1], tstate[0])
        steps[f"torch.nn.LSTM T=1 (torch {torch.__version__})"] = torch_step
    # every step runs under no_grad (fastrnn's do not notice), none pays for entering it
    with torch.no_grad() if torch is not None else contextlib.nullcontext():
        results = per_step_us(steps, N, args.repeats)

    backend = fastrnn.available_backends()[0] if args.backend == "auto" else args.backend
    print(f"LSTM streaming, B=1, input={I}, hidden={H}, float32, 1 thread, "
          f"fastrnn backend={backend}; us per step (median, min of {args.repeats}x{N} steps)")
    for name, (med, best) in results.items():
        print(f"  {name:42s} {med:8.1f}  {best:8.1f}")


if __name__ == "__main__":
    main()
