# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Fused GRU forward and BPTT (gate order r, z, n; reset after W_hn h, as PyTorch).

The reset gate multiplies (W_hn h + b_hn), so the recurrent product cannot be
accumulated into the input projection as for the LSTM: each step writes it to
a (B, 3H) scratch with beta = 0 and the fused pass combines the two. b_hr and
b_hz are folded into the input projection's bias; only b_hn stays apart.
"""
from cython cimport floating
from cython.parallel cimport parallel
from _activations cimport sigmoid, tanh_, one_minus, one_minus_square
from _recurrent cimport Recurrent, recurrent, recurrent_product, check_packed, FR_PANEL
from _rnn_common cimport (time_at, slot_in, slot_out, is_valid, step_gates, carry_row,
                          Pipeline, projects_ahead, forward_pipeline,
                          pipeline_role, step_finished, backward_gradients, runs_the_gradients,
                          backward_pipeline,
                          zero_row, gradients_on_team, step_stride, fr_barrier,
                          fr_barrier_init, fr_barrier_wait, fr_team_spread)
from _units cimport (part_start, part_gates, parts_dh_product, pack_own_parts,
                     fr_team_size, fr_team_rank)


cdef inline void fused_rows(floating* g, const floating* gh, const floating* b_hn,
                            const floating* h_in, floating* h_out, floating* yt,
                            floating* ghn_t, const Py_ssize_t* lengths, Py_ssize_t t,
                            Py_ssize_t B, Py_ssize_t H, Py_ssize_t u0,
                            Py_ssize_t u1) noexcept nogil:
    """One step's fused pass for units [u0, u1) of every row: g (input part)
    and gh (recurrent part) into the activated r, z, n in g, W_hn h + b_hn to
    ``ghn_t`` (B, H) unless NULL, h' to h_out and yt; padded rows pass h
    through and output zeros."""
    cdef Py_ssize_t G = 3 * H, b, j
    cdef floating r_, z_, n_, hn_, h_
    for b in range(B):
        if not is_valid(lengths, b, t):
            carry_row(h_in + b * H + u0, h_out + b * H + u0, u1 - u0)
            zero_row(yt + b * H + u0, u1 - u0)
            continue
        for j in range(u0, u1):
            r_ = sigmoid(g[b * G + j] + gh[b * G + j])
            z_ = sigmoid(g[b * G + H + j] + gh[b * G + H + j])
            hn_ = gh[b * G + 2 * H + j] + b_hn[j]
            n_ = tanh_(g[b * G + 2 * H + j] + r_ * hn_)
            g[b * G + j] = r_
            g[b * G + H + j] = z_
            g[b * G + 2 * H + j] = n_
            if ghn_t != NULL:
                ghn_t[b * H + j] = hn_
            h_ = one_minus(z_) * n_ + z_ * h_in[b * H + j]
            h_out[b * H + j] = h_
            yt[b * H + j] = h_


cdef void gru_forward_kernel(
        const floating* x,          # IN    (T, B, I)
        const floating* w_ih,       # IN    (3H, I)
        const float* packed_ih,     # IN    W_ih^T's panels (I, 3H), or NULL: BLAS
        const Recurrent* rec,       # IN    W_hh^T (H, 3H)
        const floating* bias,       # IN    (3H,) b_ih + (b_hr, b_hz, 0)
        const floating* b_hn,       # IN    (H,)
        const Py_ssize_t* lengths,  # IN    (B,) or NULL
        Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
        bint reverse,
        Py_ssize_t chunk,           # steps projected per input GEMM
        floating* gates,            # OUT   (chunk, B, 3H) activated r, z, n
        floating* gh,               # SCRATCH (B, 3H) h @ W_hh^T
        floating* ghn,              # OUT   (T, B, H) W_hn h + b_hn, or NULL (inference)
        floating* hs,               # INOUT state slots (see _rnn_common), h0 in the first
        Py_ssize_t n_slots,         # T+1 keeps every state (training), 2 alternates
        floating* y,                # OUT   (T, B, H), y_step apart
        Py_ssize_t y_step,          # elements between y's steps (see step_stride)
        int proj_parts,             # the input projections in parts on a team
        int n_team,                 #   of n_team threads (see project_on_team)
        Pipeline* pipe,             # or the projections ahead of the loop, or NULL
) noexcept nogil:
    cdef Py_ssize_t G = 3 * H
    cdef Py_ssize_t s, t
    cdef floating *g
    cdef floating *h_in
    cdef floating *h_out
    cdef floating *yt
    if projects_ahead(pipe, x, w_ih, packed_ih, bias, gates, T, B, I, G, reverse):
        return
    for s in range(T):
        t = time_at(s, T, reverse)
        g = step_gates(x, w_ih, packed_ih, bias, gates, s, T, B, I, G, chunk, reverse, proj_parts,
                       n_team, pipe)
        h_in = hs + slot_in(t, reverse) % n_slots * B * H
        h_out = hs + slot_out(t, reverse) % n_slots * B * H
        yt = y + t * y_step
        recurrent_product(rec, B, h_in, 0, gh, s)
        fused_rows(g, gh, b_hn, h_in, h_out, yt, NULL if ghn == NULL else ghn + t * B * H,
                   lengths, t, B, H, 0, H)


cdef inline void gru_units_step(
        const float* x, const float* w_ih, const float* w_hh, const float* packed,
        const float* bias,
        const float* packed_ih,
        const float* b_hn, const Py_ssize_t* lengths, Py_ssize_t s, Py_ssize_t T,
        Py_ssize_t B, Py_ssize_t I, Py_ssize_t H, bint reverse, Py_ssize_t chunk,
        float* gates, float* gh, float* ghn, float* hs, Py_ssize_t n_slots, float* y,
        Py_ssize_t y_step, Py_ssize_t u0, Py_ssize_t u1) noexcept nogil:
    """Step s of a forward for units [u0, u1) of every row (``part_gates``,
    then those units' fused pass)."""
    cdef Py_ssize_t t = time_at(s, T, reverse)
    cdef float* h_in = hs + slot_in(t, reverse) % n_slots * B * H
    cdef float* h_out = hs + slot_out(t, reverse) % n_slots * B * H
    cdef float* yt = y + t * y_step
    cdef float* g = part_gates(x, w_ih, w_hh, packed, bias, packed_ih, h_in, s, T, B, I, H, 3,
                               reverse, chunk, gates, gh, u0, u1)
    fused_rows(g, gh, b_hn, h_in, h_out, yt, NULL if ghn == NULL else ghn + t * B * H,
               lengths, t, B, H, u0, u1)


cdef void gru_forward_units(
        const float* x, const float* w_ih, const float* w_hh, float* packed, bint pack_here,
        const float* bias, float* packed_ih, const float* b_hn, const Py_ssize_t* lengths,
        Py_ssize_t T, Py_ssize_t B,
        Py_ssize_t I, Py_ssize_t H, bint reverse, Py_ssize_t chunk, float* gates,
        float* gh, float* ghn, float* hs, Py_ssize_t n_slots, float* y, Py_ssize_t y_step,
        int n_parts, fr_barrier* bar) noexcept nogil:
    """The forward with the hidden units split into ``n_parts`` parts across
    the calling OpenMP team, as ``lstm_forward_units`` (``pack_here``,
    ``packed`` NULL, ``packed_ih`` too); ``ghn`` (T, B, H) in training, else
    NULL."""
    cdef int rank = fr_team_rank(), size = fr_team_size(), part
    cdef Py_ssize_t s
    if pack_here:
        pack_own_parts(w_hh, True, H, H, 3, packed, n_parts)
        if packed_ih != NULL:
            pack_own_parts(w_ih, True, I, H, 3, packed_ih, n_parts)
    for s in range(T):
        part = rank
        while part < n_parts:
            gru_units_step(x, w_ih, w_hh, packed, bias, packed_ih, b_hn, lengths, s, T, B, I,
                           H, reverse, chunk, gates, gh, ghn, hs, n_slots, y, y_step,
                           part_start(H, part, n_parts),
                           part_start(H, part + 1, n_parts))
            part += size
        fr_barrier_wait(bar)


cdef inline void backward_rows(const floating* gt, const floating* ghn_t,
                               const floating* h_in, const floating* dyt, floating* dh,
                               floating* dxt, floating* dht, const Py_ssize_t* lengths,
                               Py_ssize_t t, Py_ssize_t B, Py_ssize_t H, Py_ssize_t u0,
                               Py_ssize_t u1) noexcept nogil:
    """One step's fused backward pass for units [u0, u1) of every row: dh
    (+ dy_t, unless ``dyt`` is NULL) into the gradients of the input-side
    (dxt) and recurrent-side (dht) pre-activations, dh to its direct path
    dh * z (the product adds the rest). Padded rows pass dh back unchanged and
    get zero gradients."""
    cdef Py_ssize_t G = 3 * H, b, j, k
    cdef floating r_, z_, n_, dh_, dn, dr, dz
    for b in range(B):
        if not is_valid(lengths, b, t):
            for k in range(3):
                zero_row(dxt + b * G + k * H + u0, u1 - u0)
                zero_row(dht + b * G + k * H + u0, u1 - u0)
            continue
        for j in range(u0, u1):
            dh_ = dh[b * H + j]
            if dyt != NULL:
                dh_ = dh_ + dyt[b * H + j]
            r_ = gt[b * G + j]
            z_ = gt[b * G + H + j]
            n_ = gt[b * G + 2 * H + j]
            dn = dh_ * one_minus(z_) * one_minus_square(n_)
            dz = dh_ * (h_in[b * H + j] - n_) * z_ * one_minus(z_)
            dr = dn * ghn_t[b * H + j] * r_ * one_minus(r_)
            dxt[b * G + j] = dr
            dxt[b * G + H + j] = dz
            dxt[b * G + 2 * H + j] = dn
            dht[b * G + j] = dr
            dht[b * G + H + j] = dz
            dht[b * G + 2 * H + j] = dn * r_
            dh[b * H + j] = dh_ * z_     # the direct path h' = ... + z*h


cdef void gru_backward_kernel(
        const floating* gates,      # IN    (T, B, 3H) activated r, z, n
        const floating* ghn,        # IN    (T, B, H) W_hn h + b_hn
        const floating* hs,         # IN    (T+1, B, H) state slots
        const Recurrent* rec,       # IN    W_hh (3H, H)
        const floating* dy,         # IN    (T, B, H), dy_step apart, or NULL
        Py_ssize_t dy_step,         # elements between dy's steps (see step_stride)
        const Py_ssize_t* lengths,  # IN    (B,) or NULL
        Py_ssize_t T, Py_ssize_t B, Py_ssize_t H,
        bint reverse,
        floating* dh,               # INOUT (B, H) dh_n in, dh0 out
        floating* dg_x,             # OUT   (T, B, 3H) gradient of the input-side pre-activations
        floating* dg_h,             # OUT   (T, B, 3H) gradient of h @ W_hh^T + b_hh
        Pipeline* pipe,             # the gradients behind the loop, or NULL
) noexcept nogil:
    cdef Py_ssize_t G = 3 * H
    cdef Py_ssize_t s, t
    for s in range(T):
        t = time_at(T - 1 - s, T, reverse)   # the forward's steps, last first
        backward_rows(gates + t * B * G, ghn + t * B * H, hs + slot_in(t, reverse) * B * H,
                      NULL if dy == NULL else dy + t * dy_step, dh, dg_x + t * B * G,
                      dg_h + t * B * G, lengths, t, B, H, 0, H)
        recurrent_product(rec, B, dg_h + t * B * G, 1, dh, s)
        step_finished(pipe, s, T)


cdef void gru_backward_units(
        const float* gates, const float* ghn, const float* hs, const float* w_hh,
        float* packed, const float* dy, Py_ssize_t dy_step, const Py_ssize_t* lengths,
        Py_ssize_t T, Py_ssize_t B, Py_ssize_t H, bint reverse, float* dh, float* dg_x,
        float* dg_h, int n_parts, fr_barrier* bar) noexcept nogil:
    """``gru_backward_kernel`` with the hidden units split into ``n_parts``
    parts across the calling OpenMP team, as ``lstm_backward_units`` (``w_hh``
    too)."""
    cdef int rank = fr_team_rank(), size = fr_team_size(), part
    cdef Py_ssize_t G = 3 * H, s, t
    if w_hh != NULL:
        pack_own_parts(w_hh, False, H, H, 3, packed, n_parts)
    for s in range(T):
        t = time_at(T - 1 - s, T, reverse)
        part = rank
        while part < n_parts:
            backward_rows(gates + t * B * G, ghn + t * B * H, hs + slot_in(t, reverse) * B * H,
                          NULL if dy == NULL else dy + t * dy_step, dh, dg_x + t * B * G,
                          dg_h + t * B * G, lengths, t, B, H, part_start(H, part, n_parts),
                          part_start(H, part + 1, n_parts))
            part += size
        fr_barrier_wait(bar)
        parts_dh_product(dg_h + t * B * G, packed, dh, B, H, 3, s, n_parts)


def forward(const floating[:, :, ::1] x,
            const floating[:, ::1] w_ih,
            const floating[:, ::1] w_hh,
            const floating[::1] bias,
            const floating[::1] b_hn,
            const Py_ssize_t[::1] lengths,
            bint reverse,
            floating[:, :, ::1] gates,
            floating[:, ::1] gh,
            floating[:, :, ::1] ghn,
            floating[:, :, ::1] hs,
            floating[:, :, :] y,             # rows contiguous (see step_stride)
            float[::1] packed=None,
            int n_threads=1,
            const floating[:, ::1] w_hh_t=None,
            int unit_parts=0,
            int n_team=1,
            int proj_parts=1,
            bint pack_here=False,
            bint spin_barrier=True,
            float[::1] packed_ih=None,
            Py_ssize_t pipe_chunk=0):
    """Run the GRU over x; ``ghn`` is None in inference. See ``fastrnn._cython_backend``.

    ``unit_parts``, ``n_team``, ``proj_parts``, ``pack_here``, ``packed_ih``,
    ``spin_barrier``, ``pipe_chunk``: the hidden units split across a thread
    team, or the input projections in parts on it or ahead of the time loop,
    as in ``lstm.forward``.
    """
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], I = x.shape[2], H = hs.shape[2]
    cdef const Py_ssize_t* lens = NULL if lengths is None else &lengths[0]
    cdef floating* ghn_ = NULL if ghn is None else &ghn[0, 0, 0]
    cdef float* packed_ = check_packed(packed, H, 3 * H)
    cdef float* packed_ih_ = check_packed(packed_ih, I, 3 * H, "packed_ih",
                                          floating is double)
    cdef const floating* w_hh_t_ = NULL if w_hh_t is None else &w_hh_t[0, 0]
    cdef Py_ssize_t y_step = step_stride(y, "y", T, B, H)
    cdef Recurrent rec
    cdef fr_barrier bar             # the unit split's team meets here every step
    if pack_here and unit_parts <= 0:
        raise ValueError("pack_here needs unit_parts > 0: only a unit split's team packs")
    cdef Pipeline pipe
    cdef Pipeline* pipe_ = forward_pipeline(&pipe, pipe_chunk, gates.shape[0], T, n_team,
                                            unit_parts)
    cdef Py_ssize_t chunk = gates.shape[0] if pipe_ == NULL else pipe_chunk
    if unit_parts > 0:
        # without panels (a call too short to pack them) the parts multiply by
        # their rows of W_hh itself
        if floating is not float or (pack_here and packed_ == NULL) \
                or (packed_ != NULL and H % FR_PANEL != 0) or n_team < 1:
            raise ValueError(f"unit_parts needs float32, room for the panels with pack_here, "
                             f"H a multiple of {FR_PANEL} with panels and n_team >= 1")
        if floating is float:
            fr_barrier_init(&bar, spin_barrier)
            with nogil:
                # a team of one starts no OpenMP region (_parallel.team_size)
                if n_team > 1:
                    with parallel(num_threads=n_team):
                        fr_team_spread()
                        gru_forward_units(&x[0, 0, 0], &w_ih[0, 0], &w_hh[0, 0], packed_,
                                          pack_here, &bias[0], packed_ih_, &b_hn[0], lens, T,
                                          B, I, H, reverse, gates.shape[0], &gates[0, 0, 0],
                                          &gh[0, 0], ghn_, &hs[0, 0, 0], hs.shape[0],
                                          &y[0, 0, 0], y_step, unit_parts, &bar)
                else:
                    gru_forward_units(&x[0, 0, 0], &w_ih[0, 0], &w_hh[0, 0], packed_, pack_here,
                                      &bias[0], packed_ih_, &b_hn[0], lens, T, B, I, H, reverse,
                                      gates.shape[0], &gates[0, 0, 0], &gh[0, 0], ghn_,
                                      &hs[0, 0, 0], hs.shape[0], &y[0, 0, 0], y_step, unit_parts,
                                      &bar)
        return
    with nogil:
        if w_hh_t_ != NULL:
            rec = recurrent(w_hh_t_, False, H, 3 * H, <float*> NULL, 1)
        else:
            rec = recurrent(&w_hh[0, 0], True, H, 3 * H, packed_, n_threads)
        if pipe_ != NULL and pipe_.helper:
            with parallel(num_threads=2):
                fr_team_spread()
                gru_forward_kernel(&x[0, 0, 0], &w_ih[0, 0], packed_ih_, &rec, &bias[0],
                                   &b_hn[0], lens, T, B, I, H, reverse, chunk, &gates[0, 0, 0],
                                   &gh[0, 0], ghn_, &hs[0, 0, 0], hs.shape[0], &y[0, 0, 0],
                                   y_step, 1, 1, pipe_)
        else:
            gru_forward_kernel(&x[0, 0, 0], &w_ih[0, 0], packed_ih_, &rec, &bias[0], &b_hn[0],
                               lens, T, B, I, H, reverse, chunk, &gates[0, 0, 0],
                               &gh[0, 0], ghn_, &hs[0, 0, 0], hs.shape[0], &y[0, 0, 0], y_step,
                               proj_parts, n_team, pipe_)


