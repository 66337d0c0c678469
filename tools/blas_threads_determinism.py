"""Are results bit-identical for 1 and 2 BLAS threads? Measures BLAS itself and fastrnn.

    python tools/blas_threads_determinism.py

1. SciPy's GEMM (the BLAS the kernels call through scipy.linalg.cython_blas)
   for the shapes of the kernels' big GEMMs, C = A^T B as in dW = dG^T H
   over T*B rows, with 1 and then 2 threads (threadpoolctl).
2. fastrnn's forward + backward (training) on both native backends for
   every cell and dtype over a grid of shapes, 1 thread against 2.

Prints every case whose bits differ and the largest difference relative to
the array's max-abs value. Results are recorded in docs/reliability.md.
"""
import itertools
import os
import sys

import numpy as np
from scipy.linalg import blas
from threadpoolctl import threadpool_info, threadpool_limits

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fastrnn  # noqa: E402


def blas_gemm():
    rng = np.random.default_rng(0)
    shapes = [(m, n, k) for m in (32, 128, 512) for n in (16, 32, 128) for k in (100, 240, 1600)]
    rows = []
    for (m, n, k), (name, f, dtype) in itertools.product(
            shapes, [("sgemm", blas.sgemm, np.float32), ("dgemm", blas.dgemm, np.float64)]):
        a = rng.standard_normal((k, m)).astype(dtype)
        b = rng.standard_normal((k, n)).astype(dtype)
        with threadpool_limits(1):
            one = f(1.0, a, b, trans_a=True)
        with threadpool_limits(2):
            two = f(1.0, a, b, trans_a=True)
        rows.append((name, (m, n, k), not np.array_equal(one, two),
                     float(np.max(np.abs(one - two)) / np.max(np.abs(one)))))
    return rows


def fastrnn_calls():
    shapes = [(5, 3, 4, 6), (30, 8, 16, 32), (50, 16, 64, 128), (20, 64, 128, 128),
              (10, 128, 256, 256), (8, 300, 64, 96)]
    gates = {"rnn_tanh": 1, "lstm": 4, "gru": 3}
    fns = {"rnn_tanh": (fastrnn.rnn_forward, fastrnn.rnn_backward),
           "lstm": (fastrnn.lstm_forward, fastrnn.lstm_backward),
           "gru": (fastrnn.gru_forward, fastrnn.gru_backward)}
    rows = []
    for backend, cell, dtype, (T, B, I, H) in itertools.product(
            [b for b in ("cython", "numba") if b in fastrnn.available_backends()],
            gates, (np.float32, np.float64), shapes):
        rng = np.random.default_rng(1)
        k = 1 / np.sqrt(H)
        G = gates[cell]
        x = rng.standard_normal((T, B, I)).astype(dtype)
        params = [rng.uniform(-k, k, s).astype(dtype) for s in [(G * H, I), (G * H, H), (G * H,), (G * H,)]]
        states = [None] * (2 if cell == "lstm" else 1)
        dy = rng.standard_normal((T, B, H)).astype(dtype)
        forward, backward = fns[cell]
        results = []
        for n in (1, 2):
            with threadpool_limits(n):
                out = forward(x, *states, *params, training=True, backend=backend)
                g = backward(out.workspace, dy)
                results.append({**{k: v for k, v in out._asdict().items() if k != "workspace"},
                                **{k: v for k, v in g._asdict().items() if v is not None}})
        for name in results[0]:
            one, two = results[0][name], results[1][name]
            if not np.array_equal(one, two):
                rows.append((backend, cell, np.dtype(dtype).name, (T, B, I, H), name,
                             float(np.max(np.abs(one - two)) / np.max(np.abs(one)))))
    return rows


def main():
    libs = "; ".join(f"{i['prefix']} {i['version']} ({i['architecture']})" for i in threadpool_info())
    print(f"BLAS: {libs}")
    rows = blas_gemm()
    differ = [r for r in rows if r[2]]
    print(f"\nSciPy GEMM C = A^T B, (m, n, k): {len(differ)} of {len(rows)} differ between 1 and 2 threads")
    for name, shape, _, rel in differ:
        print(f"  {name} {shape}: max |diff| / max |C| = {rel:.2e}")
    rows = fastrnn_calls()
    print(f"\nfastrnn forward + backward, 1 vs 2 BLAS threads: {len(rows)} arrays differ")
    for backend, cell, dtype, shape, name, rel in rows:
        print(f"  {backend} {cell} {dtype} (T, B, I, H) = {shape}: {name} {rel:.2e}")


if __name__ == "__main__":
    main()
