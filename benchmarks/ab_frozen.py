"""A/B: inference per call against a frozen layer (``layer.freeze()``).

Three ways to run the same inference, taking turns in one process
(``bench.interleaved_times``; float32, 2 threads, as the bench): the kernel
function (``fastrnn.lstm_forward`` ...), which derives its operands from the
weights on every call (panels of W_hh^T and W_ih^T, the bias sums), the
layer's ``forward``, which does the same, and the frozen layer, which derives
them once. Prints medians and the median of the per-round ratios against the
frozen layer (above 1: the frozen layer is faster)::

    python benchmarks/ab_frozen.py --rounds 11
    python benchmarks/ab_frozen.py --cells rnn_tanh --shapes latency,1,1,128,128
"""
import argparse

import numpy as np

from fastrnn import _parallel, _peers, bench


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=11)
    p.add_argument("--cells", default="rnn_tanh,lstm,gru")
    p.add_argument("--shapes", default=",".join(_peers.SHAPES),
                   help="grid names or B,T,I,H (as fastrnn bench)")
    p.add_argument("--backend", default="cython")
    args = p.parse_args()
    _parallel.set_num_threads(2)
    handle = _parallel.limit_threads(2)     # noqa: F841 (BLAS at 2 threads while it lives)
    print(f"# rounds={args.rounds}, backend {args.backend}, inference; medians in ms; "
          "ratios: median of per-round ratios to the frozen layer's time")
    print("| cell | shape | kernel function ms | layer ms | frozen ms "
          "| function / frozen | layer / frozen |")
    print("|---|---|---|---|---|---|---|")
    for cell in args.cells.split(","):
        for shape in bench._parse_shapes(args.shapes):
            case = _peers.make_case(cell, shape, dtype=np.float32)
            layer = _peers.fastrnn_layer(case, args.backend)
            runs = [_peers.fastrnn_runner(case, "inference", args.backend, frozen=False),
                    lambda: layer(case.x),
                    _peers.fastrnn_runner(case, "inference", args.backend)]
            times = [np.array(t) for t in bench.interleaved_times(runs, args.rounds)]
            medians = " | ".join(f"{np.median(t) * 1e3:.3g}" for t in times)
            ratios = " | ".join(f"{np.median(t / times[2]):.3f}" for t in times[:2])
            print(f"| {cell} | {bench._shape_name(shape)} | {medians} | {ratios} |", flush=True)


if __name__ == "__main__":
    main()