def backward(const floating[:, :, ::1] x,
             const floating[:, ::1] w_ih,
             const floating[:, ::1] w_hh,
             const floating[:, :, ::1] gates,
             const floating[:, :, ::1] ghn,
             const floating[:, :, ::1] hs,
             const floating[:, :, :] dy,       # rows contiguous (see step_stride)
             const Py_ssize_t[::1] lengths,
             bint reverse,
             floating[:, ::1] dh,
             floating[:, :, ::1] dg_x,
             floating[:, :, ::1] dg_h,
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
             int unit_parts=0,
             bint pack_here=False,
             bint spin_barrier=True,
             Py_ssize_t grad_chunk=0):
    """BPTT through a training forward; dh holds dh_n on entry, dh0 on exit.

    ``unit_parts``, ``grad_parts``, ``wgrad_tiles_max_n``, ``n_team``,
    ``pack_here``, ``spin_barrier``, ``grad_chunk``: as in ``lstm.backward``."""
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], I = x.shape[2], H = dh.shape[1]
    cdef const Py_ssize_t* lens = NULL if lengths is None else &lengths[0]
    cdef const floating* dy_ = NULL if dy is None else &dy[0, 0, 0]
    cdef Py_ssize_t dy_step = 0 if dy is None else step_stride(dy, "dy", T, B, H)
    cdef float* packed_ = check_packed(packed, 3 * H, H)
    cdef const floating* to_pack = NULL         # pack_here: W_hh, which the team packs
    cdef Recurrent rec
    cdef fr_barrier bar             # the unit split's team meets here every step
    if pack_here and unit_parts <= 0:
        raise ValueError("pack_here needs unit_parts > 0: only a unit split's team packs")
    if unit_parts > 0 and (floating is not float or packed_ == NULL or H % FR_PANEL != 0
                           or n_team < 1):
        raise ValueError(f"unit_parts needs float32 with packed panels, "
                         f"H a multiple of {FR_PANEL} and n_team >= 1")
    if pack_here:
        to_pack = &w_hh[0, 0]
    cdef Pipeline pipe
    cdef Pipeline* pipe_ = backward_pipeline(&pipe, grad_chunk, T, n_team, unit_parts)
    cdef bint behind = pipe_ != NULL and pipe_.helper     # a second thread, beside the loop
    cdef int role
    fr_barrier_init(&bar, spin_barrier)
    with nogil:
        # the loop's op(W_hh) = W_hh (unused by a unit split, which reads its panels)
        rec = recurrent(&w_hh[0, 0], False, 3 * H, H, packed_, n_threads)
        if unit_parts > 0:
            if floating is float:
                # a team of one starts no OpenMP region (_parallel.team_size)
                if n_team > 1:
                    with parallel(num_threads=n_team):
                        fr_team_spread()
                        gru_backward_units(&gates[0, 0, 0], &ghn[0, 0, 0], &hs[0, 0, 0], to_pack,
                                           packed_, dy_, dy_step, lens, T, B, H, reverse,
                                           &dh[0, 0], &dg_x[0, 0, 0], &dg_h[0, 0, 0], unit_parts,
                                           &bar)
                else:
                    gru_backward_units(&gates[0, 0, 0], &ghn[0, 0, 0], &hs[0, 0, 0], to_pack,
                                       packed_, dy_, dy_step, lens, T, B, H, reverse, &dh[0, 0],
                                       &dg_x[0, 0, 0], &dg_h[0, 0, 0], unit_parts, &bar)
        elif behind:
            with parallel(num_threads=2):
                fr_team_spread()
                role = pipeline_role(pipe_)
                if role == 0:
                    gru_backward_kernel(&gates[0, 0, 0], &ghn[0, 0, 0], &hs[0, 0, 0], &rec, dy_,
                                        dy_step, lens, T, B, H, reverse, &dh[0, 0],
                                        &dg_x[0, 0, 0], &dg_h[0, 0, 0], pipe_)
                if runs_the_gradients(pipe_, role):
                    backward_gradients(pipe_, &dg_x[0, 0, 0], &dg_h[0, 0, 0], &x[0, 0, 0],
                                       &hs[1 if reverse else 0, 0, 0], &w_ih[0, 0], T, B, I,
                                       H, 3 * H, reverse, &dx[0, 0, 0], &dw_ih[0, 0],
                                       &dw_hh[0, 0], &db_ih[0], &db_hh[0], 1, 1,
                                       wgrad_tiles_max_n)
        else:
            gru_backward_kernel(&gates[0, 0, 0], &ghn[0, 0, 0], &hs[0, 0, 0], &rec, dy_,
                                dy_step, lens, T, B, H, reverse, &dh[0, 0], &dg_x[0, 0, 0],
                                &dg_h[0, 0, 0], pipe_)
        if not behind:
            backward_gradients(pipe_, &dg_x[0, 0, 0], &dg_h[0, 0, 0], &x[0, 0, 0],
                               &hs[1 if reverse else 0, 0, 0], &w_ih[0, 0], T, B, I, H, 3 * H,
                               reverse, &dx[0, 0, 0], &dw_ih[0, 0], &dw_hh[0, 0], &db_ih[0],
                               &db_hh[0], grad_parts, n_team, wgrad_tiles_max_n)
