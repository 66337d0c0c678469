"""The Numba kernels behind the backend interface (see ``_backends``).

The same contract, buffers (``_buffers``) and memory ownership as
``_cython_backend``: Python allocates outputs, the workspace and the scratch
and hands everything to ``fastrnn._numba.kernels``, whose compiled kernels run
the whole time loop, allocate nothing and release the GIL. As in Cython, a
call of ``PREPARE_MIN_T`` steps or more prepares W_hh once for its per-step
product (``prepare_forward``, ``prepare_backward``, shared by the halves of a
split batch): packed panels for float32 batches up to ``PACKED_MAX_B`` rows,
else a K-major copy W_hh^T for the forward; such a call also copies W_ih (and
W_hr) K-major. Shorter calls, and every call on a CPU with AVX-512
(``K_MAJOR_COPY``), read PyTorch's layout through BLAS's transpose flag.

Buffers (T steps, B sequences, H hidden units, G gates)
-------------------------------------------------------
``hs``, ``cs`` : (T+1, B, H) in training, the state entering and leaving each
    step (time-aligned slots, see ``src_ext/_rnn_common.pxd``); (2, B, H) in
    inference, the slot numbers taken modulo 2 (see ``fastrnn._buffers``).
``gates`` : (T, B, G*H) activated gates in training (LSTM, GRU); in inference,
    and for the RNN always, (chunk, B, G*H) scratch for the input projection of
    ``chunk`` steps at a time, so inference memory does not grow with T.
``gh`` : (B, G*H) LSTM and GRU, scratch for each step's h @ W_hh^T.
``ghn`` : (T, B, H) GRU only, W_hn h + b_hn, needed for the reset gate's gradient.

LSTM with a projection (``params`` has a fifth entry ``w_hr`` (P, H)): ``hs``
and ``y`` have P features, ``cs`` keeps H, and ``m`` holds o * tanh(c), the
input of the projection: (T, B, H) in training (for dW_hr), (1, B, H) scratch
in inference. Backward adds ``dh_total`` (T, B, P), the gradient reaching each
h_t, so that dW_hr is one GEMM over all T*B rows, and ``dm`` (B, H) scratch.

Numba specifics
---------------
The kernels take flat (1-D) arrays and their dimensions. Inputs are passed as
read-only views and outputs as writeable arrays, whatever the caller's flags,
and missing ``lengths``/``dy``/``ghn`` as arrays plus a flag rather than None,
so each kernel has exactly one compiled specialisation per dtype. Compilation
happens on the first call of each cell and dtype and is cached on disk
(``NUMBA_CACHE_DIR``, else ``__pycache__`` next to the kernels, else the
user's cache directory). Measured on the 2-core development machine by
``benchmarks/bench_numba_vs_cython.py``: the first forward + backward of a cell
compiles for 4-6 s with an empty cache and loads in about 0.3 s from the cache
in a new process, plus about 0.6 s to import Numba itself. The packed product
made the first compile about 40 % longer (LSTM, empty cache, 8.2-8.8 s before
and 11.8-12.2 s after on a loaded machine; see README).
"""
import numpy as np

from . import _buffers
from .frozen import memo
from ._numba import kernels as _k
from . import _parallel

#: handles ``params = (w_ih, w_hh, b_ih, b_hh, w_hr)``: an LSTM with a projection
PROJECTION = True

#: float32 batches up to this size multiply by W_hh through packed panels
#: (``kernels.packed_product``) instead of GEMV/sgemm; the same rule as
#: ``_cython_backend.PACKED_MAX_B`` (whose measurements put the crossover
#: with OpenBLAS between 32 and 64 rows). For these kernels, per-step products
#: of the grid's half batches, 1 to 32 rows: 1.6-2.6x the GFLOP/s of the
#: GEMV/sgemm path (``benchmarks/bench_numba_packed.py``, RESULTS.md).
PACKED_MAX_B = 32
#: calls of at least this many steps prepare W_hh (and copy W_ih, W_hr
#: K-major); preparing costs about one step's product (as Cython's PREPARE_MIN_T)
PREPARE_MIN_T = 4
#: whether those copies are made: where the host has AVX-512, OpenBLAS's
#: kernels run PyTorch's layout through the transpose flag faster (as
#: ``_cython_backend.K_MAJOR_COPY``, which holds the measurements; the
#: projection x @ W_ih^T of 1024 rows: 1.05-1.07x)
K_MAJOR_COPY = not _k.AVX512


