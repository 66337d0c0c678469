"""Do float32 denormals (subnormals) slow the kernels down?

    python benchmarks/bench_denormals.py                       # every cell, both native backends
    python benchmarks/bench_denormals.py --cells lstm --backends cython --rounds 30

x86 CPUs may take a slow microcode path for arithmetic on subnormal numbers
(|v| < 1.18e-38 in float32) unless FTZ/DAZ are set in MXCSR; fastrnn does not
set them. Each scenario runs the same shape and code path as the normal-valued
baseline and differs only in the values, chosen so that subnormals are read
or produced at every step:

- ``normal``      x ~ N(0, 1), weights U(+-1/sqrt(H)), h0, c0 ~ 0.5 N(0, 1)
- ``x``           x scaled into the subnormal range: every input product is subnormal
- ``state``       h0 and c0 subnormal, weights scaled by 1e-3 and bias 0, so the
                  state stays subnormal (or flushes to zero) step after step
- ``weights``     W_ih and W_hh subnormal: every product of both GEMMs is subnormal
- ``saturated``   input bias -87.8: the sigmoids return 1 / (1 + e^88), about 1e-38,
                  mostly subnormal, which multiply the cell state (LSTM) or h (GRU)
                  every step; tanh(-87.8) is exactly -1

Reported: the median time of one training step (forward that keeps its
workspace plus the backward, divided by T) and of one inference step, and
the ratio to ``normal``. The scenarios are interleaved round by round so
that load on the machine drifts over all of them alike. BLAS threads: 1
unless --threads. The measurement is recorded in docs/reliability.md.
"""
import argparse
import os
import platform
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import fastrnn  # noqa: E402

N_GATES = {"rnn_tanh": 1, "lstm": 4, "gru": 3}
SUBNORMAL = np.float32(1e-39)
SCENARIOS = ("normal", "x", "state", "weights", "saturated")


def case(cell, scenario, T, B, I, H, seed=0):
    """Arguments ``(x, states, params)`` of one scenario, float32."""
    rng = np.random.default_rng(seed)
    G = N_GATES[cell]
    k = 1 / np.sqrt(H)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    w_ih = rng.uniform(-k, k, (G * H, I)).astype(np.float32)
    w_hh = rng.uniform(-k, k, (G * H, H)).astype(np.float32)
    b_ih = rng.uniform(-k, k, G * H).astype(np.float32)
    b_hh = rng.uniform(-k, k, G * H).astype(np.float32)
    states = [(0.5 * rng.standard_normal((B, H))).astype(np.float32)
              for _ in range(2 if cell == "lstm" else 1)]
    if scenario == "x":
        x *= SUBNORMAL
    elif scenario == "state":
        states = [s * SUBNORMAL for s in states]
        w_ih *= np.float32(1e-3)
        w_hh *= np.float32(1e-3)
        b_ih[:] = 0
        b_hh[:] = 0
        x *= SUBNORMAL
    elif scenario == "weights":
        w_ih *= SUBNORMAL
        w_hh *= SUBNORMAL
    elif scenario == "saturated":
        b_ih[:] = -87.8
    return x, states, (w_ih, w_hh, b_ih, b_hh)


#: workspace entries the forward computes (the rest are the caller's x and weights)
COMPUTED = ("gates", "hs", "cs", "ghn", "m")


def computed_arrays(obj):
    """The COMPUTED arrays inside a workspace's data, however nested in dicts and lists."""
    found, todo = [], [obj]
    while todo:
        o = todo.pop()
        if isinstance(o, dict):
            found += [v for k, v in o.items() if k in COMPUTED and isinstance(v, np.ndarray)]
            todo += [v for k, v in o.items() if k not in COMPUTED]
        elif isinstance(o, (list, tuple)):
            todo.extend(o)
    return found


def count_subnormal(arrays):
    tiny = np.finfo(np.float32).tiny
    n = sum(int(np.count_nonzero((a != 0) & (np.abs(a) < tiny))) for a in arrays)
    return n, sum(a.size for a in arrays)


def runner(cell, backend, args, training):
    x, states, params = args
    if cell == "lstm":
        fwd, bwd = fastrnn.lstm_forward, fastrnn.lstm_backward
    elif cell == "gru":
        fwd, bwd = fastrnn.gru_forward, fastrnn.gru_backward
    else:
        fwd, bwd = fastrnn.rnn_forward, fastrnn.rnn_backward
    dy = np.ones((x.shape[0], x.shape[1], params[1].shape[1]), np.float32)

    def run():
        out = fwd(x, *states, *params, training=training, backend=backend)
        if training:
            bwd(out.workspace, dy)
        return out
    return run


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", default="rnn_tanh,lstm,gru")
    p.add_argument("--backends", default="cython,numba")
    p.add_argument("--shape", type=int, nargs=4, default=(50, 16, 64, 128),
                   metavar=("T", "B", "I", "H"))
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=1, help="BLAS threads (default 1)")
    args = p.parse_args()
    T, B, I, H = args.shape
    from threadpoolctl import threadpool_info, threadpool_limits
    blas = ", ".join(f"{i['internal_api']} {i['version']}" for i in threadpool_info())
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; numpy "
          f"{np.__version__}; {blas}; BLAS threads {args.threads}; float32 (T, B, I, H) = "
          f"({T}, {B}, {I}, {H}); median of {args.rounds} rounds")
    print("subnormal values: in y and the training workspace (states, gates) of one call")
    print(f"{'cell':9} {'backend':8} {'scenario':10} {'subnormal values':>18} "
          f"{'train us/step':>14} {'ratio':>6} {'infer us/step':>14} {'ratio':>6}")
    worst = 0.0
    with threadpool_limits(args.threads):
        for cell in args.cells.split(","):
            for backend in args.backends.split(","):
                cases = {s: case(cell, s, T, B, I, H) for s in SCENARIOS}
                runs = {(s, m): runner(cell, backend, cases[s], m == "train")
                        for s in SCENARIOS for m in ("train", "infer")}
                for run in runs.values():            # warm-up: JIT, caches, page faults
                    run()
                times = {key: [] for key in runs}
                for _ in range(args.rounds):
                    for key, run in runs.items():
                        t0 = time.perf_counter()
                        run()
                        times[key].append(time.perf_counter() - t0)
                med = {key: float(np.median(v)) / T * 1e6 for key, v in times.items()}
                for s in SCENARIOS:
                    out = runs[(s, "train")]()
                    n, total = count_subnormal([out.y] + computed_arrays(out.workspace.data))
                    ratio = {m: med[(s, m)] / med[("normal", m)] for m in ("train", "infer")}
                    if s != "normal":
                        worst = max(worst, *ratio.values())
                    print(f"{cell:9} {backend:8} {s:10} {n:>9}/{total:<8} "
                          f"{med[(s, 'train')]:14.1f} {ratio['train']:6.2f} "
                          f"{med[(s, 'infer')]:14.1f} {ratio['infer']:6.2f}")
    print(f"worst slowdown against normal values: {worst:.2f}x")


if __name__ == "__main__":
    main()
