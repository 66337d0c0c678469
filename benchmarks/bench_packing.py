"""How fast W_hh is packed into the panels of the recurrent product.

Every Cython call of four or more steps with a float32 batch of at most
``PACKED_MAX_B`` rows packs W_hh before its kernel: W_hh^T for the forward,
W_hh itself for the backward (``fastrnn._cython_backend.prepare_forward`` and
``prepare_backward``). That is on the critical path, once per call. For each
cell and hidden size of the bench's grid this prints the median time of
``packing.pack`` and the bytes of W_hh it reads per second.

Run: ``python benchmarks/bench_packing.py [--repeats 41]``
"""
import argparse
import timeit

import numpy as np

from fastrnn._ext import packing

GATES = {"rnn_tanh": 1, "lstm": 4, "gru": 3}
HIDDEN = (64, 128, 256, 512)          # the grid's hidden sizes (long, latency, medium, small/large)


def median_us(fn, repeats):
    number = 1
    while timeit.timeit(fn, number=number) < 2e-3:     # a few ms per measurement
        number *= 2
    return float(np.median(timeit.repeat(fn, number=number, repeat=repeats))) / number * 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=41)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"# packing.pack, float32, median of {args.repeats}; GB/s of W_hh read")
    print("| cell | H | W_hh | forward (W_hh^T) µs | GB/s | backward (W_hh) µs | GB/s |")
    print("|---|---|---|---|---|---|---|")
    for cell, G in GATES.items():
        for H in HIDDEN:
            w = rng.standard_normal((G * H, H)).astype(np.float32)
            row = [cell, str(H), f"({G * H}, {H})"]
            for trans in (True, False):
                K, N = (H, G * H) if trans else (G * H, H)
                out = np.empty(packing.packed_size(K, N), np.float32)
                us = median_us(lambda: packing.pack(w, trans, out), args.repeats)
                row += [f"{us:.1f}", f"{w.nbytes / us / 1e3:.1f}"]
            print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