def prepare_forward(cell, dtype, T, B, params, training=False):
    """How the forward kernels multiply by W_hh^T each step, prepared once
    (for inference and ``training`` alike).

    Keyword arguments for ``forward``'s kernels: ``packed`` panels of W_hh^T
    (float32 batches up to ``PACKED_MAX_B`` rows), a K-major copy ``w_hh_t``
    (other batches), or none (calls of fewer than ``PREPARE_MIN_T`` steps).
    ``_parallel.SplitBackend`` prepares once for all the parts of a split
    batch, with ``B`` their largest, and the parts share it.
    """
    return _prepared(dtype, T, B, params[1], trans=True, params=params)


def prepare_backward(cell, dtype, T, B, w_hh):
    """The same for the backward kernels, which multiply by W_hh itself: packed
    panels, or none (they read W_hh as it is)."""
    return _prepared(dtype, T, B, w_hh, trans=False)


def _prepared(dtype, T, B, w_hh, trans, params=None):
    rec = _buffers.prepared_w_hh(dtype, T, B, w_hh, trans, _pack, PACKED_MAX_B, PREPARE_MIN_T,
                                 K_MAJOR_COPY, params)
    return {name: _in(a) for name, a in rec.items()}


def _pack(w_hh, trans, K, N):
    # from the memory cache and aligned, like the Cython backend's panels (its ``_room``)
    packed = _buffers.panels(_k.packed_size(K, N))
    _k.pack(_in(w_hh), trans, K, N, packed)
    return packed


#: multiply-adds from which an unsplit backward runs the GEMMs after its time
#: loop in parts on fastrnn's Python threads (``_parallel.gradient_parts``):
#: handing a part to a thread costs far more than an OpenMP team, so the
#: threshold is 32 times Cython's. Against one part (the two alternating in one
#: process, 2 threads, training, 9-11 rounds, (B, T, I, H), multiply-adds:
#: speed-up): RNN (1, 100, 512, 512) 79M 1.04x, (4, 50, 512, 512) 157M
#: 1.17x; LSTM (1, 100, 256, 256) and (4, 100, 128, 128) 79M 1.07-1.09x,
#: (4, 100, 256, 256) 1.17x, (4, 50, 512, 512) 1.22x; GRU (1, 100, 512, 512)
#: 236M 1.11x; below it, GRU 59M 1.00-1.01x, LSTM 39M 0.99x, the grid's
#: latency (5-20M) 0.74-1.02x, RNN 20M 0.84-0.87x.
GRADIENT_PARTS_MIN_MACS = 1 << 26


def gradient_parts(cell, T, B, I, GH, H):
    """Parts for the GEMMs after an unsplit backward's loop (``_parallel``)."""
    return _parallel.gradient_parts(T, B, I, GH, H, GRADIENT_PARTS_MIN_MACS)


def _packed(rec, dtype):
    """The kernels' ``packed`` argument: the panels, or an empty array (not packed)."""
    return rec["packed"] if "packed" in rec else _in(np.empty(0, dtype))


def _in(a):
    """``a`` flattened, as a read-only view (one compiled type whatever the caller's flags).
    ``setflags``: 0.34 us against 0.47 through ``flags.writeable``, about ten
    times a call (``timeit``)."""
    v = a.reshape(-1)
    v.setflags(write=False)
    return v


def _out(a):
    return a.reshape(-1)


def _steps(a, name, writeable):
    """``a`` (T, B, H), each step's rows contiguous, as the kernels take y and
    dy: a 1-D view from its first element, and the elements between its steps
    (B*H, or more when ``a`` is a part's rows of a split batch's array, which
    the part then writes or reads in place)."""
    T, B, H = a.shape
    item = a.itemsize
    step = a.strides[0] // item if T > 1 else B * H
    if (H > 1 and a.strides[2] != item) or (B > 1 and a.strides[1] != H * item) \
            or (T > 1 and (a.strides[0] % item or step < B * H)):
        raise ValueError(f"{name} must be ({T}, {B}, {H}) with each step's rows contiguous, "
                         f"got strides {a.strides}")
    flat = np.lib.stride_tricks.as_strided(a, shape=((T - 1) * step + B * H,), strides=(item,),
                                           writeable=writeable)
    return flat, step


def _lengths(lengths, T, B):
    """Steps per sequence, all T when not given (the kernels always read them)."""
    return _in(np.full(B, T, np.intp) if lengths is None else lengths)


def forward(cell, x, state0, params, lengths, reverse, training, prepared=None, y=None):
    """The backend interface's forward; ``prepared``: ``prepare_forward``'s
    result, shared by the parts of a split batch (None: prepare here); ``y``:
    (T, B, H) to write the output into, rows of a larger batch's output for a
    part of a split batch (None: a new array)."""
    T, B, _ = x.shape
    return ForwardCall(cell, x.dtype, T, B, params, reverse, training, prepared)(
        x, state0, lengths, y)


