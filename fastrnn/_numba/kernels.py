"""Fused RNN, LSTM and GRU forward and BPTT kernels, compiled by Numba.

The same design, buffers and arguments as the Cython kernels (``src_ext/``),
line for line where possible; see ``src_ext/_rnn_common.pxd`` for the
time-aligned state slots and ``fastrnn._numba_backend`` for the buffers.

- Each ``*_forward``/``*_backward`` runs the whole time loop in compiled code
  and allocates nothing: the backend passes every buffer in, flattened to 1-D.
- Inside, arrays are addressed through raw pointers (:func:`ptr`), as in C:
  no negative-index wrap-around and no reference counting in the inner loops,
  so LLVM vectorises the fused element-wise passes.
- BLAS is SciPy's (``scipy.linalg.cython_blas``), called directly from the
  compiled code with beta = 1 where the Cython kernels use it. The function
  addresses are registered with LLVM under fixed symbol names at import, so
  the compiled code refers to them by name and can be cached on disk
  (a ctypes function pointer would be a constant address, which Numba
  refuses to cache).
- The per-step recurrent product of float32 batches up to the backend's
  PACKED_MAX_B rows runs through packed panels of W_hh (``packed_product``,
  as ``src_ext/_packed_gemm.h``), not BLAS, which repacks W_hh on every call.
- A product of 4 to 32 rows (float64: 16) by a weight in PyTorch's layout, a
  short call's projections and recurrent products, runs through
  ``few_rows_nt`` (as ``src_ext/_small_gemm.h``), not GEMV row by row or a
  GEMM that repacks the weight.
- float32 uses the branch-free exp/sigmoid/tanh of ``src_ext/_vmath.h`` (same
  constants, same error bounds); float64 uses exact exp and tanh.
- No Numba threads (``parallel=True``): the BLAS threads run the GEMMs, and
  the fused element-wise passes are about 4 % of the profile of the large
  LSTM shape (BLAS 55 %), so splitting them over threads could gain a few
  percent at most; at small batches a fork/join per step costs more than the
  pass, and a second thread pool next to OpenBLAS's busy-waiting workers
  would oversubscribe the cores.
- Floating-point flags: ``contract`` (FMA) and ``nsz`` only. No ``nnan`` or
  ``ninf``, so NaN propagates and the NaN-passing comparisons keep their
  meaning; no ``reassoc``/``afn``/``arcp``, which would undo the Cody-Waite
  reduction of the exponential or change its rounding.
"""
import math
import warnings

import llvmlite.binding as ll
import numpy as np
from llvmlite import ir
from numba import config, njit, types
from numba.core import cgutils
from numba.extending import (get_cython_function_address, intrinsic, overload,
                              register_jitable)

if config.DISABLE_JIT:
    # the kernels address memory through LLVM intrinsics, which have no Python form
    raise ImportError("the Numba backend needs Numba's compiler, and NUMBA_DISABLE_JIT is set")

FASTMATH = frozenset({"contract", "nsz"})


def _options():
    return dict(fastmath=set(FASTMATH), error_model="numpy", nogil=True)


_cache = True


def _jit(fn):
    """``njit`` with the kernels' options, cached on disk when a cache directory is usable."""
    global _cache
    if _cache:
        try:
            return njit(cache=True, **_options())(fn)
        except RuntimeError as exc:    # "cannot cache function ...: no locator available"
            _cache = False
            warnings.warn(f"fastrnn: Numba cannot cache its kernels ({exc}); every new "
                          "process compiles them again. Set NUMBA_CACHE_DIR to a writable "
                          "directory.", RuntimeWarning, stacklevel=2)
    return njit(**_options())(fn)


def _inline(fn):
    """A helper of the kernels: compiled into each kernel that calls it.

    (``register_jitable`` rather than ``njit``: a dispatcher of its own would
    also build and optimise a Python wrapper and a separate library per
    signature, about a third of the first-call compile time.)
    """
    return register_jitable(**_options())(fn)


def _inline_ir(fn):
    """A helper inlined into its caller's Numba IR before typing.

    For the bodies of the fused loops: LLVM would not inline a function this
    large (five activations), and a call in the loop keeps it from vectorising.
    """
    def stub(*args):
        raise NotImplementedError(f"{fn.__name__} runs in compiled code only")
    stub.__name__, stub.__doc__ = fn.__name__, fn.__doc__
    overload(stub, inline="always", strict=False, jit_options=_options())(lambda *args: fn)
    return stub


# ------------------------------------------------------------------- pointers

@intrinsic
def ptr(typingctx, base, offset):
    """``&base[offset]`` for a 1-D array or a pointer ``base`` (``base + offset`` in C)."""
    if not (isinstance(base, (types.Array, types.CPointer)) and isinstance(offset, types.Integer)):
        return None
    return types.CPointer(base.dtype)(base, offset), _gep


def _gep(context, builder, sig, args):
    data = args[0]
    if isinstance(sig.args[0], types.Array):
        data = cgutils.create_struct_proxy(sig.args[0])(context, builder, value=data).data
    return builder.gep(data, [args[1]])


@intrinsic
def row(typingctx, base, offset):
    """``ptr(base, offset)`` passed through an empty inline asm, for the gate rows.

    A fused pass reads and writes several gate blocks of one row (i, f, g, o at
    offsets 0, H, 2H, 3H). LLVM vectorises it behind a run-time overlap check
    of those blocks and, when the row pointer is affine in the batch index,
    hoists the check out of the batch loop, widening each block to its extent
    over all B rows, where the blocks of different rows interleave: the
    hoisted check always fails for B > 1 and the pass runs scalar. A row
    pointer LLVM cannot see through keeps the check per row, where it passes.
    """
    if not (isinstance(base, (types.Array, types.CPointer)) and isinstance(offset, types.Integer)):
        return None
    sig = types.CPointer(base.dtype)(base, offset)

    def codegen(context, builder, sig, args):
        p = _gep(context, builder, sig, args)
        return builder.asm(ir.FunctionType(p.type, [p.type]), "", "=r,0", [p],
                           side_effect=False)
    return sig, codegen


# ----------------------------------------------------------------------- BLAS
# SciPy's Fortran-ABI BLAS: every argument by pointer, column-major.

for _name in ("sgemm", "dgemm", "sgemv", "dgemv"):
    ll.add_symbol(f"fastrnn_{_name}",
                  get_cython_function_address("scipy.linalg.cython_blas", _name))

_I8 = ir.IntType(8)
_I32 = ir.IntType(32)


def _by_ref(builder, value, as_type=None):
    """A stack slot (in the entry block, so not one per call) holding ``value``."""
    if as_type is not None:
        value = builder.trunc(value, as_type)
    return cgutils.alloca_once_value(builder, value)


@intrinsic
def _xgemm(typingctx, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """Column-major ``C := alpha op(A) op(B) + beta C``; trans* are the characters' codes."""
    if not isinstance(c, types.CPointer) or c.dtype not in (types.float32, types.float64):
        return None
    dtype = c.dtype
    sig = types.void(transa, transb, m, n, k, dtype, types.CPointer(dtype), lda,
                     types.CPointer(dtype), ldb, dtype, c, ldc)
    symbol = "fastrnn_sgemm" if dtype == types.float32 else "fastrnn_dgemm"

    def codegen(context, builder, sig, args):
        ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc = args
        fp = context.get_value_type(dtype).as_pointer()
        ip, cp = _I32.as_pointer(), _I8.as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [cp, cp, ip, ip, ip, fp, fp, ip, fp, ip, fp, fp, ip])
        fn = cgutils.get_or_insert_function(builder.module, fnty, symbol)
        builder.call(fn, [_by_ref(builder, ta, _I8), _by_ref(builder, tb, _I8),
                          _by_ref(builder, m, _I32), _by_ref(builder, n, _I32),
                          _by_ref(builder, k, _I32), _by_ref(builder, alpha), a,
                          _by_ref(builder, lda, _I32), b, _by_ref(builder, ldb, _I32),
                          _by_ref(builder, beta), c, _by_ref(builder, ldc, _I32)])
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def _xgemv(typingctx, trans, m, n, alpha, a, lda, x, incx, beta, y):
    """Column-major ``y := alpha op(A) x + beta y`` (unit stride for y)."""
    if not isinstance(y, types.CPointer) or y.dtype not in (types.float32, types.float64):
        return None
    dtype = y.dtype
    sig = types.void(trans, m, n, dtype, types.CPointer(dtype), lda,
                     types.CPointer(dtype), incx, dtype, y)
    symbol = "fastrnn_sgemv" if dtype == types.float32 else "fastrnn_dgemv"

    def codegen(context, builder, sig, args):
        t, m, n, alpha, a, lda, x, incx, beta, y = args
        fp = context.get_value_type(dtype).as_pointer()
        ip, cp = _I32.as_pointer(), _I8.as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [cp, ip, ip, fp, fp, ip, fp, ip, fp, fp, ip])
        fn = cgutils.get_or_insert_function(builder.module, fnty, symbol)
        one = cgutils.alloca_once_value(builder, ir.Constant(_I32, 1))
        builder.call(fn, [_by_ref(builder, t, _I8), _by_ref(builder, m, _I32),
                          _by_ref(builder, n, _I32), _by_ref(builder, alpha), a,
                          _by_ref(builder, lda, _I32), x, _by_ref(builder, incx, _I32),
                          _by_ref(builder, beta), y, one])
        return context.get_dummy_value()
    return sig, codegen


