"""The Numba kernels' per-step product, through packed panels or through BLAS.

The per-step product h (B, K) @ W_hh^T of the grid's half batches, float32,
on one core, timed two ways through ``kernels.apply_recurrent_product`` (the
kernels' own ``recurrent_product``), median of ``--repeats`` runs of about
0.1 s each, the two taking turns:

- ``gemm``: the path of float64 and of batches over the backend's
  PACKED_MAX_B, on the K-major copy of W_hh the backend makes (GEMV row by
  row up to 8 rows, OpenBLAS's sgemm beyond);
- ``packed``: W_hh^T packed once by ``kernels.pack`` into 16-wide panels,
  streamed once per step (``kernels.packed_product``).

The figures in benchmarks/RESULTS.md ("numba now" / "numba packed") came from
the first version of this script (commit 6abb2d1), which timed its own
prototype of the packed product before it moved into the kernels.

For scale: the Cython kernels' C version of the same panels ran at 62-87
GFLOP/s at these sizes in a C harness on this machine.

Run: ``python benchmarks/bench_numba_packed.py [--repeats 11]``
"""
import argparse
import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import time  # noqa: E402

import numpy as np  # noqa: E402

from fastrnn._numba import kernels  # noqa: E402

#: (cell, shape, B of one half, K = H, N = G*H): the forward's W_hh^T
SHAPES = [("lstm", "long", 4, 64, 256), ("lstm", "small", 8, 512, 2048),
          ("gru", "small", 8, 512, 1536), ("lstm", "medium", 16, 256, 1024),
          ("lstm", "large", 32, 512, 2048)]


def timed(fn, flop, repeats):
    """GFLOP/s of ``fn``: median of ``repeats`` runs of about 0.1 s."""
    calls = 1
    while True:
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        if time.perf_counter() - t > 0.02:
            break
        calls *= 2
    calls *= 5
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        rates.append(flop * calls / (time.perf_counter() - t) / 1e9)
    return rates


def medians(runs, flop, repeats, out, expect):
    """``{name: median GFLOP/s}`` of the functions ``runs``, each doing ``flop``
    floating-point operations, over ``repeats`` turns (so drift falls on all),
    after checking that each writes ``expect`` to ``out`` (from NaN: beta 0
    overwrites)."""
    for fn in runs.values():
        out[:] = np.nan
        fn()
        assert np.allclose(out.reshape(expect.shape), expect, rtol=1e-4, atol=1e-3)
    rates = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            rates[name] += timed(fn, flop, 1)
    return {name: float(np.median(r)) for name, r in rates.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=11)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print("# h (B, K) @ W (K, N), float32, one core; GFLOP/s, median of "
          f"{args.repeats} runs, the two taking turns")
    print("| cell | shape | B, K, N | gemm | packed | packed / gemm |")
    print("|---|---|---|---|---|---|")
    zero = np.float32(0)
    for cell, shape, B, K, N in SHAPES:
        h = rng.standard_normal(B * K).astype(np.float32)
        w = rng.standard_normal(N * K).astype(np.float32)      # W_hh (N, K), PyTorch's layout
        out = np.zeros(B * N, np.float32)
        packed = np.empty(kernels.packed_size(K, N), np.float32)
        kernels.pack(w, True, K, N, packed)
        no_panels = np.empty(0, np.float32)
        w_t = np.ascontiguousarray(w.reshape(N, K).T).ravel()   # K-major, as the backend copies it
        expect = h.reshape(B, K).astype(np.float64) @ w.reshape(N, K).T
        runs = {
            "gemm": lambda: kernels.apply_recurrent_product(h, w_t, False, no_panels, zero, out,
                                                            B, K, N, 0),
            "packed": lambda: kernels.apply_recurrent_product(h, w, True, packed, zero, out,
                                                              B, K, N, 0),
        }
        med = medians(runs, 2.0 * B * K * N, args.repeats, out, expect)
        print(f"| {cell} | {shape} | {B}, {K}, {N} | {med['gemm']:.1f} "
              f"| {med['packed']:.1f} | {med['packed'] / med['gemm']:.2f} |", flush=True)

if __name__ == "__main__":
    main()
