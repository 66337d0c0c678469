"""A/B: a bidirectional layer's two directions side by side on the cores
(``_parallel.run_independent``) against one after the other, each with all
of fastrnn's threads; the two alternating in one process, in
``bench.interleaved_times``' balanced orders, float32, 2 threads.

    python benchmarks/ab_directions.py [rounds [cells [B,T,I,H;... [modes [backend]]]]]

It swaps ``_parallel.run_independent`` itself, so the size threshold
(``INDEPENDENT_MIN_MACS``) does not apply to the side-by-side runs.

Prints medians and the median of the per-round ratios sequential / side by
side (above 1: side by side is faster).
"""
import sys

import numpy as np

import fastrnn
from fastrnn import _parallel, bench

rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 9
cells = sys.argv[2].split(",") if len(sys.argv) > 2 else ["rnn_tanh", "lstm", "gru"]
shapes = [tuple(int(v) for v in s.split(",")) for s in
          (sys.argv[3] if len(sys.argv) > 3 else
           "1,100,128,128;4,100,256,256;16,50,256,256;64,100,512,512;8,1000,64,64").split(";")]
modes = sys.argv[4].split(",") if len(sys.argv) > 4 else ["inference", "training"]
backend = sys.argv[5] if len(sys.argv) > 5 else "cython"
LAYERS = {"rnn_tanh": fastrnn.RNN, "lstm": fastrnn.LSTM, "gru": fastrnn.GRU}

_parallel.set_num_threads(2)
handle = _parallel.limit_threads(2)     # BLAS at 2 threads while the handle lives
side_by_side = _parallel.run_independent


def one_after_the_other(fn, n, macs):
    return [fn(k) for k in range(n)]


def always_side_by_side(fn, n, macs):
    return side_by_side(fn, n, 1 << 62)


print(f"# rounds={rounds}, backend {backend}; medians in ms")
print("| cell | B, T, I, H | mode | one after the other | side by side | ratio |")
print("|---|---|---|---|---|---|")
for cell in cells:
    for B, T, I, H in shapes:
        layer = LAYERS[cell](I, H, bidirectional=True, dtype=np.float32, backend=backend, rng=0)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((T, B, I)).astype(np.float32)
        dy = rng.standard_normal((T, B, 2 * H)).astype(np.float32)
        for mode in modes:
            def call():
                if mode == "inference":
                    return layer(x)
                y, h, ctx = layer(x, training=True)
                return layer.backward(ctx, dy)

            def with_runner(runner):
                def run():
                    _parallel.run_independent = runner
                    try:
                        call()
                    finally:
                        _parallel.run_independent = side_by_side
                return run
            t = bench.interleaved_times([with_runner(one_after_the_other),
                                         with_runner(always_side_by_side)], rounds)
            ratio = np.median(np.array(t[0]) / np.array(t[1]))
            print(f"| {cell} | {B}, {T}, {I}, {H} | {mode} | {np.median(t[0]) * 1e3:.3g} | "
                  f"{np.median(t[1]) * 1e3:.3g} | {ratio:.2f}x |", flush=True)