_N, _T = ord("N"), ord("T")

#: products with at most this many rows (fewer than ``NT_MIN_ROWS`` by W^T,
#: which ``few_rows_nt`` takes) go row by row through GEMV, as the Cython
#: kernels' other few-row products do: OpenBLAS's GEMM repacks all of op(B)
#: on every call, which dominates a product of a few rows (GEMV_MAX_ROWS in
#: src_ext/_blas.pxd holds the measurements)
GEMV_MAX_ROWS = 8


@_inline
def gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """C := alpha * op(A) @ op(B) + beta * C, row-major; op(A) (m, k), op(B) (k, n).

    The row-major product is the column-major C^T = op(B)^T op(A)^T, so the
    operands go to BLAS swapped (as ``src_ext/_blas.pxd``).
    """
    if m <= 0 or n <= 0:
        return
    if k <= 0:
        # BLAS rejects lda = 0; with no inner dimension C is only scaled
        for i in range(m):
            for j in range(n):
                c[i * ldc + j] = beta * c[i * ldc + j] if beta != 0 else beta
        return
    if trans_b and not trans_a and alpha == 1 and (beta == 0 or beta == 1) \
            and NT_MIN_ROWS <= m <= nt_max_rows(c):
        few_rows_nt(m, n, k, a, lda, b, ldb, beta, c, ldc)
        return
    if m <= GEMV_MAX_ROWS:
        # a few rows: GEMM would repack all of op(B) for them, so stream op(B)
        # once per row instead (row i of op(A) is a column of A if trans_a)
        incx = lda if trans_a else 1
        for i in range(m):
            ai = ptr(a, i if trans_a else i * lda)
            if trans_b:
                gemv(False, n, k, alpha, b, ldb, ai, incx, beta, ptr(c, i * ldc))
            else:
                gemv(True, k, n, alpha, b, ldb, ai, incx, beta, ptr(c, i * ldc))
        return
    _xgemm(_T if trans_b else _N, _T if trans_a else _N, n, m, k, alpha, b, ldb, a, lda,
           beta, c, ldc)


@_inline
def gemv(trans, m, n, alpha, a, lda, x, incx, beta, y):
    """y := alpha * op(A) @ x + beta * y for row-major A (m, n); op(A) = A^T if trans."""
    # row-major A is column-major A^T: swap the trans flag and the dimensions
    _xgemv(_N if trans else _T, n, m, alpha, a, lda, x, incx, beta, y)


# -------------------------------------------------------------- packed panels
# The small-batch recurrent product of src_ext/_packed_gemm.h, float32 only in
# practice (the backend packs for float32 batches up to PACKED_MAX_B rows; the
# code is generic so that the float64 kernels, which never take this path,
# still compile). OpenBLAS's sgemm repacks all of W_hh on every call, once per
# step; here W_hh is packed once per call into column panels of PANEL values,
# each panel K x PANEL contiguous, so each step streams W_hh once, in order,
# and every W vector feeds BLOCK_ROWS rows of h. Against the GEMV/sgemm path
# (``gemm`` above) for the grid's half batches, 1.6-2.6x the GFLOP/s of the
# per-step product (``benchmarks/bench_numba_packed.py``).

#: columns per panel, FR_PANEL of src_ext/_packed_gemm.h: two AVX2 vectors
PANEL = 16
#: rows of A per block: BLOCK_ROWS x PANEL sums, as many vector registers as
#: AVX2 has to spare next to the two W vectors
BLOCK_ROWS = 4


def packed_size(K, N):
    """Values in the packed copy of a (K, N) matrix: whole panels, zero-padded."""
    return (N + PANEL - 1) // PANEL * K * PANEL


def _stack_of(size):
    """An intrinsic giving room for ``size`` values of its argument's dtype on
    the stack: ``_stack_block``, ``_stack_lanes``."""
    @intrinsic
    def stack(typingctx, like):
        if not isinstance(like, (types.Array, types.CPointer)):
            return None
        sig = types.CPointer(like.dtype)(like)

        def codegen(context, builder, sig, args):
            return cgutils.alloca_once(builder, context.get_value_type(like.dtype), size=size)
        return sig, codegen
    return stack


#: Room for BLOCK_ROWS x PANEL values of an array's dtype on the stack. One
#: ``alloca`` in the entry block, with constant offsets only in the inner
#: loops, which LLVM keeps in vector registers; a NumPy array there stayed in
#: memory and ran at about a third of the speed (the prototype in
#: ``benchmarks/bench_numba_packed.py``).
_stack_block = _stack_of(BLOCK_ROWS * PANEL)


