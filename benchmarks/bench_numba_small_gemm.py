"""The Numba kernels' product of a few rows by a weight in PyTorch's layout.

C (M, N) := A (M, K) @ W^T for W (N, K) row-major, as a short call's
projections and recurrent products take it, on one core, timed two ways,
median of ``--repeats`` runs of about 0.1 s each, the two taking turns:

- ``blas``: the path before ``kernels.few_rows_nt``: SciPy's OpenBLAS, GEMV
  row by row up to ``kernels.GEMV_MAX_ROWS`` rows, SGEMM/DGEMM with the
  transpose flag beyond (which repacks all of W on every call);
- ``few rows``: ``kernels.few_rows_nt``, blocks of 4 rows x 4 columns of W,
  each of its sums kept in LANES partial sums.

``kernels.NT_MIN_ROWS`` and ``nt_max_rows`` come from this table.
The rows bound ``kernels.NT_MIN_ROWS``/``NT_MAX_ROWS`` comes from this table.

Run: ``python benchmarks/bench_numba_small_gemm.py [--repeats 11] [--dtype float64]``
"""
import argparse
import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402
from numba import njit  # noqa: E402

from fastrnn._numba import kernels  # noqa: E402
from bench_numba_packed import medians  # noqa: E402

#: (M, N, K): a stream's step (M = B) or a short call's projection (M = T * B)
SHAPES = [(1, 512, 128), (2, 512, 128), (3, 400, 100), (4, 400, 100), (4, 1024, 256),
          (6, 1024, 256), (8, 1024, 256), (16, 1024, 256), (16, 1200, 300),
          (16, 2048, 512), (24, 1024, 256), (32, 1024, 256)]


@njit(nogil=True)
def blas_nt(a, w, c, M, N, K):
    """c := a @ w^T through BLAS, as ``kernels.gemm`` did before ``few_rows_nt``."""
    one, zero = kernels.one_of(c), kernels.zero_of(c)
    if M <= kernels.GEMV_MAX_ROWS:
        for i in range(M):
            kernels.gemv(False, N, K, one, kernels.ptr(w, 0), K, kernels.ptr(a, i * K), 1,
                         zero, kernels.ptr(c, i * N))
    else:
        kernels._xgemm(kernels._T, kernels._N, N, M, K, one, kernels.ptr(w, 0), K,
                       kernels.ptr(a, 0), K, zero, kernels.ptr(c, 0), N)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = ap.parse_args()
    dtype = np.dtype(args.dtype)
    rng = np.random.default_rng(0)
    print(f"# A (M, K) @ W^T, W (N, K), {dtype}, one core; GFLOP/s, median of "
          f"{args.repeats} runs, the two taking turns")
    print("| M, N, K | blas | few rows | few rows / blas |")
    print("|---|---|---|---|")
    for M, N, K in SHAPES:
        a = rng.standard_normal(M * K).astype(dtype)
        w = rng.standard_normal(N * K).astype(dtype)
        c = np.zeros(M * N, dtype)
        expect = a.reshape(M, K).astype(np.float64) @ w.reshape(N, K).T.astype(np.float64)
        runs = {"blas": lambda: blas_nt(a, w, c, M, N, K),
                "few rows": lambda: kernels.apply_few_rows_nt(a, w, dtype.type(0), c, M, N, K)}
        med = medians(runs, 2.0 * M * N * K, args.repeats, c, expect)
        print(f"| {M}, {N}, {K} | {med['blas']:.1f} | {med['few rows']:.1f} "
              f"| {med['few rows'] / med['blas']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
