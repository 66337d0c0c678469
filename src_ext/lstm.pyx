# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Fused LSTM forward and BPTT (gate order i, f, g, o, as PyTorch).

Forward: one GEMM projects the inputs of many steps at once; each step then
adds h_{t-1} @ W_hh^T into its gate rows (beta = 1) and runs one fused
element-wise pass (activations, state update, output). Backward: one fused
element-wise pass and one GEMM per step, then a few GEMMs over all steps.
"""
from cython cimport floating
from _activations cimport sigmoid, tanh_
from _blas cimport gemm
from _rnn_common cimport (time_at, slot_in, slot_out, is_valid, step_gates, carry_row,
                          zero_row, input_and_weight_gradients)


cdef void lstm_forward_kernel(
        const floating* x,          # IN    (T, B, I)
        const floating* w_ih_t,     # IN    (I, 4H)
        const floating* w_hh_t,     # IN    (H, 4H)
        const floating* bias,       # IN    (4H,)  b_ih + b_hh
        const Py_ssize_t* lengths,  # IN    (B,) or NULL
        Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
        bint reverse,
        Py_ssize_t chunk,           # steps projected per input GEMM
        floating* gates,            # OUT   (chunk, B, 4H) activated i, f, g, o
        floating* hs,               # INOUT state slots (see _rnn_common), h0 in the first
        floating* cs,               # INOUT same for c
        Py_ssize_t state_stride,    # B*H keeps every state, 0 overwrites one slot
        floating* y,                # OUT   (T, B, H)
) noexcept nogil:
    cdef Py_ssize_t G = 4 * H
    cdef Py_ssize_t s, t, b, j
    cdef floating *g
    cdef floating *h_in
    cdef floating *c_in
    cdef floating *h_out
    cdef floating *c_out
    cdef floating *yt
    cdef floating i_, f_, g_, o_, c_
    for s in range(T):
        t = time_at(s, T, reverse)
        g = step_gates(x, w_ih_t, bias, gates, s, T, B, I, G, chunk, reverse)
        h_in = hs + slot_in(t, reverse) * state_stride
        c_in = cs + slot_in(t, reverse) * state_stride
        h_out = hs + slot_out(t, reverse) * state_stride
        c_out = cs + slot_out(t, reverse) * state_stride
        yt = y + t * B * H
        gemm(False, False, <int> B, <int> G, <int> H, <floating> 1, h_in, <int> H,
             w_hh_t, <int> G, <floating> 1, g, <int> G)
        for b in range(B):
            if not is_valid(lengths, b, t):
                carry_row(h_in + b * H, h_out + b * H, H)
                carry_row(c_in + b * H, c_out + b * H, H)
                zero_row(yt + b * H, H)
                continue
            for j in range(H):
                i_ = sigmoid(g[b * G + j])
                f_ = sigmoid(g[b * G + H + j])
                g_ = tanh_(g[b * G + 2 * H + j])
                o_ = sigmoid(g[b * G + 3 * H + j])
                g[b * G + j] = i_
                g[b * G + H + j] = f_
                g[b * G + 2 * H + j] = g_
                g[b * G + 3 * H + j] = o_
                c_ = f_ * c_in[b * H + j] + i_ * g_
                c_out[b * H + j] = c_
                h_out[b * H + j] = o_ * tanh_(c_)
                yt[b * H + j] = h_out[b * H + j]


cdef void lstm_backward_kernel(
        const floating* gates,      # IN    (T, B, 4H) activated i, f, g, o
        const floating* cs,         # IN    (T+1, B, H) cell-state slots
        const floating* w_hh,       # IN    (4H, H)
        const floating* dy,         # IN    (T, B, H) or NULL
        const Py_ssize_t* lengths,  # IN    (B,) or NULL
        Py_ssize_t T, Py_ssize_t B, Py_ssize_t H,
        bint reverse,
        floating* dh,               # INOUT (B, H) dh_n in, dh0 out
        floating* dc,               # INOUT (B, H) dc_n in, dc0 out
        floating* dg,               # OUT   (T, B, 4H) gradient of the pre-activations
) noexcept nogil:
    cdef Py_ssize_t G = 4 * H
    cdef Py_ssize_t s, t, b, j
    cdef const floating *gt
    cdef const floating *c_in
    cdef const floating *c_out
    cdef floating *dgt
    cdef floating i_, f_, g_, o_, tc, dh_, dc_
    for s in range(T):
        t = time_at(T - 1 - s, T, reverse)   # the forward's steps, last first
        gt = gates + t * B * G
        dgt = dg + t * B * G
        c_in = cs + slot_in(t, reverse) * B * H
        c_out = cs + slot_out(t, reverse) * B * H
        for b in range(B):
            if not is_valid(lengths, b, t):
                # padding passed the state through: dh, dc pass back unchanged
                zero_row(dgt + b * G, G)
                continue
            for j in range(H):
                dh_ = dh[b * H + j]
                if dy != NULL:
                    dh_ = dh_ + dy[(t * B + b) * H + j]
                i_ = gt[b * G + j]
                f_ = gt[b * G + H + j]
                g_ = gt[b * G + 2 * H + j]
                o_ = gt[b * G + 3 * H + j]
                tc = tanh_(c_out[b * H + j])    # recomputed rather than stored
                dc_ = dc[b * H + j] + dh_ * o_ * (1 - tc * tc)
                dgt[b * G + j] = dc_ * g_ * i_ * (1 - i_)
                dgt[b * G + H + j] = dc_ * c_in[b * H + j] * f_ * (1 - f_)
                dgt[b * G + 2 * H + j] = dc_ * i_ * (1 - g_ * g_)
                dgt[b * G + 3 * H + j] = dh_ * tc * o_ * (1 - o_)
                dc[b * H + j] = dc_ * f_
                dh[b * H + j] = 0        # h reaches the past only through the gates
        gemm(False, False, <int> B, <int> H, <int> G, <floating> 1, dgt, <int> G,
             w_hh, <int> H, <floating> 1, dh, <int> H)


def forward(const floating[:, :, ::1] x,
            const floating[:, ::1] w_ih_t,
            const floating[:, ::1] w_hh_t,
            const floating[::1] bias,
            const Py_ssize_t[::1] lengths,
            bint reverse,
            floating[:, :, ::1] gates,
            floating[:, :, ::1] hs,
            floating[:, :, ::1] cs,
            floating[:, :, ::1] y):
    """Run the LSTM over x; see ``fastrnn._cython_backend`` for the buffers.

    ``hs``/``cs`` have T+1 slots (training: every state kept) or 1 slot
    (inference); the slot holding h0/c0 must be filled by the caller.
    """
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], I = x.shape[2], H = hs.shape[2]
    cdef Py_ssize_t stride = B * H if hs.shape[0] > 1 else 0
    cdef const Py_ssize_t* lens = NULL if lengths is None else &lengths[0]
    with nogil:
        lstm_forward_kernel(&x[0, 0, 0], &w_ih_t[0, 0], &w_hh_t[0, 0], &bias[0], lens,
                            T, B, I, H, reverse, gates.shape[0], &gates[0, 0, 0],
                            &hs[0, 0, 0], &cs[0, 0, 0], stride, &y[0, 0, 0])


def backward(const floating[:, :, ::1] x,
             const floating[:, ::1] w_ih,
             const floating[:, ::1] w_hh,
             const floating[:, :, ::1] gates,
             const floating[:, :, ::1] hs,
             const floating[:, :, ::1] cs,
             const floating[:, :, ::1] dy,
             const Py_ssize_t[::1] lengths,
             bint reverse,
             floating[:, ::1] dh,
             floating[:, ::1] dc,
             floating[:, :, ::1] dg,
             floating[:, :, ::1] dx,
             floating[:, ::1] dw_ih,
             floating[:, ::1] dw_hh,
             floating[::1] db_ih,
             floating[::1] db_hh):
    """BPTT through a training forward; dh/dc hold dh_n/dc_n on entry, dh0/dc0 on exit."""
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], I = x.shape[2], H = dh.shape[1]
    cdef const Py_ssize_t* lens = NULL if lengths is None else &lengths[0]
    cdef const floating* dy_ = NULL if dy is None else &dy[0, 0, 0]
    with nogil:
        lstm_backward_kernel(&gates[0, 0, 0], &cs[0, 0, 0], &w_hh[0, 0], dy_, lens,
                             T, B, H, reverse, &dh[0, 0], &dc[0, 0], &dg[0, 0, 0])
        input_and_weight_gradients(&dg[0, 0, 0], &dg[0, 0, 0], &x[0, 0, 0],
                                   &hs[1 if reverse else 0, 0, 0], &w_ih[0, 0],
                                   T * B, I, H, 4 * H, &dx[0, 0, 0], &dw_ih[0, 0],
                                   &dw_hh[0, 0], &db_ih[0], &db_hh[0])
