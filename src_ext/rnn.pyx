# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Fused vanilla RNN forward and BPTT: h' = act(W_ih x + b_ih + W_hh h + b_hh).

Backward needs only the states themselves (act' is a function of act's
output), so training keeps the state slots and nothing else.
"""
from cython cimport floating
from cython.parallel cimport parallel
from _activations cimport tanh_, one_minus_square
from _recurrent cimport Recurrent, recurrent, recurrent_product, check_packed
from _rnn_common cimport (time_at, slot_in, slot_out, is_valid, step_gates, carry_row,
                          zero_row, gradients_on_team, step_stride, Pipeline,
                          projects_ahead, forward_pipeline, pipeline_role, step_finished,
                          backward_gradients, runs_the_gradients, backward_pipeline,
                          fr_barrier, fr_barrier_init, fr_barrier_wait, fr_team_spread)
from _units cimport part_start, part_gates, fr_team_size, fr_team_rank


cdef inline void fused_rows(const floating* p, const floating* gh, const floating* h_in,
                            floating* h_out, floating* yt, const Py_ssize_t* lengths,
                            Py_ssize_t t, Py_ssize_t B, Py_ssize_t H, Py_ssize_t u0,
                            Py_ssize_t u1, bint relu) noexcept nogil:
    """One step's activation for units [u0, u1) of every row: act(p + gh), or
    act(p) where ``gh`` is NULL (p holds the recurrent product already), to
    h_out and yt; padded rows pass h through and output zeros."""
    cdef Py_ssize_t b, j
    cdef floating v, h_
    for b in range(B):
        if not is_valid(lengths, b, t):
            carry_row(h_in + b * H + u0, h_out + b * H + u0, u1 - u0)
            zero_row(yt + b * H + u0, u1 - u0)
            continue
        for j in range(u0, u1):
            v = p[b * H + j]
            if gh != NULL:
                v = v + gh[b * H + j]
            if relu:
                # written so that NaN passes through, as np.maximum does
                h_ = 0 if v < 0 else v
            else:
                h_ = tanh_(v)
            h_out[b * H + j] = h_
            yt[b * H + j] = h_


cdef void rnn_forward_kernel(
        const floating* x,          # IN    (T, B, I)
        const floating* w_ih,       # IN    (H, I)
        const float* packed_ih,     # IN    W_ih^T's panels (I, H), or NULL: BLAS
        const Recurrent* rec,       # IN    W_hh^T (H, H)
        const floating* bias,       # IN    (H,) b_ih + b_hh
        const Py_ssize_t* lengths,  # IN    (B,) or NULL
        Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
        bint reverse, bint relu,
        Py_ssize_t chunk,           # steps projected per input GEMM
        floating* pre,              # SCRATCH (chunk, B, H) pre-activations
        floating* hs,               # INOUT state slots (see _rnn_common), h0 in the first
        Py_ssize_t n_slots,         # T+1 keeps every state (training), 2 alternates
        floating* y,                # OUT   (T, B, H), y_step apart
        Py_ssize_t y_step,          # elements between y's steps (see step_stride)
        int proj_parts,             # the input projections in parts on a team
        int n_team,                 #   of n_team threads (see project_on_team)
        Pipeline* pipe,             # or the projections ahead of the loop, or NULL
) noexcept nogil:
    cdef Py_ssize_t s, t
    cdef floating *p
    cdef floating *h_in
    if projects_ahead(pipe, x, w_ih, packed_ih, bias, pre, T, B, I, H, reverse):
        return
    for s in range(T):
        t = time_at(s, T, reverse)
        p = step_gates(x, w_ih, packed_ih, bias, pre, s, T, B, I, H, chunk, reverse, proj_parts,
                       n_team, pipe)
        h_in = hs + slot_in(t, reverse) % n_slots * B * H
        recurrent_product(rec, B, h_in, 1, p, s)
        fused_rows(p, <floating*> NULL, h_in, hs + slot_out(t, reverse) % n_slots * B * H,
                   y + t * y_step, lengths, t, B, H, 0, H, relu)


cdef void rnn_forward_units(
        const float* x, const float* w_ih, const float* w_hh, const float* bias,
        const Py_ssize_t* lengths, Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
        bint reverse, bint relu, Py_ssize_t chunk, float* pre, float* gh, float* hs,
        Py_ssize_t n_slots, float* y, Py_ssize_t y_step, int n_parts,
        fr_barrier* bar) noexcept nogil:
    """The forward of an inference call too short to pack W_hh, with the
    hidden units split into ``n_parts`` parts across the calling OpenMP team,
    as ``lstm_forward_units`` without panels: a part projects its columns and
    multiplies by its rows of W_hh (``part_gates``, the product to ``gh``
    (B, H)), then activates them; the team meets at a barrier after every
    step. A team of one runs on the calling thread."""
    cdef int rank = fr_team_rank(), size = fr_team_size(), part
    cdef Py_ssize_t s, t, u0, u1
    cdef float* p
    cdef float* h_in
    for s in range(T):
        t = time_at(s, T, reverse)
        h_in = hs + slot_in(t, reverse) % n_slots * B * H
        part = rank
        while part < n_parts:
            u0 = part_start(H, part, n_parts)
            u1 = part_start(H, part + 1, n_parts)
            p = part_gates(x, w_ih, w_hh, NULL, bias, NULL, h_in, s, T, B, I, H, 1, reverse,
                           chunk, pre, gh, u0, u1)
            fused_rows(p, gh, h_in, hs + slot_out(t, reverse) % n_slots * B * H,
                       y + t * y_step, lengths, t, B, H, u0, u1, relu)
            part += size
        fr_barrier_wait(bar)


cdef void rnn_backward_kernel(
        const floating* hs,         # IN    (T+1, B, H) state slots
        const Recurrent* rec,       # IN    W_hh (H, H)
        const floating* dy,         # IN    (T, B, H), dy_step apart, or NULL
        Py_ssize_t dy_step,         # elements between dy's steps (see step_stride)
        const Py_ssize_t* lengths,  # IN    (B,) or NULL
        Py_ssize_t T, Py_ssize_t B, Py_ssize_t H,
        bint reverse, bint relu,
        floating* dh,               # INOUT (B, H) dh_n in, dh0 out
        floating* dg,               # OUT   (T, B, H) gradient of the pre-activations
        Pipeline* pipe,             # the gradients behind the loop, or NULL
) noexcept nogil:
    cdef Py_ssize_t s, t, b, j
    cdef const floating *h_out
    cdef floating *dgt
    cdef floating dh_, h_
    for s in range(T):
        t = time_at(T - 1 - s, T, reverse)   # the forward's steps, last first
        dgt = dg + t * B * H
        h_out = hs + slot_out(t, reverse) * B * H
        for b in range(B):
            if not is_valid(lengths, b, t):
                # padding passed the state through: dh passes back unchanged
                zero_row(dgt + b * H, H)
                continue
            for j in range(H):
                dh_ = dh[b * H + j]
                if dy != NULL:
                    dh_ = dh_ + dy[t * dy_step + b * H + j]
                h_ = h_out[b * H + j]
                if relu:
                    dgt[b * H + j] = dh_ if h_ > 0 else 0
                else:
                    dgt[b * H + j] = dh_ * one_minus_square(h_)
                dh[b * H + j] = 0        # h reaches the past only through W_hh
        recurrent_product(rec, B, dgt, 1, dh, s)
        step_finished(pipe, s, T)


def forward(const floating[:, :, ::1] x,
            const floating[:, ::1] w_ih,
            const floating[:, ::1] w_hh,
            const floating[::1] bias,
            const Py_ssize_t[::1] lengths,
            bint reverse,
            bint relu,
            floating[:, :, ::1] pre,
            floating[:, :, ::1] hs,
            floating[:, :, :] y,             # rows contiguous (see step_stride)
            float[::1] packed=None,
            int n_threads=1,
            const floating[:, ::1] w_hh_t=None,
            int proj_parts=1,
            int n_team=1,
            float[::1] packed_ih=None,
            Py_ssize_t pipe_chunk=0,
            int unit_parts=0,
            floating[:, ::1] gh=None,
            bint spin_barrier=True):
    """Run the RNN over x. See ``fastrnn._cython_backend`` for the buffers.

    ``proj_parts``, ``n_team``: the input projections in that many column
    parts on a team of ``n_team`` threads (``project_on_team``);
    ``packed_ih``: through W_ih^T's panels, as in ``lstm.forward``;
    ``pipe_chunk`` > 0: instead, chunks of that many steps projected ahead
    of the time loop, as in ``lstm.forward``.

    ``unit_parts`` > 0 (float32, no panels, H a multiple of the panel width,
    ``gh`` (B, H) scratch): split the hidden units into that many parts run
    by a team of ``n_team`` threads, a barrier per step
    (``rnn_forward_units``), as ``lstm.forward`` does for a call too short to
    pack W_hh; ``spin_barrier`` as there."""
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], I = x.shape[2], H = hs.shape[2]
    cdef const Py_ssize_t* lens = NULL if lengths is None else &lengths[0]
    cdef float* packed_ = check_packed(packed, H, H)
    cdef float* packed_ih_ = check_packed(packed_ih, I, H, "packed_ih",
                                          floating is double)
    cdef const floating* w_hh_t_ = NULL if w_hh_t is None else &w_hh_t[0, 0]
    cdef Py_ssize_t y_step = step_stride(y, "y", T, B, H)
    cdef Recurrent rec
    cdef fr_barrier bar             # the unit split's team meets here every step
    cdef Pipeline pipe
    cdef Pipeline* pipe_ = forward_pipeline(&pipe, pipe_chunk, pre.shape[0], T, n_team, 0)
    cdef Py_ssize_t chunk = pre.shape[0] if pipe_ == NULL else pipe_chunk
    if unit_parts > 0:
        if floating is not float or packed_ != NULL or packed_ih_ != NULL or pipe_ != NULL \
                or w_hh_t_ != NULL or n_team < 1 or gh is None \
                or gh.shape[0] != B or gh.shape[1] != H:
            raise ValueError(f"unit_parts needs float32, no panels, no pipeline, "
                             f"n_team >= 1 and gh ({B}, {H}) scratch")
        if floating is float:
            fr_barrier_init(&bar, spin_barrier)
            with nogil:
                # a team of one starts no OpenMP region (_parallel.team_size)
                if n_team > 1:
                    with parallel(num_threads=n_team):
                        fr_team_spread()
                        rnn_forward_units(&x[0, 0, 0], &w_ih[0, 0], &w_hh[0, 0], &bias[0], lens,
                                          T, B, I, H, reverse, relu, chunk, &pre[0, 0, 0],
                                          &gh[0, 0], &hs[0, 0, 0], hs.shape[0], &y[0, 0, 0],
                                          y_step, unit_parts, &bar)
                else:
                    rnn_forward_units(&x[0, 0, 0], &w_ih[0, 0], &w_hh[0, 0], &bias[0], lens, T,
                                      B, I, H, reverse, relu, chunk, &pre[0, 0, 0], &gh[0, 0],
                                      &hs[0, 0, 0], hs.shape[0], &y[0, 0, 0], y_step,
                                      unit_parts, &bar)
        return
    with nogil:
        if w_hh_t_ != NULL:
            rec = recurrent(w_hh_t_, False, H, H, <float*> NULL, 1)
        else:
            rec = recurrent(&w_hh[0, 0], True, H, H, packed_, n_threads)
        if pipe_ != NULL and pipe_.helper:
            with parallel(num_threads=2):
                fr_team_spread()
                rnn_forward_kernel(&x[0, 0, 0], &w_ih[0, 0], packed_ih_, &rec, &bias[0], lens,
                                   T, B, I, H, reverse, relu, chunk, &pre[0, 0, 0],
                                   &hs[0, 0, 0], hs.shape[0], &y[0, 0, 0], y_step, 1, 1, pipe_)
        else:
            rnn_forward_kernel(&x[0, 0, 0], &w_ih[0, 0], packed_ih_, &rec, &bias[0], lens,
                               T, B, I, H, reverse, relu, chunk, &pre[0, 0, 0],
                               &hs[0, 0, 0], hs.shape[0], &y[0, 0, 0], y_step, proj_parts,
                               n_team, pipe_)


def backward(const floating[:, :, ::1] x,
             const floating[:, ::1] w_ih,
             const floating[:, ::1] w_hh,
             const floating[:, :, ::1] hs,
             const floating[:, :, :] dy,       # rows contiguous (see step_stride)
             const Py_ssize_t[::1] lengths,
             bint reverse,
             bint relu,
             floating[:, ::1] dh,
             floating[:, :, ::1] dg,
             floating[:, :, ::1] dx,
             floating[:, ::1] dw_ih,
             floating[:, ::1] dw_hh,
             floating[::1] db_ih,
             floating[::1] db_hh,
             float[::1] packed=None,
             int n_threads=1,
             int grad_parts=1,
             Py_ssize_t wgrad_tiles_max_n=0,
             int n_team=1,
             Py_ssize_t grad_chunk=0):
    """BPTT through a training forward; dh holds dh_n on entry, dh0 on exit.

    ``grad_parts``, ``wgrad_tiles_max_n``, ``n_team``, ``grad_chunk``: as in
    ``lstm.backward``."""
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], I = x.shape[2], H = dh.shape[1]
    cdef const Py_ssize_t* lens = NULL if lengths is None else &lengths[0]
    cdef const floating* dy_ = NULL if dy is None else &dy[0, 0, 0]
    cdef Py_ssize_t dy_step = 0 if dy is None else step_stride(dy, "dy", T, B, H)
    cdef float* packed_ = check_packed(packed, H, H)
    cdef Recurrent rec
    cdef Pipeline pipe
    cdef Pipeline* pipe_ = backward_pipeline(&pipe, grad_chunk, T, n_team, 0)
    cdef bint behind = pipe_ != NULL and pipe_.helper     # a second thread, beside the loop
    cdef int role
    with nogil:
        rec = recurrent(&w_hh[0, 0], False, H, H, packed_, n_threads)
        if behind:
            with parallel(num_threads=2):
                fr_team_spread()
                role = pipeline_role(pipe_)
                if role == 0:
                    rnn_backward_kernel(&hs[0, 0, 0], &rec, dy_, dy_step, lens, T, B, H,
                                        reverse, relu, &dh[0, 0], &dg[0, 0, 0], pipe_)
                if runs_the_gradients(pipe_, role):
                    backward_gradients(pipe_, &dg[0, 0, 0], &dg[0, 0, 0], &x[0, 0, 0],
                                       &hs[1 if reverse else 0, 0, 0], &w_ih[0, 0], T, B, I,
                                       H, H, reverse, &dx[0, 0, 0], &dw_ih[0, 0],
                                       &dw_hh[0, 0], &db_ih[0], &db_hh[0], 1, 1,
                                       wgrad_tiles_max_n)
        else:
            rnn_backward_kernel(&hs[0, 0, 0], &rec, dy_, dy_step, lens, T, B, H, reverse, relu,
                                &dh[0, 0], &dg[0, 0, 0], pipe_)
        if not behind:
            backward_gradients(pipe_, &dg[0, 0, 0], &dg[0, 0, 0], &x[0, 0, 0],
                               &hs[1 if reverse else 0, 0, 0], &w_ih[0, 0], T, B, I, H, H,
                               reverse, &dx[0, 0, 0], &dw_ih[0, 0], &dw_hh[0, 0], &db_ih[0],
                               &db_hh[0], grad_parts, n_team, wgrad_tiles_max_n)