class ForwardCall:
    """A forward call of one shape with everything but its input decided, as
    ``_cython_backend.ForwardCall``: the kernels' operands derived from
    ``params`` (W_hh^T prepared, K-major copies, the biases), flattened as
    the kernels take them. ``forward`` makes one for each call; a frozen
    layer keeps one for each shape (``_parallel.SplitBackend._planned``).
    ``(x, state0, lengths, y=None)`` -> ``(y, state_n, data)``."""

    __slots__ = ("cell", "dtype", "T", "B", "reverse", "training", "w_ih", "w_hh", "w_hr", "I",
                 "H", "GH", "operands", "steps", "all_steps", "n_slots", "first", "last", "new")

    def __init__(self, cell, dtype, T, B, params, reverse, training, prepared=None):
        w_ih, w_hh, _, b_hh = params[:4]
        w_hr = params[4] if len(params) > 4 else None
        self.cell, self.dtype, self.T, self.B = cell, dtype, T, B
        self.reverse, self.training = reverse, training
        self.w_ih, self.w_hh, self.w_hr = w_ih, w_hh, w_hr
        self.I = w_ih.shape[1]
        self.H = H = w_hh.shape[1]      # the size of h: P with a projection
        self.GH = GH = w_hh.shape[0]
        rec = prepare_forward(cell, dtype, T, B, params) if prepared is None else prepared
        # a short call (streaming) reads PyTorch's layout through BLAS's transpose
        # flag; a longer one copies the weights K-major once where BLAS multiplies
        # that faster (K_MAJOR_COPY). W_hh^T comes prepared (the kernels do not
        # read it when packed).
        trans = T < PREPARE_MIN_T or not K_MAJOR_COPY
        w_ih_t = w_ih if trans else memo(params, "w_ih^T", lambda: np.ascontiguousarray(w_ih.T))
        w_hh_t = w_hh if trans else rec.get("w_hh_t", w_hh)
        # the kernels' arguments after x: the weights, then the biases
        operands = (_in(w_ih_t), _in(w_hh_t), _packed(rec, dtype), trans)
        if w_hr is not None:
            w_hr_t = w_hr if trans else memo(params, "w_hr^T",
                                             lambda: np.ascontiguousarray(w_hr.T))
            operands += (_in(w_hr_t),)
        if cell == "gru":
            operands += (_in(_buffers.gru_bias(params)), _in(b_hh[2 * H:]))
        else:
            operands += (_in(_buffers.bias_sum(params)),)
        self.operands = operands
        keep_gates = training and cell in ("lstm", "gru")
        self.steps = T if keep_gates else _buffers.chunk(T, B, GH)
        self.all_steps = _lengths(None, T, B)       # the lengths when none are given
        # the state buffers' slots and where the call's arrays come from, decided once
        self.n_slots, self.first, self.last, self.new = _buffers.forward_buffers(
            T, B, H, GH, self.steps, dtype, training, reverse)

    def __call__(self, x, state0, lengths, y=None):
        cell, dtype, T, B, I, H, GH = (self.cell, self.dtype, self.T, self.B, self.I, self.H,
                                       self.GH)
        reverse, training, chunk = self.reverse, self.training, self.steps
        new, n_slots, first, last = self.new, self.n_slots, self.first, self.last
        hs = new((n_slots, B, H), dtype)
        hs[first] = state0[0]
        y = new((T, B, H), dtype) if y is None else y
        y_out = _steps(y, "y", True)
        gates = new((chunk, B, GH), dtype)
        lens = self.all_steps if lengths is None else _in(lengths)
        head = (_in(x), *self.operands, lens)
        data = None
        if cell == "lstm":
            HC = GH // 4                # the size of c
            cs = new((n_slots, B, HC), dtype)
            cs[first] = state0[1]
            gh = _out(np.empty((B, GH), dtype))
            if self.w_hr is not None:
                m = new((T if training else 1, B, HC), dtype)
                _k.lstm_projected_forward(*head, T, B, I, HC, H, reverse, chunk, _out(gates),
                                          gh, _out(hs), _out(cs), n_slots, _out(m), training,
                                          *y_out)
            else:
                _k.lstm_forward(*head, T, B, I, H, reverse, chunk, _out(gates), gh, _out(hs),
                                _out(cs), n_slots, *y_out)
            state_n = (_buffers.final_state(hs, last, training),
                       _buffers.final_state(cs, last, training))
            if training:
                data = dict(gates=gates, hs=hs, cs=cs)
                if self.w_hr is not None:
                    data.update(w_hr=self.w_hr, m=m)
        elif cell == "gru":
            ghn = new((T if training else 0, B, H), dtype)
            _k.gru_forward(*head, T, B, I, H, reverse, chunk, _out(gates),
                           _out(np.empty((B, GH), dtype)), _out(ghn), training, _out(hs),
                           n_slots, *y_out)
            state_n = (_buffers.final_state(hs, last, training),)
            if training:
                data = dict(gates=gates, ghn=ghn, hs=hs)
        else:
            _k.rnn_forward(*head, T, B, I, H, reverse, cell == "rnn_relu", chunk, _out(gates),
                           _out(hs), n_slots, *y_out)
            state_n = (_buffers.final_state(hs, last, training),)
            if training:
                data = dict(hs=hs)
        if training:
            data.update(x=x, w_ih=self.w_ih, w_hh=self.w_hh, lengths=lengths, reverse=reverse)
        return y, state_n, data


