"""Could the Numba backend get a packed recurrent product like the Cython one?

The prototype of what is now ``packed_product`` in ``fastrnn/_numba/kernels.py``
(kept as the record of these measurements): the per-step product h (B, K) @ W (K, N) of
the grid's half batches, float32, on one core, timed two ways, median of
``--repeats`` runs of about 0.1 s each, the two taking turns:

- ``numba now``: what the Numba kernels do today, ``gemm`` of
  ``fastrnn/_numba/kernels.py`` (GEMV row by row up to 8 rows, OpenBLAS's
  sgemm beyond);
- ``numba packed``: the same 16-wide panels in Numba. The 4 x 16 block of sums
  lives in a stack ``alloca`` (the ``stack_block`` intrinsic below), which LLVM
  keeps in registers; a NumPy array there stays in memory and ran at about a
  third of the speed.

For scale: the Cython kernels' C version of the same panels ran at 62-87
GFLOP/s at these sizes in a C harness on this machine (it is not timed here:
``packing.product`` repacks W on every call).

Run: ``python benchmarks/bench_numba_packed.py [--repeats 11]``
"""
import argparse
import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import time  # noqa: E402

import numpy as np  # noqa: E402
from numba import njit, types  # noqa: E402
from numba.core import cgutils  # noqa: E402
from numba.extending import intrinsic  # noqa: E402

from fastrnn._numba.kernels import gemm, ptr  # noqa: E402

PANEL = 16
#: (cell, shape, B of one half, K = H, N = G*H): the forward's W_hh^T
SHAPES = [("lstm", "long", 4, 64, 256), ("lstm", "small", 8, 512, 2048),
          ("gru", "small", 8, 512, 1536), ("lstm", "medium", 16, 256, 1024),
          ("lstm", "large", 32, 512, 2048)]


@intrinsic
def stack_block(typingctx, like):
    """4 x PANEL values of ``like``'s dtype on the stack (one alloca in the entry block)."""
    sig = types.CPointer(like.dtype)(like)

    def codegen(context, builder, sig, args):
        return cgutils.alloca_once(builder, context.get_value_type(like.dtype), size=4 * PANEL)
    return sig, codegen


@njit(nogil=True, fastmath={"contract"})
def pack(w, K, N, out):
    """out[p][k][j] = W(k, p*PANEL + j) for w (K*N,), row-major (K, N); zero past N."""
    for p in range((N + PANEL - 1) // PANEL):
        for k in range(K):
            for j in range(PANEL):
                n = p * PANEL + j
                out[(p * K + k) * PANEL + j] = w[k * N + n] if n < N else 0.0


@njit(nogil=True, fastmath={"contract"})
def packed_product(B, N, K, a, packed, c):
    """c (B, N) := a (B, K) @ W for W packed by ``pack``."""
    acc = stack_block(a)
    for p in range((N + PANEL - 1) // PANEL):
        base = p * K * PANEL
        width = min(PANEL, N - p * PANEL)
        b = 0
        while b + 4 <= B:
            for j in range(4 * PANEL):
                acc[j] = 0
            for k in range(K):
                a0, a1 = a[b * K + k], a[(b + 1) * K + k]
                a2, a3 = a[(b + 2) * K + k], a[(b + 3) * K + k]
                for j in range(PANEL):
                    w = packed[base + k * PANEL + j]
                    acc[j] += a0 * w
                    acc[PANEL + j] += a1 * w
                    acc[2 * PANEL + j] += a2 * w
                    acc[3 * PANEL + j] += a3 * w
            for r in range(4):
                for j in range(width):
                    c[(b + r) * N + p * PANEL + j] = acc[r * PANEL + j]
            b += 4
        while b < B:
            for j in range(width):
                s = a[0] * 0
                for k in range(K):
                    s += a[b * K + k] * packed[base + k * PANEL + j]
                c[b * N + p * PANEL + j] = s
            b += 1


@njit(nogil=True, fastmath={"contract"})
def numba_now(B, N, K, a, w, c):
    """The Numba kernels' product today: c := a @ w through their ``gemm``."""
    one, zero = a[0] * 0 + 1, a[0] * 0
    gemm(False, False, B, N, K, one, ptr(a, 0), K, ptr(w, 0), N, zero, ptr(c, 0), N)


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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=11)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print("# h (B, K) @ W (K, N), float32, one core; GFLOP/s, median of "
          f"{args.repeats} runs, the two taking turns")
    print("| cell | shape | B, K, N | numba now | numba packed | packed / now |")
    print("|---|---|---|---|---|---|")
    for cell, shape, B, K, N in SHAPES:
        a = rng.standard_normal(B * K).astype(np.float32)
        w = rng.standard_normal(K * N).astype(np.float32)
        c = np.zeros(B * N, np.float32)
        packed = np.zeros((N + PANEL - 1) // PANEL * K * PANEL, np.float32)
        pack(w, K, N, packed)
        packed_product(B, N, K, a, packed, c)
        expect = a.reshape(B, K).astype(np.float64) @ w.reshape(K, N)
        assert np.allclose(c.reshape(B, N), expect, rtol=1e-4, atol=1e-3)
        runs = {
            "numba now": lambda: numba_now(B, N, K, a, w, c),
            "numba packed": lambda: packed_product(B, N, K, a, packed, c),
        }
        for fn in runs.values():
            fn()
        rates = {name: [] for name in runs}
        for _ in range(args.repeats):        # turns, so drift falls on both
            for name, fn in runs.items():
                rates[name] += timed(fn, 2.0 * B * K * N, 1)
        med = {name: float(np.median(r)) for name, r in rates.items()}
        print(f"| {cell} | {shape} | {B}, {K}, {N} | {med['numba now']:.1f} "
              f"| {med['numba packed']:.1f} | {med['numba packed'] / med['numba now']:.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
