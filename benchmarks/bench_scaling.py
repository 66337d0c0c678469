"""How well the two halves of a split batch use two cores.

For each cell and shape, in one process, taking turns as ``fastrnn bench``
does (balanced orders), float32, the Cython backend:

- ``serial``: the whole batch in one kernel call on one thread;
- ``half``:   one half of the batch alone, one kernel call on one thread;
- ``split``:  the whole batch as fastrnn runs it, both halves at once on two
              threads (``fastrnn.set_num_threads(2)``).

Perfect scaling would make ``split`` as fast as ``half``. ``serial / split`` is
the speed-up the second core brings; ``split / half`` is what running the
halves side by side costs each of them (shared caches and memory, the thread
hand-off, splitting x and joining y). BLAS is held at one thread throughout,
as inside every fastrnn call.

Run: ``python benchmarks/bench_scaling.py [--cells lstm gru] [--shapes small medium large]
[--modes inference training] [--rounds 21]``
"""
import argparse
import importlib

import numpy as np

import fastrnn
from fastrnn import _backends, _parallel, _peers, bench


def _call(backend, cell, x, states, params, mode):
    """One forward (and, in training, the backward) through a backend object."""
    y, state_n, data = backend.forward(cell, x, states, params, None, False,
                                       mode == "training")
    if mode == "training":
        backend.backward(cell, data, np.ones_like(y), tuple(np.ones_like(s) for s in state_n))


def measure(cell, shape, mode, rounds):
    """Median seconds of ``serial``, ``half`` and ``split`` for one case."""
    case = _peers.make_case(cell, shape, dtype=np.float32)
    x, params = case.x, list(case.params)
    B, H = x.shape[1], params[1].shape[1]
    states = tuple(np.zeros((B, H), np.float32) for _ in range(case.n_states))
    half = B // 2
    x_half = np.ascontiguousarray(x[:, :half])
    states_half = tuple(s[:half].copy() for s in states)
    split = _backends.get("cython")        # the batch-splitting wrapper fastrnn uses
    plain = split.module                   # the kernels without the split
    runs = {
        "serial": lambda: _call(plain, cell, x, states, params, mode),
        "half": lambda: _call(plain, cell, x_half, states_half, params, mode),
        "split": lambda: _call(split, cell, x, states, params, mode),
    }
    with _parallel.blas_hold():
        times = bench.interleaved_times(list(runs.values()), rounds)
    return {name: float(np.median(t)) for name, t in zip(runs, times)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", nargs="+", default=["rnn_tanh", "lstm", "gru"])
    ap.add_argument("--shapes", nargs="+", default=["small", "medium", "large"])
    ap.add_argument("--modes", nargs="+", default=["inference", "training"])
    ap.add_argument("--rounds", type=int, default=21)
    args = ap.parse_args()
    if "cython" not in fastrnn.available_backends():
        raise SystemExit("the Cython backend is not built")
    # load SciPy's BLAS now, so that the hold at one thread reaches it
    importlib.import_module("scipy.linalg")
    fastrnn.set_num_threads(2)
    print(f"# median of {args.rounds} rounds in balanced orders, float32, cython, ms")
    print("| cell | shape | mode | serial | half | split | serial / split | split / half |")
    print("|---|---|---|---|---|---|---|---|")
    for cell in args.cells:
        for shape in args.shapes:
            B, T, I, H = _peers.SHAPES[shape]
            G = {"lstm": 4, "gru": 3}.get(cell, 1)
            if len(_parallel.parts(B, T, I, H, G)) == 1:
                continue                   # not split: nothing to compare
            for mode in args.modes:
                m = measure(cell, shape, mode, args.rounds)
                print(f"| {cell} | {shape} | {mode} | {1e3 * m['serial']:.2f} | "
                      f"{1e3 * m['half']:.2f} | {1e3 * m['split']:.2f} | "
                      f"{m['serial'] / m['split']:.2f} | {m['split'] / m['half']:.2f} |",
                      flush=True)


if __name__ == "__main__":
    main()