def backward(cell, data, dy, dstate_n, prepared=None, grad_parts=1):
    """The backend interface's backward; ``prepared`` as in ``forward``, from
    ``prepare_backward``; ``grad_parts``: as ``gradient_parts()`` returns, the
    GEMMs after the time loop in that many parts on fastrnn's threads."""
    x, w_ih, w_hh = data["x"], data["w_ih"], data["w_hh"]
    lengths, reverse = data["lengths"], data["reverse"]
    T, B, I = x.shape
    GH, H = w_hh.shape
    dtype = x.dtype
    dstate, dg, grads = _buffers.backward_outputs(cell, x, w_ih, w_hh, dstate_n)
    dx, dw_ih, dw_hh, db_ih, db_hh = grads
    rec = prepare_backward(cell, dtype, T, B, w_hh) if prepared is None else prepared
    has_dy = dy is not None
    # a part of a split batch reads its rows of the whole batch's dy in place
    dy_in = _steps(dy, "dy", False) if has_dy else (_in(np.empty(0, dtype)), 0)
    head = (_in(x), _in(w_ih), _in(w_hh), _packed(rec, dtype))
    tail = (dy_in[0], has_dy, dy_in[1], _lengths(lengths, T, B), T, B, I, H, reverse)
    grads = tuple(_out(a) for a in (dx, dw_ih, dw_hh, db_ih, db_hh))
    # the turned-around weight gradients' scratch (empty when none turns around),
    # one for each part of the GEMMs after the loop
    scratch = _k.wgrad_scratch_size(T * B, GH, (I, H))
    dw_t = _buffers.empty((scratch * grad_parts,), dtype)
    extra = ()                      # dW_hr with a projection
    if cell == "lstm" and "w_hr" in data:
        HC = GH // 4
        w_hr = data["w_hr"]
        dw_hr = np.empty_like(w_hr)
        _k.lstm_projected_backward(*head, _in(w_hr), _in(data["gates"]), _in(data["hs"]),
                                   _in(data["cs"]), _in(data["m"]), *tail[:4],
                                   T, B, I, HC, H, reverse, _out(dstate[0]), _out(dstate[1]),
                                   _out(dg), _out(_buffers.empty((T, B, H), dtype)),
                                   _out(np.empty((B, HC), dtype)), *grads, _out(dw_hr), dw_t,
                                   grad_parts)
        dg_h, extra = dg, (dw_hr,)
    elif cell == "lstm":
        _k.lstm_backward(*head, _in(data["gates"]), _in(data["hs"]), _in(data["cs"]), *tail,
                         _out(dstate[0]), _out(dstate[1]), _out(dg), *grads, dw_t, grad_parts)
        dg_h = dg
    elif cell == "gru":
        dg_h = _buffers.empty((T, B, GH), dtype)
        _k.gru_backward(*head, _in(data["gates"]), _in(data["ghn"]), _in(data["hs"]), *tail,
                        _out(dstate[0]), _out(dg), _out(dg_h), *grads, dw_t, grad_parts)
    else:
        _k.rnn_backward(*head, _in(data["hs"]), *tail, cell == "rnn_relu",
                        _out(dstate[0]), _out(dg), *grads, dw_t, grad_parts)
        dg_h = dg
    if grad_parts > 1:
        # the kernel left the GEMMs after its loop to these parts (one BLAS
        # thread each, fastrnn's threads releasing the GIL in the kernel)
        h_in = _in(data["hs"])[B * H if reverse else 0:]
        args = (_in(dg), _in(dg_h), _in(x), h_in, _in(w_ih), T * B, I, H, GH, *grads)

        def part(k):
            _k.gradient_part(*args, dw_t[k * scratch:(k + 1) * scratch], k, grad_parts)
        _parallel.run_parts(part, grad_parts)
    return dx, tuple(dstate), (dw_ih, dw_hh, db_ih, db_hh) + extra