@_jit
def pack(w, trans, K, N, packed):
    """Pack op(W) (K, N) into panels: packed[p, k, j] = op(W)[k, p*PANEL + j],
    zero past column N.

    w : (N*K,) W (N, K) row-major, PyTorch's layout, with op(W) = W^T when
        ``trans`` (the forward's W_hh^T); else (K*N,), op(W) = W (K, N) itself
        (the backward's W_hh).
    packed : (packed_size(K, N),) out.
    """
    zero = zero_of(packed)
    out = ptr(packed, 0)
    src = ptr(w, 0)
    for p in range((N + PANEL - 1) // PANEL):
        width = min(PANEL, N - p * PANEL)
        panel = ptr(out, p * K * PANEL)
        if trans:
            # column n of op(W) is row n of w: read it contiguously, write it
            # with stride PANEL; the panel (K * 64 bytes) stays in cache meanwhile
            for j in range(width):
                col = ptr(src, (p * PANEL + j) * K)
                for k in range(K):
                    panel[k * PANEL + j] = col[k]
        else:
            for k in range(K):
                for j in range(width):
                    panel[k * PANEL + j] = src[k * N + p * PANEL + j]
        if width < PANEL:
            for k in range(K):
                for j in range(width, PANEL):
                    panel[k * PANEL + j] = zero


@_inline
def _store_rows(acc, rows, width, beta, c, ldc):
    """c[r, :width] := acc[r, :width] (+ c when beta is 1) for ``rows`` rows."""
    # beta = 0 must overwrite: c may be scratch from np.empty, NaN and all
    if beta == 0:
        for r in range(rows):
            for j in range(width):
                c[r * ldc + j] = acc[r * PANEL + j]
    else:
        for r in range(rows):
            for j in range(width):
                c[r * ldc + j] += acc[r * PANEL + j]


@_inline
def packed_product(B, N, K, a, lda, packed, beta, c, ldc, descending):
    """C := A @ W + beta * C with W (K, N) packed by :func:`pack`; beta 0 or 1.

    a (B, K) with leading dimension lda, packed (packed_size(K, N),),
    c (B, N) with leading dimension ldc: pointers. ``descending`` walks the
    panels from the last, as fr_gemm_packed of src_ext/_packed_gemm.h (the
    time loops alternate it: each step starts on the panels still cached).
    """
    acc = _stack_block(c)
    zero = zero_of(c)
    n_panels = (N + PANEL - 1) // PANEL
    for q in range(n_panels):
        p = n_panels - 1 - q if descending else q
        w = ptr(packed, p * K * PANEL)
        cp = ptr(c, p * PANEL)
        width = min(PANEL, N - p * PANEL)
        b = 0
        while b + BLOCK_ROWS <= B:
            for j in range(BLOCK_ROWS * PANEL):
                acc[j] = zero
            ab = ptr(a, b * lda)
            for k in range(K):
                a0, a1 = ab[k], ab[lda + k]
                a2, a3 = ab[2 * lda + k], ab[3 * lda + k]
                for j in range(PANEL):
                    wv = w[k * PANEL + j]
                    acc[j] += a0 * wv
                    acc[PANEL + j] += a1 * wv
                    acc[2 * PANEL + j] += a2 * wv
                    acc[3 * PANEL + j] += a3 * wv
            _store_rows(acc, BLOCK_ROWS, width, beta, ptr(cp, b * ldc), ldc)
            b += BLOCK_ROWS
        # the last 1-3 rows one at a time. One row's sums would wait on the
        # FMA latency (4-5 cycles) at every k, so four partial sums over k
        # interleave, added in a fixed order at the end, as fr_panel_rows_1.
        # (Written as one loop over j with four statements, like the block
        # above: a loop of one statement is fully unrolled before LLVM's loop
        # vectoriser sees it, and its SLP vectoriser left that scalar, at a
        # fifth of the speed.)
        K4 = K - K % 4
        while b < B:
            for j in range(BLOCK_ROWS * PANEL):
                acc[j] = zero
            ab = ptr(a, b * lda)
            for k in range(0, K4, 4):
                a0, a1, a2, a3 = ab[k], ab[k + 1], ab[k + 2], ab[k + 3]
                for j in range(PANEL):
                    acc[j] += a0 * w[k * PANEL + j]
                    acc[PANEL + j] += a1 * w[(k + 1) * PANEL + j]
                    acc[2 * PANEL + j] += a2 * w[(k + 2) * PANEL + j]
                    acc[3 * PANEL + j] += a3 * w[(k + 3) * PANEL + j]
            for k in range(K4, K):
                for j in range(PANEL):
                    acc[j] += ab[k] * w[k * PANEL + j]
            for j in range(PANEL):
                acc[j] = (acc[j] + acc[PANEL + j]) + (acc[2 * PANEL + j] + acc[3 * PANEL + j])
            _store_rows(acc, 1, width, beta, ptr(cp, b * ldc), ldc)
            b += 1


@_inline
def recurrent_product(B, N, K, h, w, trans, packed, beta, out, step):
    """out (B, N) := h (B, K) @ op(W) + beta * out, the per-step product by W_hh.

    Through the packed panels when ``packed`` (an array) is not empty, else
    through ``gemm`` from ``w``: op(W) = w^T for w (N, K) when ``trans``,
    else w (K, N). beta is 0 or 1; h, w and out are pointers, contiguous rows.
    ``step``: the time loop's counter (odd steps walk the panels backwards).
    """
    if packed.size > 0:
        packed_product(B, N, K, h, K, ptr(packed, 0), beta, out, N, step % 2 == 1)
    else:
        gemm(False, trans, B, N, K, one_of(out), h, K, w, K if trans else N, beta, out, N)


# ------------------------------------------------------------- a few rows
# A product of a few rows by a weight in PyTorch's layout, W (N, K) row-major
# (a short call's projections and recurrent products), as src_ext/_small_gemm.h:
# GEMV streams W once per row, and OpenBLAS's GEMM repacks all of it on every
# call. Here each block of 4 rows x 4 columns of W streams its columns once
# for the four rows, each of its 16 sums kept in LANES partial sums over k
# (k = l, l + LANES, ...: a vector each), added in a fixed tree at the end.

#: partial sums per output value: one AVX2 vector of float32
LANES = 8
#: the rows from which a product by W^T takes this path instead of GEMV; up
#: to ``nt_max_rows`` instead of GEMM. One core, against the BLAS path
#: (``benchmarks/bench_numba_small_gemm.py``, 9 runs, K = 100-512): float32
#: 1.12x at (4, 400, 100), 1.5-1.8x at 4-8 rows and K >= 256, 1.3-1.6x at
#: 16, 1.18x at 24, 1.10x at 32; float64 1.05-2.15x at 4-8 rows, 1.10-1.86x
#: at 16, 0.99x at 24, 0.92x at 32. Under 4 rows the one-row blocks ran at
#: 0.79-0.90x GEMV's rate (float64 0.57-0.73x).
NT_MIN_ROWS = 4


def nt_max_rows(c):
    """The most rows ``gemm`` gives ``few_rows_nt`` for C's dtype (compiled code only)."""


@overload(nt_max_rows, jit_options=_options())
def _nt_max_rows(c):
    rows = 32 if c.dtype == types.float32 else 16
    return lambda c: rows

_stack_lanes = _stack_of(16 * LANES)


@_inline_ir
def _sums_4x4(acc, a0, a1, a2, a3, w0, w1, w2, w3, k, l):
    """The 4 x 4 block's 16 partial sums l += its rows' and columns' values at k."""
    x0, x1, x2, x3 = a0[k], a1[k], a2[k], a3[k]
    v0, v1, v2, v3 = w0[k], w1[k], w2[k], w3[k]
    acc[l] += x0 * v0
    acc[LANES + l] += x0 * v1
    acc[2 * LANES + l] += x0 * v2
    acc[3 * LANES + l] += x0 * v3
    acc[4 * LANES + l] += x1 * v0
    acc[5 * LANES + l] += x1 * v1
    acc[6 * LANES + l] += x1 * v2
    acc[7 * LANES + l] += x1 * v3
    acc[8 * LANES + l] += x2 * v0
    acc[9 * LANES + l] += x2 * v1
    acc[10 * LANES + l] += x2 * v2
    acc[11 * LANES + l] += x2 * v3
    acc[12 * LANES + l] += x3 * v0
    acc[13 * LANES + l] += x3 * v1
    acc[14 * LANES + l] += x3 * v2
    acc[15 * LANES + l] += x3 * v3


@_inline_ir
def _sums_1x8(acc, a0, w0, w1, w2, w3, w4, w5, w6, w7, k, l):
    """A row's block of 8 columns: its 8 partial sums l += the values at k."""
    x0 = a0[k]
    acc[l] += x0 * w0[k]
    acc[LANES + l] += x0 * w1[k]
    acc[2 * LANES + l] += x0 * w2[k]
    acc[3 * LANES + l] += x0 * w3[k]
    acc[4 * LANES + l] += x0 * w4[k]
    acc[5 * LANES + l] += x0 * w5[k]
    acc[6 * LANES + l] += x0 * w6[k]
    acc[7 * LANES + l] += x0 * w7[k]


@_inline
def _lane_sum(acc, j):
    """The LANES partial sums from acc[j], in a fixed tree."""
    return (((acc[j] + acc[j + 1]) + (acc[j + 2] + acc[j + 3]))
            + ((acc[j + 4] + acc[j + 5]) + (acc[j + 6] + acc[j + 7])))


@_inline
def _store_sum(c, value, beta):
    """c[0] := value (+ c[0] when beta is 1)."""
    if beta == 0:
        c[0] = value
    else:
        c[0] += value


@_inline
def _column(w, n, N, ldw):
    """Row n of W (column n of W^T), or its last row past N: a block's columns
    past N are computed from it and not stored."""
    return ptr(w, min(n, N - 1) * ldw)


@_jit
def few_rows_nt(M, N, K, a, lda, w, ldw, beta, c, ldc):
    """C (M, N) := A (M, K) @ W^T + beta * C for W (N, K) row-major; beta 0
    or 1; pointers. Blocks of 4 rows x 4 columns, then each row left over in
    blocks of 8 columns; the same partial sums for every block."""
    acc = _stack_lanes(c)
    zero = zero_of(c)
    K8 = K - K % LANES
    m = 0
    while m + 4 <= M:
        a0, a1 = ptr(a, m * lda), ptr(a, (m + 1) * lda)
        a2, a3 = ptr(a, (m + 2) * lda), ptr(a, (m + 3) * lda)
        for n in range(0, N, 4):
            w0, w1 = _column(w, n, N, ldw), _column(w, n + 1, N, ldw)
            w2, w3 = _column(w, n + 2, N, ldw), _column(w, n + 3, N, ldw)
            for j in range(16 * LANES):
                acc[j] = zero
            for k in range(0, K8, LANES):
                for l in range(LANES):
                    _sums_4x4(acc, a0, a1, a2, a3, w0, w1, w2, w3, k + l, l)
            for k in range(K8, K):
                _sums_4x4(acc, a0, a1, a2, a3, w0, w1, w2, w3, k, k - K8)
            for r in range(4):
                for q in range(min(4, N - n)):
                    _store_sum(ptr(c, (m + r) * ldc + n + q), _lane_sum(acc, (4 * r + q) * LANES),
                               beta)
        m += 4
    for m in range(m, M):
        a0 = ptr(a, m * lda)
        for n in range(0, N, 8):
            w0, w1 = _column(w, n, N, ldw), _column(w, n + 1, N, ldw)
            w2, w3 = _column(w, n + 2, N, ldw), _column(w, n + 3, N, ldw)
            w4, w5 = _column(w, n + 4, N, ldw), _column(w, n + 5, N, ldw)
            w6, w7 = _column(w, n + 6, N, ldw), _column(w, n + 7, N, ldw)
            for j in range(8 * LANES):
                acc[j] = zero
            for k in range(0, K8, LANES):
                for l in range(LANES):
                    _sums_1x8(acc, a0, w0, w1, w2, w3, w4, w5, w6, w7, k + l, l)
            for k in range(K8, K):
                _sums_1x8(acc, a0, w0, w1, w2, w3, w4, w5, w6, w7, k, k - K8)
            for q in range(min(8, N - n)):
                _store_sum(ptr(c, m * ldc + n + q), _lane_sum(acc, q * LANES), beta)


@_jit
def apply_few_rows_nt(a, w, beta, c, M, N, K):
    """c := a @ w^T + beta * c through ``few_rows_nt``, for the tests and
    ``benchmarks/bench_numba_small_gemm.py``; a (M*K,), w (N*K,), c (M*N,)."""
    few_rows_nt(M, N, K, ptr(a, 0), K, ptr(w, 0), K, beta, ptr(c, 0), N)


@_jit
def apply_recurrent_product(h, w, trans, packed, beta, out, B, K, N, step):
    """out := h @ op(W) + beta * out through ``recurrent_product`` as at time
    loop step ``step``, for the tests and ``benchmarks/bench_numba_packed.py``;
    h (B*K,), out (B*N,), w and packed as the kernels take them."""
    recurrent_product(B, N, K, ptr(h, 0), ptr(w, 0), trans, packed, beta, ptr(out, 0), step)


# ---------------------------------------------------------------- activations
# float32: src_ext/_vmath.h, constant for constant (error bounds documented
# there, checked for this module by tests/test_numba.py); float64: exact.

_F32 = np.float32


@intrinsic
def _pow2(typingctx, n):
    """2**n for a float32 holding an integer in [-126, 128], built in the exponent bits
    (n = 128 makes the bits of +inf)."""
    if n != types.float32:
        return None

    def codegen(context, builder, sig, args):
        i = builder.fptosi(args[0], _I32)
        bits = builder.shl(builder.add(i, ir.Constant(_I32, 127)), ir.Constant(_I32, 23))
        return builder.bitcast(bits, ir.FloatType())
    return types.float32(types.float32), codegen


@intrinsic
def _round_to_int(typingctx, t):
    """(float)(int32_t)(t + (t >= 0 ? 0.5f : -0.5f)): t rounded half away from zero."""
    if t != types.float32:
        return None

    def codegen(context, builder, sig, args):
        f = ir.FloatType()
        half = builder.select(builder.fcmp_ordered(">=", args[0], ir.Constant(f, 0.0)),
                              ir.Constant(f, 0.5), ir.Constant(f, -0.5))
        i = builder.fptosi(builder.fadd(args[0], half), _I32)
        return builder.sitofp(i, f)
    return types.float32(types.float32), codegen


# as fr_expf: above 88.38 the result is +inf, so sigmoid(-x) is exactly 0 there
_EXP_HI, _EXP_LO = _F32(89.0), _F32(-87.0)
_LOG2E = _F32(1.44269504088896341)
_LN2_HI, _LN2_LO = _F32(0.693359375), _F32(2.12194440e-4)
_C7, _C6, _C5 = _F32(1.0 / 5040.0), _F32(1.0 / 720.0), _F32(1.0 / 120.0)
_C4, _C3, _C2 = _F32(1.0 / 24.0), _F32(1.0 / 6.0), _F32(0.5)
_T3, _T5, _T7, _T9 = (_F32(-1.0 / 3.0), _F32(2.0 / 15.0), _F32(-17.0 / 315.0),
                      _F32(62.0 / 2835.0))
_F0, _F1, _F2, _QUARTER = _F32(0.0), _F32(1.0), _F32(2.0), _F32(0.25)


@_inline
def expf(x):
    """fr_expf: relative error <= 3 ulp; NaN propagates (every clamp lets NaN pass)."""
    x = _EXP_HI if x > _EXP_HI else x
    x = _EXP_LO if x < _EXP_LO else x
    nf = _round_to_int(x * _LOG2E)
    r = x - nf * _LN2_HI            # ln2 split so that nf * ln2_hi is exact
    r = r + nf * _LN2_LO
    p = _C7
    p = p * r + _C6
    p = p * r + _C5
    p = p * r + _C4
    p = p * r + _C3
    p = p * r + _C2
    p = p * r + _F1
    p = p * r + _F1
    return p * _pow2(nf)


def sigmoid(a):
    """The logistic function in the precision of ``a`` (compiled code only)."""


def tanh_(a):
    """tanh in the precision of ``a`` (compiled code only)."""


@overload(sigmoid, jit_options=_options(), inline="never")
def _sigmoid(a):
    if a == types.float32:
        def sigmoidf(a):
            # no cancellation anywhere: the relative error is that of expf
            return _F1 / (_F1 + expf(-a))
        return sigmoidf
    if a == types.float64:
        def sigmoid64(a):
            # exp of -|a| only, so it cannot overflow for saturated gates
            e = math.exp(-abs(a))
            return 1.0 / (1.0 + e) if a >= 0 else e / (1.0 + e)
        return sigmoid64


@overload(tanh_, jit_options=_options(), inline="never")
def _tanh(a):
    if a == types.float32:
        def tanhf(a):
            ax = -a if a < _F0 else a
            # large |x|: 1 - 2/(1+e^{2|x|}), whose cancellation costs little above 1/4
            big = _F1 - _F2 / (_F1 + expf(_F2 * ax))
            # small |x|: odd Taylor series; the first omitted term is < 1e-8 * |x|
            x2 = a * a
            small = ax * (_F1 + x2 * (_T3 + x2 * (_T5 + x2 * (_T7 + x2 * _T9))))
            y = small if ax < _QUARTER else big
            return -y if a < _F0 else y
        return tanhf
    if a == types.float64:
        def tanh64(a):
            return math.tanh(a)
        return tanh64


def one_of(a):
    """1 in the floating type of the array or pointer ``a`` (compiled code only)."""


def zero_of(a):
    """0 in the floating type of the array or pointer ``a`` (compiled code only)."""


def _float_constant(value):
    c32, c64 = _F32(value), float(value)

    def typer(a):
        dtype = getattr(a, "dtype", a)
        if dtype == types.float32:
            return lambda a: c32
        if dtype == types.float64:
            return lambda a: c64
    return typer


# integer literals and Python floats would promote float32 arithmetic to float64
overload(one_of, inline="always")(_float_constant(1.0))
overload(zero_of, inline="always")(_float_constant(0.0))


@_jit
def apply_sigmoid(x, out):
    """out := sigmoid(x) elementwise (1-D); for testing the activations."""
    for i in range(x.shape[0]):
        out[i] = sigmoid(x[i])


@_jit
def apply_tanh(x, out):
    """out := tanh(x) elementwise (1-D); for testing the activations."""
    for i in range(x.shape[0]):
        out[i] = tanh_(x[i])


# ------------------------------------------------------------ shared pieces
# As src_ext/_rnn_common.pxd: time order, slots, and the big GEMMs before
# and after the time loop.

@_inline
def time_at(s, T, reverse):
    """The time index of the s-th step a direction visits."""
    return T - 1 - s if reverse else s


@_inline
def slot_in(t, reverse):
    """Slot of the state entering step t.

    Training keeps T+1 slots. Inference keeps two and takes the slot numbers
    modulo 2, so each step reads one slot and writes the other: with a single
    slot read and written in place (as the Cython kernels do) the input and
    output rows of the fused pass would be the same memory, which fails LLVM's
    run-time overlap check and leaves the pass unvectorised.
    """
    return t + 1 if reverse else t


@_inline
def slot_out(t, reverse):
    """Slot of the state leaving step t."""
    return t if reverse else t + 1


@_inline
def project_inputs(x, w_ih_t, bias, gates, rows, I, G, trans):
    """gates := x @ w_ih_t + bias for ``rows`` rows at once (one large GEMM).

    x (rows, I), w_ih_t (I, G) or, when ``trans``, W_ih itself (G, I),
    bias (G,), gates (rows, G): pointers.
    """
    for r in range(rows):
        for j in range(G):
            gates[r * G + j] = bias[j]
    one = one_of(gates)
    gemm(False, trans, rows, G, I, one, x, I, w_ih_t, I if trans else G, one, gates, G)


@_inline
def step_gates(x, w_ih_t, bias, gates, s, T, B, I, G, chunk, reverse, trans):
    """Pointer to the gate rows of the s-th visited step.

    Steps are projected ``chunk`` at a time: the first step of a chunk runs one
    GEMM for the inputs of the whole chunk, stored in time order.
    """
    first = s - s % chunk
    n = min(chunk, T - first)
    t_low = T - first - n if reverse else first   # earliest time in the chunk
    if s == first:
        project_inputs(ptr(x, t_low * B * I), ptr(w_ih_t, 0), ptr(bias, 0), ptr(gates, 0),
                       n * B, I, G, trans)
    return ptr(gates, (time_at(s, T, reverse) - t_low) * B * G)


@_inline
def carry_row(src, dst, n):
    """dst := src; a padded step passes its state through."""
    for j in range(n):
        dst[j] = src[j]


@_inline
def zero_row(dst, n):
    for j in range(n):
        dst[j] = 0


@_inline
def column_sums(a, rows, cols, lda, out):
    """out := a.sum(axis=0) for a (rows, cols), rows lda apart; row by row so
    it vectorises."""
    for j in range(cols):
        out[j] = 0
    for r in range(rows):
        for j in range(cols):
            out[j] += a[r * lda + j]

#: whether the host has AVX-512 (OpenBLAS then runs its SkylakeX kernels),
#: which decides the GEMMs' orientation here and in ``_numba_backend``
AVX512 = bool(ll.get_host_cpu_features().get("avx512f"))

#: From this many rows, with G > n, a weight gradient dW (G, n) = dg^T @ a is
#: computed turned around, dW^T = a^T @ dg, and transposed back: OpenBLAS's
#: Haswell/Zen kernels run the turned-around product faster over thousands of
#: rows, its SkylakeX kernels (AVX-512 CPUs) slower. The same rule and
#: thresholds as WGRAD_TRANSPOSED_MIN_ROWS in src_ext/_rnn_common.pxd, which
#: holds the measurements. Read by ``wgrad_scratch_size`` at each call.
WGRAD_TRANSPOSED_MIN_ROWS = 1 << 62 if AVX512 else 2048


def wgrad_scratch_size(rows, G, sizes):
    """Values of the scratch ``weight_gradient`` needs for dW (G, n), n in
    ``sizes``: none unless some dW is to be turned around."""
    if rows < WGRAD_TRANSPOSED_MIN_ROWS:
        return 0
    return max([G * n for n in sizes if G > n], default=0)


@_inline
def weight_gradient(dg, ldg, a, rows, G, n, dw, dw_t, dw_t_size):
    """dw (G, n) := dg^T @ a for dg (rows, G), rows ldg apart, a (rows, n), a
    sum over all rows; turned around through the scratch dw_t (dw_t_size
    values) when the backend sized one for it (``wgrad_scratch_size``)."""
    one, zero = one_of(dw), zero_of(dw)
    if G <= n or dw_t_size < G * n:
        gemm(True, False, G, n, rows, one, dg, ldg, a, n, zero, dw, n)
        return
    gemm(True, False, n, G, rows, one, a, n, dg, ldg, zero, dw_t, G)
    # dw_t is (n, G); 16 rows of dw at a time keep both sides in cache
    for i0 in range(0, G, 16):
        for j in range(n):
            for i in range(i0, min(i0 + 16, G)):
                dw[i * n + j] = dw_t[j * G + i]


@_inline
def part_bound(n, part, n_parts):
    """Where part ``part`` of ``n`` columns starts: even shares, inner bounds on
    a multiple of 16 values, as ``part_bound`` in src_ext/_rnn_common.pxd."""
    if part >= n_parts:
        return n
    return n * part // n_parts // 16 * 16


@_inline
def input_and_weight_gradients(dg_x, dg_h, x, h_in, w_ih, rows, I, H, G,
                               dx, dw_ih, dw_hh, db_ih, db_hh, dw_t, dw_t_size,
                               part, n_parts):
    """Everything BPTT needs after the time loop, a few GEMMs over all T*B
    rows; here part ``part`` of ``n_parts`` of it: columns [i0, i1) of dx and
    rows [g0, g1) of the weight and bias gradients (``part_bound``).

    dg_x, dg_h (rows, G) gradients of the input- and recurrent-side
    pre-activations; x (rows, I); h_in (rows, H) the states that entered each
    step; w_ih (G, I). Out: dx (rows, I), dw_ih (G, I), dw_hh (G, H), db_* (G,).
    Scratch: dw_t, ``wgrad_scratch_size(rows, G, (I, H))`` values.
    """
    one, zero = one_of(dx), zero_of(dx)
    i0, i1 = part_bound(I, part, n_parts), part_bound(I, part + 1, n_parts)
    g0, g1 = part_bound(G, part, n_parts), part_bound(G, part + 1, n_parts)
    if i1 > i0:
        gemm(False, False, rows, i1 - i0, G, one, dg_x, G, ptr(w_ih, i0), I, zero,
             ptr(dx, i0), I)
    if g1 > g0:
        weight_gradient(ptr(dg_x, g0), G, x, rows, g1 - g0, I, ptr(dw_ih, g0 * I), dw_t,
                        dw_t_size)
        weight_gradient(ptr(dg_h, g0), G, h_in, rows, g1 - g0, H, ptr(dw_hh, g0 * H), dw_t,
                        dw_t_size)
        column_sums(ptr(dg_x, g0), rows, g1 - g0, G, ptr(db_ih, g0))
        column_sums(ptr(dg_h, g0), rows, g1 - g0, G, ptr(db_hh, g0))


@_inline
def gradients_of(dg_x, dg_h, x, h_in, w_ih, rows, I, H, G, dx, dw_ih, dw_hh, db_ih, db_hh,
                 dw_t, part, n_parts):
    """``input_and_weight_gradients`` of arrays (``h_in`` an array or a
    pointer to the first state that entered a step)."""
    input_and_weight_gradients(ptr(dg_x, 0), ptr(dg_h, 0), ptr(x, 0), ptr(h_in, 0),
                               ptr(w_ih, 0), rows, I, H, G, ptr(dx, 0), ptr(dw_ih, 0),
                               ptr(dw_hh, 0), ptr(db_ih, 0), ptr(db_hh, 0), ptr(dw_t, 0),
                               dw_t.size, part, n_parts)


@_jit
def gradient_part(dg_x, dg_h, x, h_in, w_ih, rows, I, H, G, dx, dw_ih, dw_hh, db_ih, db_hh,
                  dw_t, part, n_parts):
    """Part ``part`` of ``n_parts`` of ``input_and_weight_gradients`` for a
    backward that left them to its caller (``grad_parts`` > 1), which runs
    the parts on fastrnn's threads; ``dw_t`` is this part's own scratch."""
    gradients_of(dg_x, dg_h, x, h_in, w_ih, rows, I, H, G, dx, dw_ih, dw_hh, db_ih, db_hh,
                 dw_t, part, n_parts)


# ----------------------------------------------------------------------- LSTM
# Gate order i, f, g, o, as PyTorch. Forward: one GEMM projects the inputs of
# many steps at once; each step writes h_{t-1} @ W_hh^T to a (B, 4H) scratch
# and runs one fused element-wise pass that adds it to the gate rows (not
# beta = 1 into them: src_ext/lstm.pyx says why). Backward: one fused pass and
# one GEMM per step, then a few GEMMs over all steps.
#
# Projection (PyTorch's proj_size P < H, separate kernels so that the plain
# LSTM does not compile them): h has P features, the fused pass writes
# m = o * tanh(c') (B, H), and one more GEMM per step gives h_t = m_t @ W_hr^T.
# Backward per step: dm = (dh + dy_t) @ W_hr, the fused pass with dm in place
# of dh, then dh_prev = dG @ W_hh; after the loop dW_hr = sum_t (dh + dy_t)^T m_t
# is one GEMM over all T*B rows.

@_inline_ir
def lstm_unit(g, gh, c_in, c_out, j, H):
    """Unit j of one row: activate its four gates g + gh (input and recurrent
    parts) into g, write c' = f*c + i*g to c_out[j], return o * tanh(c')."""
    i_ = sigmoid(g[j] + gh[j])
    f_ = sigmoid(g[H + j] + gh[H + j])
    g_ = tanh_(g[2 * H + j] + gh[2 * H + j])
    o_ = sigmoid(g[3 * H + j] + gh[3 * H + j])
    g[j] = i_
    g[H + j] = f_
    g[2 * H + j] = g_
    g[3 * H + j] = o_
    c_ = f_ * c_in[j] + i_ * g_
    c_out[j] = c_
    return o_ * tanh_(c_)


@_inline_ir
def lstm_unit_backward(g, dg, c_in, c_out, dh_, dc_, j, H):
    """Unit j of one row: from dh_ (of o * tanh(c')) and dc_ (of c'), write the
    four gate pre-activation gradients to dg, return the gradient of c."""
    one = one_of(dg)
    i_ = g[j]
    f_ = g[H + j]
    g_ = g[2 * H + j]
    o_ = g[3 * H + j]
    tc = tanh_(c_out)    # recomputed rather than stored
    # tanh's derivative 1 - y*y as (1 - y)(1 + y), exact in 1 - y where a unit
    # saturates (one_minus_square in src_ext/_activations.pxd), here and below
    dc_ = dc_ + dh_ * o_ * (one - tc) * (one + tc)
    dg[j] = dc_ * g_ * i_ * (one - i_)
    dg[H + j] = dc_ * c_in * f_ * (one - f_)
    dg[2 * H + j] = dc_ * i_ * (one - g_) * (one + g_)
    dg[3 * H + j] = dh_ * tc * o_ * (one - o_)
    return dc_ * f_


@_jit
def lstm_forward(x,            # IN    (T*B*I,)
                 w_ih_t,       # IN    (I*4H,)
                 w_hh_t,       # IN    (H*4H,)
                 packed,       # IN    (packed_size(H, 4H),) W_hh^T's panels, or empty: use w_hh_t
                 trans,        # the weights are W_ih, W_hh (, W_hr) themselves, read transposed
                 bias,         # IN    (4H,)  b_ih + b_hh
                 lengths,      # IN    (B,)   steps per sequence (T if not given)
                 T, B, I, H, reverse,
                 chunk,        # steps projected per input GEMM
                 gates,        # OUT   (chunk*B*4H,) activated i, f, g, o
                 gh,           # SCRATCH (B*4H,) h @ W_hh^T, which the fused pass adds:
                               # not accumulated into the gate rows (src_ext/lstm.pyx says why)
                 hs,           # INOUT state slots, h0 in the first the loop reads
                 cs,           # INOUT same for c
                 n_slots,      # T+1 keeps every state; 2 alternates (inference)
                 y,           # OUT   T steps of B*H, y_step apart
                 y_step):  # B*H (B*P), more for a part of a split batch's y
    G = 4 * H
    zero = zero_of(y)
    w_hh_p, gh_p = ptr(w_hh_t, 0), ptr(gh, 0)
    for s in range(T):
        t = time_at(s, T, reverse)
        g = step_gates(x, w_ih_t, bias, gates, s, T, B, I, G, chunk, reverse, trans)
        h_in = ptr(hs, slot_in(t, reverse) % n_slots * B * H)
        c_in = ptr(cs, slot_in(t, reverse) % n_slots * B * H)
        h_out = ptr(hs, slot_out(t, reverse) % n_slots * B * H)
        c_out = ptr(cs, slot_out(t, reverse) % n_slots * B * H)
        yt = ptr(y, t * y_step)
        recurrent_product(B, G, H, h_in, w_hh_p, trans, packed, zero, gh_p, s)
        for b in range(B):
            if t >= lengths[b]:
                carry_row(ptr(h_in, b * H), ptr(h_out, b * H), H)
                carry_row(ptr(c_in, b * H), ptr(c_out, b * H), H)
                zero_row(ptr(yt, b * H), H)
                continue
            gb, ghb = row(g, b * G), row(gh_p, b * G)
            c_in_b, c_out_b = ptr(c_in, b * H), ptr(c_out, b * H)
            for j in range(H):
                h_ = lstm_unit(gb, ghb, c_in_b, c_out_b, j, H)
                h_out[b * H + j] = h_
                yt[b * H + j] = h_


@_jit
def lstm_backward(x,           # IN    (T*B*I,)
                  w_ih,        # IN    (4H*I,)
                  w_hh,        # IN    (4H*H,)
                  packed,      # IN    (packed_size(4H, H),) W_hh's panels, or empty: use w_hh
                  gates,       # IN    (T*B*4H,) activated i, f, g, o
                  hs,          # IN    ((T+1)*B*H,) state slots
                  cs,          # IN    ((T+1)*B*H,) cell-state slots
                  dy,          # IN    (T*B*H,), read only if has_dy
                  has_dy,
                  dy_step,   # elements between dy's steps (as y_step)
                  lengths,     # IN    (B,)
                  T, B, I, H, reverse,
                  dh,          # INOUT (B*H,) dh_n in, dh0 out
                  dc,          # INOUT (B*H,) dc_n in, dc0 out
                  dg,          # OUT   (T*B*4H,) gradient of the pre-activations
                  dx, dw_ih, dw_hh, db_ih, db_hh,    # OUT
                  dw_t,       # SCRATCH (wgrad_scratch_size(T*B, 4H, (I, H)),)
                  grad_parts):  # 1: the GEMMs after the loop here; more: the caller's
    G = 4 * H
    one = one_of(dh)
    dh_p, dc_p, w_hh_p = ptr(dh, 0), ptr(dc, 0), ptr(w_hh, 0)
    for s in range(T):
        t = time_at(T - 1 - s, T, reverse)   # the forward's steps, last first
        gt = ptr(gates, t * B * G)
        dgt = ptr(dg, t * B * G)
        c_in = ptr(cs, slot_in(t, reverse) * B * H)
        c_out = ptr(cs, slot_out(t, reverse) * B * H)
        dyt = ptr(dy, t * dy_step if has_dy else 0)
        for b in range(B):
            if t >= lengths[b]:
                # padding passed the state through: dh, dc pass back unchanged
                zero_row(ptr(dgt, b * G), G)
                continue
            gb = row(gt, b * G)
            dgb = row(dgt, b * G)
            for j in range(H):
                dh_ = dh_p[b * H + j]
                if has_dy:
                    dh_ = dh_ + dyt[b * H + j]
                dc_p[b * H + j] = lstm_unit_backward(gb, dgb, c_in[b * H + j],
                                                     c_out[b * H + j], dh_,
                                                     dc_p[b * H + j], j, H)
                dh_p[b * H + j] = 0        # h reaches the past only through the gates
        recurrent_product(B, H, G, dgt, w_hh_p, False, packed, one, dh_p, s)
    if grad_parts == 1:    # else the caller runs gradient_part's parts
        gradients_of(dg, dg, x, ptr(hs, B * H if reverse else 0), w_ih, T * B, I, H, G, dx,
                     dw_ih, dw_hh, db_ih, db_hh, dw_t, 0, 1)


@_jit
def lstm_projected_forward(x,          # IN    (T*B*I,)
                           w_ih_t,     # IN    (I*4H,)
                           w_hh_t,     # IN    (P*4H,)
                           packed,     # IN    (packed_size(P, 4H),) W_hh^T's panels, or empty
                           trans,        # the weights are W_ih, W_hh (, W_hr) themselves, read transposed
                           w_hr_t,     # IN    (H*P,)
                           bias,       # IN    (4H,)  b_ih + b_hh
                           lengths,    # IN    (B,)
                           T, B, I, H, P, reverse,
                           chunk,      # steps projected per input GEMM
                           gates,      # OUT   (chunk*B*4H,) activated i, f, g, o
                           gh,         # SCRATCH (B*4H,) h @ W_hh^T
                           hs,         # INOUT (n_slots*B*P,) state slots, h0 in the first read
                           cs,         # INOUT (n_slots*B*H,) same for c
                           n_slots,    # T+1 keeps every state; 2 alternates (inference)
                           m,          # OUT   (T*B*H,) o*tanh(c) if keep_m, else (B*H,) scratch
                           keep_m,
                           y,         # OUT   T steps of B*P, y_step apart
                           y_step):  # B*H (B*P), more for a part of a split batch's y
    G = 4 * H
    one, zero = one_of(y), zero_of(y)
    w_hh_p, w_hr_p, gh_p = ptr(w_hh_t, 0), ptr(w_hr_t, 0), ptr(gh, 0)
    for s in range(T):
        t = time_at(s, T, reverse)
        g = step_gates(x, w_ih_t, bias, gates, s, T, B, I, G, chunk, reverse, trans)
        h_in = ptr(hs, slot_in(t, reverse) % n_slots * B * P)
        c_in = ptr(cs, slot_in(t, reverse) % n_slots * B * H)
        h_out = ptr(hs, slot_out(t, reverse) % n_slots * B * P)
        c_out = ptr(cs, slot_out(t, reverse) % n_slots * B * H)
        yt = ptr(y, t * y_step)
        mt = ptr(m, t * B * H if keep_m else 0)
        recurrent_product(B, G, P, h_in, w_hh_p, trans, packed, zero, gh_p, s)
        # the fused pass writes m_t, one GEMM projects it to y_t
        for b in range(B):
            if t >= lengths[b]:
                carry_row(ptr(c_in, b * H), ptr(c_out, b * H), H)
                zero_row(ptr(mt, b * H), H)
                continue
            gb, ghb = row(g, b * G), row(gh_p, b * G)
            c_in_b, c_out_b = ptr(c_in, b * H), ptr(c_out, b * H)
            for j in range(H):
                mt[b * H + j] = lstm_unit(gb, ghb, c_in_b, c_out_b, j, H)
        gemm(False, trans, B, P, H, one, mt, H, w_hr_p, H if trans else P, zero, yt, P)
        for b in range(B):
            if t < lengths[b]:
                carry_row(ptr(yt, b * P), ptr(h_out, b * P), P)
            else:
                carry_row(ptr(h_in, b * P), ptr(h_out, b * P), P)
                zero_row(ptr(yt, b * P), P)


@_jit
def lstm_projected_backward(x,         # IN    (T*B*I,)
                            w_ih,      # IN    (4H*I,)
                            w_hh,      # IN    (4H*P,)
                            packed,    # IN    (packed_size(4H, P),) W_hh's panels, or empty
                            w_hr,      # IN    (P*H,)
                            gates,     # IN    (T*B*4H,) activated i, f, g, o
                            hs,        # IN    ((T+1)*B*P,) state slots
                            cs,        # IN    ((T+1)*B*H,) cell-state slots
                            m,         # IN    (T*B*H,) o*tanh(c) of each step
                            dy,        # IN    (T*B*P,), read only if has_dy
                            has_dy,
                            dy_step,   # elements between dy's steps (as y_step)
                            lengths,   # IN    (B,)
                            T, B, I, H, P, reverse,
                            dh,        # INOUT (B*P,) dh_n in, dh0 out
                            dc,        # INOUT (B*H,) dc_n in, dc0 out
                            dg,        # OUT   (T*B*4H,) gradient of the pre-activations
                            dh_total,  # OUT   (T*B*P,) dh + dy_t, 0 at padding
                            dm,        # SCRATCH (B*H,)
                            dx, dw_ih, dw_hh, db_ih, db_hh, dw_hr,    # OUT
                            dw_t,     # SCRATCH (wgrad_scratch_size(T*B, 4H, (I, P)),)
                            grad_parts):  # 1: the GEMMs after the loop here; more: the caller's
    G = 4 * H
    one, zero = one_of(dh), zero_of(dh)
    dh_p, dc_p, dm_p = ptr(dh, 0), ptr(dc, 0), ptr(dm, 0)
    w_hh_p, w_hr_p = ptr(w_hh, 0), ptr(w_hr, 0)
    for s in range(T):
        t = time_at(T - 1 - s, T, reverse)   # the forward's steps, last first
        gt = ptr(gates, t * B * G)
        dgt = ptr(dg, t * B * G)
        c_in = ptr(cs, slot_in(t, reverse) * B * H)
        c_out = ptr(cs, slot_out(t, reverse) * B * H)
        dyt = ptr(dy, t * dy_step if has_dy else 0)
        # h_t = m_t @ W_hr^T: dm = (dh + dy_t) @ W_hr; h reaches the past only
        # through the gates, so dh restarts from the GEMM at the end of the step
        dht = ptr(dh_total, t * B * P)
        for b in range(B):
            if t >= lengths[b]:
                zero_row(ptr(dht, b * P), P)
                continue
            for j in range(P):
                dh_ = dh_p[b * P + j]
                if has_dy:
                    dh_ = dh_ + dyt[b * P + j]
                dht[b * P + j] = dh_
                dh_p[b * P + j] = 0
        gemm(False, False, B, H, P, one, dht, P, w_hr_p, H, zero, dm_p, H)
        for b in range(B):
            if t >= lengths[b]:
                # padding passed the state through: dh, dc pass back unchanged
                zero_row(ptr(dgt, b * G), G)
                continue
            gb = row(gt, b * G)
            dgb = row(dgt, b * G)
            for j in range(H):
                dc_p[b * H + j] = lstm_unit_backward(gb, dgb, c_in[b * H + j],
                                                     c_out[b * H + j], dm_p[b * H + j],
                                                     dc_p[b * H + j], j, H)
        recurrent_product(B, P, G, dgt, w_hh_p, False, packed, one, dh_p, s)
    if grad_parts == 1:    # else the caller runs gradient_part's parts
        gradients_of(dg, dg, x, ptr(hs, B * P if reverse else 0), w_ih, T * B, I, P, G, dx,
                     dw_ih, dw_hh, db_ih, db_hh, dw_t, 0, 1)
    # dW_hr = sum over steps of dh_total_t^T m_t; padding rows are zero in both
    weight_gradient(ptr(dh_total, 0), P, ptr(m, 0), T * B, P, H, ptr(dw_hr, 0),
                    ptr(dw_t, 0), dw_t.size)


# ------------------------------------------------------------------------ GRU
# Gate order r, z, n; the reset gate multiplies (W_hn h + b_hn), as PyTorch, so
# the recurrent product cannot accumulate into the input projection: each step
# writes it to a (B, 3H) scratch (beta = 0) and the fused pass combines the
# two. b_hr and b_hz are folded into the input projection's bias.

@_jit
def gru_forward(x,             # IN    (T*B*I,)
                w_ih_t,        # IN    (I*3H,)
                w_hh_t,        # IN    (H*3H,)
                packed,        # IN    (packed_size(H, 3H),) W_hh^T's panels, or empty
                trans,        # the weights are W_ih, W_hh (, W_hr) themselves, read transposed
                bias,          # IN    (3H,) b_ih + (b_hr, b_hz, 0)
                b_hn,          # IN    (H,)
                lengths,       # IN    (B,)
                T, B, I, H, reverse,
                chunk,         # steps projected per input GEMM
                gates,         # OUT   (chunk*B*3H,) activated r, z, n
                gh,            # SCRATCH (B*3H,) h @ W_hh^T
                ghn,           # OUT   (T*B*H,) W_hn h + b_hn, written only if keep_ghn
                keep_ghn,
                hs,            # INOUT state slots, h0 in the first the loop reads
                n_slots,       # T+1 keeps every state; 2 alternates (inference)
                y,            # OUT   T steps of B*H, y_step apart
                y_step):  # B*H (B*P), more for a part of a split batch's y
    G = 3 * H
    one, zero = one_of(y), zero_of(y)
    w_hh_p, gh_p = ptr(w_hh_t, 0), ptr(gh, 0)
    for s in range(T):
        t = time_at(s, T, reverse)
        g = step_gates(x, w_ih_t, bias, gates, s, T, B, I, G, chunk, reverse, trans)
        h_in = ptr(hs, slot_in(t, reverse) % n_slots * B * H)
        h_out = ptr(hs, slot_out(t, reverse) % n_slots * B * H)
        yt = ptr(y, t * y_step)
        ghn_t = ptr(ghn, t * B * H if keep_ghn else 0)
        recurrent_product(B, G, H, h_in, w_hh_p, trans, packed, zero, gh_p, s)
        for b in range(B):
            if t >= lengths[b]:
                carry_row(ptr(h_in, b * H), ptr(h_out, b * H), H)
                zero_row(ptr(yt, b * H), H)
                continue
            gb = row(g, b * G)
            ghb = row(gh_p, b * G)
            for j in range(H):
                r_ = sigmoid(gb[j] + ghb[j])
                z_ = sigmoid(gb[H + j] + ghb[H + j])
                hn_ = ghb[2 * H + j] + b_hn[j]
                n_ = tanh_(gb[2 * H + j] + r_ * hn_)
                gb[j] = r_
                gb[H + j] = z_
                gb[2 * H + j] = n_
                if keep_ghn:
                    ghn_t[b * H + j] = hn_
                h_ = (one - z_) * n_ + z_ * h_in[b * H + j]
                h_out[b * H + j] = h_
                yt[b * H + j] = h_


@_jit
def gru_backward(x,            # IN    (T*B*I,)
                 w_ih,         # IN    (3H*I,)
                 w_hh,         # IN    (3H*H,)
                 packed,       # IN    (packed_size(3H, H),) W_hh's panels, or empty
                 gates,        # IN    (T*B*3H,) activated r, z, n
                 ghn,          # IN    (T*B*H,) W_hn h + b_hn
                 hs,           # IN    ((T+1)*B*H,) state slots
                 dy,           # IN    (T*B*H,), read only if has_dy
                 has_dy,
                 dy_step,   # elements between dy's steps (as y_step)
                 lengths,      # IN    (B,)
                 T, B, I, H, reverse,
                 dh,           # INOUT (B*H,) dh_n in, dh0 out
                 dg_x,         # OUT   (T*B*3H,) gradient of the input-side pre-activations
                 dg_h,         # OUT   (T*B*3H,) gradient of h @ W_hh^T + b_hh
                 dx, dw_ih, dw_hh, db_ih, db_hh,    # OUT
                 dw_t,        # SCRATCH (wgrad_scratch_size(T*B, 3H, (I, H)),)
                 grad_parts):  # 1: the GEMMs after the loop here; more: the caller's
    G = 3 * H
    one = one_of(dh)
    dh_p, w_hh_p = ptr(dh, 0), ptr(w_hh, 0)
    for s in range(T):
        t = time_at(T - 1 - s, T, reverse)   # the forward's steps, last first
        gt = ptr(gates, t * B * G)
        dxt = ptr(dg_x, t * B * G)
        dht = ptr(dg_h, t * B * G)
        h_in = ptr(hs, slot_in(t, reverse) * B * H)
        ghn_t = ptr(ghn, t * B * H)
        dyt = ptr(dy, t * dy_step if has_dy else 0)
        for b in range(B):
            if t >= lengths[b]:
                # padding passed the state through: dh passes back unchanged
                zero_row(ptr(dxt, b * G), G)
                zero_row(ptr(dht, b * G), G)
                continue
            gb = row(gt, b * G)
            dxb = row(dxt, b * G)
            dhb = row(dht, b * G)
            for j in range(H):
                dh_ = dh_p[b * H + j]
                if has_dy:
                    dh_ = dh_ + dyt[b * H + j]
                r_ = gb[j]
                z_ = gb[H + j]
                n_ = gb[2 * H + j]
                dn = dh_ * (one - z_) * (one - n_) * (one + n_)
                dz = dh_ * (h_in[b * H + j] - n_) * z_ * (one - z_)
                dr = dn * ghn_t[b * H + j] * r_ * (one - r_)
                dxb[j] = dr
                dxb[H + j] = dz
                dxb[2 * H + j] = dn
                dhb[j] = dr
                dhb[H + j] = dz
                dhb[2 * H + j] = dn * r_
                dh_p[b * H + j] = dh_ * z_     # the direct path h' = ... + z*h
        recurrent_product(B, H, G, dht, w_hh_p, False, packed, one, dh_p, s)
    if grad_parts == 1:    # else the caller runs gradient_part's parts
        gradients_of(dg_x, dg_h, x, ptr(hs, B * H if reverse else 0), w_ih, T * B, I, H, G,
                     dx, dw_ih, dw_hh, db_ih, db_hh, dw_t, 0, 1)


# ------------------------------------------------------------------------ RNN
# h' = act(W_ih x + b_ih + W_hh h + b_hh). Backward needs only the states
# (act' is a function of act's output), so training keeps nothing else.

@_jit
def rnn_forward(x,             # IN    (T*B*I,)
                w_ih_t,        # IN    (I*H,)
                w_hh_t,        # IN    (H*H,)
                packed,        # IN    (packed_size(H, H),) W_hh^T's panels, or empty
                trans,        # the weights are W_ih, W_hh (, W_hr) themselves, read transposed
                bias,          # IN    (H,) b_ih + b_hh
                lengths,       # IN    (B,)
                T, B, I, H, reverse, relu,
                chunk,         # steps projected per input GEMM
                pre,           # SCRATCH (chunk*B*H,) pre-activations
                hs,            # INOUT state slots, h0 in the first the loop reads
                n_slots,       # T+1 keeps every state; 2 alternates (inference)
                y,            # OUT   T steps of B*H, y_step apart
                y_step):  # B*H (B*P), more for a part of a split batch's y
    one, zero = one_of(y), zero_of(y)
    w_hh_p = ptr(w_hh_t, 0)
    for s in range(T):
        t = time_at(s, T, reverse)
        p = step_gates(x, w_ih_t, bias, pre, s, T, B, I, H, chunk, reverse, trans)
        h_in = ptr(hs, slot_in(t, reverse) % n_slots * B * H)
        h_out = ptr(hs, slot_out(t, reverse) % n_slots * B * H)
        yt = ptr(y, t * y_step)
        recurrent_product(B, H, H, h_in, w_hh_p, trans, packed, one, p, s)
        for b in range(B):
            if t >= lengths[b]:
                carry_row(ptr(h_in, b * H), ptr(h_out, b * H), H)
                zero_row(ptr(yt, b * H), H)
                continue
            if relu:
                for j in range(H):
                    # written so that NaN passes through, as np.maximum does
                    a = p[b * H + j]
                    h_ = zero if a < zero else a
                    h_out[b * H + j] = h_
                    yt[b * H + j] = h_
            else:
                for j in range(H):
                    h_ = tanh_(p[b * H + j])
                    h_out[b * H + j] = h_
                    yt[b * H + j] = h_


@_jit
def rnn_backward(x,            # IN    (T*B*I,)
                 w_ih,         # IN    (H*I,)
                 w_hh,         # IN    (H*H,)
                 packed,       # IN    (packed_size(H, H),) W_hh's panels, or empty
                 hs,           # IN    ((T+1)*B*H,) state slots
                 dy,           # IN    (T*B*H,), read only if has_dy
                 has_dy,
                 dy_step,   # elements between dy's steps (as y_step)
                 lengths,      # IN    (B,)
                 T, B, I, H, reverse, relu,
                 dh,           # INOUT (B*H,) dh_n in, dh0 out
                 dg,           # OUT   (T*B*H,) gradient of the pre-activations
                 dx, dw_ih, dw_hh, db_ih, db_hh,    # OUT
                 dw_t,        # SCRATCH (wgrad_scratch_size(T*B, H, (I, H)),)
                 grad_parts):  # 1: the GEMMs after the loop here; more: the caller's
    one, zero = one_of(dh), zero_of(dh)
    dh_p, w_hh_p = ptr(dh, 0), ptr(w_hh, 0)
    for s in range(T):
        t = time_at(T - 1 - s, T, reverse)   # the forward's steps, last first
        dgt = ptr(dg, t * B * H)
        h_out = ptr(hs, slot_out(t, reverse) * B * H)
        dyt = ptr(dy, t * dy_step if has_dy else 0)
        for b in range(B):
            if t >= lengths[b]:
                # padding passed the state through: dh passes back unchanged
                zero_row(ptr(dgt, b * H), H)
                continue
            for j in range(H):
                dh_ = dh_p[b * H + j]
                if has_dy:
                    dh_ = dh_ + dyt[b * H + j]
                h_ = h_out[b * H + j]
                if relu:
                    dgt[b * H + j] = dh_ if h_ > zero else zero
                else:
                    dgt[b * H + j] = dh_ * (one - h_) * (one + h_)
                dh_p[b * H + j] = 0        # h reaches the past only through W_hh
        recurrent_product(B, H, H, dgt, w_hh_p, False, packed, one, dh_p, s)
    if grad_parts == 1:    # else the caller runs gradient_part's parts
        gradients_of(dg, dg, x, ptr(hs, B * H if reverse else 0), w_ih, T * B, I, H, H, dx,
                     dw_ih, dw_hh, db_ih, db_hh, dw_t, 0, 1)
