# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Fused LSTM forward and BPTT (gate order i, f, g, o, as PyTorch).

Forward: one GEMM projects the inputs of many steps at once; each step then
writes h_{t-1} @ W_hh^T to a (B, 4H) scratch (beta = 0) and runs one fused
element-wise pass that adds it to the gate rows (activations, state update,
output). Not beta = 1 into the gate rows themselves: those rows were written
by the projection GEMM many steps before and have left L1 and L2, and the
product's read-modify-write of them (64 bytes per row, rows 4G bytes apart)
stalled it; the fused pass reads them in order anyway. C harness (one core,
median of 15): the product plus the add 1.13-1.17x faster through the scratch
at K = 512, the same at K = 256. End to end (old and new modules alternating,
2 threads, two runs of 11 and 15 rounds): LSTM inference small 1.05/1.10x,
medium 1.07x, large 1.09/1.09x; training 0.93-1.06x; long and latency
0.94-1.04x (noise). The sums are the same (projection + product), so the
packed path's results are bit-identical to adding in place.

Backward: one fused element-wise pass and one GEMM per step, then a few GEMMs
over all steps.

Projection (PyTorch's ``proj_size`` P < H; ``w_hr_t`` not NULL): h has P
features, m = o * tanh(c') (B, H) is the fused pass's output, and one more GEMM
per step gives h_t = m_t @ W_hr^T. Backward per step: dm = (dh + dy_t) @ W_hr,
the fused pass with dm in place of dh, then dh_prev = dG @ W_hh; after the loop
dW_hr = sum_t (dh + dy_t)^T m_t is one GEMM over all T*B rows. Without a
projection P = H and the kernels do exactly what they did before.
"""
from cython cimport floating
from cython.parallel cimport parallel
from _activations cimport sigmoid, tanh_, one_minus, one_minus_square
from _blas cimport gemm
from _recurrent cimport Recurrent, recurrent, recurrent_product, check_packed, FR_PANEL
from _rnn_common cimport (time_at, slot_in, slot_out, is_valid, step_gates, carry_row,
                          Pipeline, projects_ahead, forward_pipeline,
                          pipeline_role, step_finished, backward_gradients, runs_the_gradients,
                          backward_pipeline,
                          zero_row, gradients_on_team,
                          weight_gradient, step_stride, fr_barrier, fr_barrier_init,
                          fr_barrier_wait, fr_team_spread)
from _units cimport (part_start, part_gates, parts_dh_product, pack_own_parts,
                     fr_team_size, fr_team_rank)


cdef inline floating cell_unit(floating* g, const floating* gh, const floating* c_in,
                               floating* c_out, Py_ssize_t j, Py_ssize_t H) noexcept nogil:
    """Unit j of one row: activate its four gates g + gh (input and recurrent
    parts) into g, write c' = f*c + i*g to c_out[j], return o * tanh(c')."""
    cdef floating i_ = sigmoid(g[j] + gh[j])
    cdef floating f_ = sigmoid(g[H + j] + gh[H + j])
    cdef floating g_ = tanh_(g[2 * H + j] + gh[2 * H + j])
    cdef floating o_ = sigmoid(g[3 * H + j] + gh[3 * H + j])
    cdef floating c_
    g[j] = i_
    g[H + j] = f_
    g[2 * H + j] = g_
    g[3 * H + j] = o_
    c_ = f_ * c_in[j] + i_ * g_
    c_out[j] = c_
    return o_ * tanh_(c_)


cdef inline floating cell_unit_backward(const floating* g, floating* dg,
                                        floating c_in, floating c_out, floating dh_,
                                        floating dc_, Py_ssize_t j,
                                        Py_ssize_t H) noexcept nogil:
    """Unit j of one row: from dh_ (of o * tanh(c')) and dc_ (of c'), write the
    four gate pre-activation gradients to dg, return the gradient of c."""
    cdef floating i_ = g[j]
    cdef floating f_ = g[H + j]
    cdef floating g_ = g[2 * H + j]
    cdef floating o_ = g[3 * H + j]
    cdef floating tc = tanh_(c_out)    # recomputed rather than stored
    dc_ = dc_ + dh_ * o_ * one_minus_square(tc)
    dg[j] = dc_ * g_ * i_ * one_minus(i_)
    dg[H + j] = dc_ * c_in * f_ * one_minus(f_)
    dg[2 * H + j] = dc_ * i_ * one_minus_square(g_)
    dg[3 * H + j] = dh_ * tc * o_ * one_minus(o_)
    return dc_ * f_


cdef inline void fused_rows(floating* g, const floating* gh, const floating* h_in,
                            const floating* c_in, floating* h_out, floating* c_out,
                            floating* yt, const Py_ssize_t* lengths, Py_ssize_t t,
                            Py_ssize_t B, Py_ssize_t H, Py_ssize_t u0,
                            Py_ssize_t u1) noexcept nogil:
    """One step's fused pass for units [u0, u1) of every row (no projection):
    padded rows pass h and c through and output zeros."""
    cdef Py_ssize_t G = 4 * H, b, j
    cdef floating h_
    for b in range(B):
        if not is_valid(lengths, b, t):
            carry_row(h_in + b * H + u0, h_out + b * H + u0, u1 - u0)
            carry_row(c_in + b * H + u0, c_out + b * H + u0, u1 - u0)
            zero_row(yt + b * H + u0, u1 - u0)
            continue
        for j in range(u0, u1):
            h_ = cell_unit(g + b * G, gh + b * G, c_in + b * H, c_out + b * H, j, H)
            h_out[b * H + j] = h_
            yt[b * H + j] = h_


cdef inline void backward_rows(const floating* gt, floating* dgt, const floating* c_in,
                               const floating* c_out, const floating* dyt, floating* dh,
                               floating* dc, const Py_ssize_t* lengths, Py_ssize_t t,
                               Py_ssize_t B, Py_ssize_t H, Py_ssize_t u0,
                               Py_ssize_t u1) noexcept nogil:
    """One step's fused backward pass for units [u0, u1) of every row (no
    projection): dh (+ dy_t, unless ``dyt`` is NULL) and dc into the gates'
    gradients in dgt, dc to the previous step's; dh restarts at zero (h
    reaches the past only through the gates). Padded rows pass dh and dc back
    unchanged and get zero gate gradients."""
    cdef Py_ssize_t G = 4 * H, b, j, k
    cdef floating dh_
    for b in range(B):
        if not is_valid(lengths, b, t):
            for k in range(4):
                zero_row(dgt + b * G + k * H + u0, u1 - u0)
            continue
        for j in range(u0, u1):
            dh_ = dh[b * H + j]
            if dyt != NULL:
                dh_ = dh_ + dyt[b * H + j]
            dc[b * H + j] = cell_unit_backward(gt + b * G, dgt + b * G, c_in[b * H + j],
                                               c_out[b * H + j], dh_, dc[b * H + j], j, H)
            dh[b * H + j] = 0


cdef void lstm_forward_kernel(
        const floating* x,          # IN    (T, B, I)
        const floating* w_ih,       # IN    (4H, I)
        const float* packed_ih,     # IN    W_ih^T's panels (I, 4H), or NULL: BLAS
        const Recurrent* rec,       # IN    W_hh^T (P, 4H)
        const floating* w_hr,       # IN    (P, H), or NULL: no projection (P = H)
        const floating* bias,       # IN    (4H,)  b_ih + b_hh
        const Py_ssize_t* lengths,  # IN    (B,) or NULL
        Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H, Py_ssize_t P,
        bint reverse,
        Py_ssize_t chunk,           # steps projected per input GEMM
        floating* gates,            # OUT   (chunk, B, 4H) activated i, f, g, o
        floating* gh,               # SCRATCH (B, 4H) h @ W_hh^T
        floating* hs,               # INOUT (B, P) state slots (see _rnn_common), h0 in the first
        floating* cs,               # INOUT (B, H) same for c
        Py_ssize_t n_slots,         # T+1 keeps every state (training), 2 alternates
        floating* m,                # OUT   projection only: (T, B, H) o*tanh(c) if
                                    #       keep_m, else (B, H) scratch
        bint keep_m,
        floating* y,                # OUT   (T, B, P), y_step apart
        Py_ssize_t y_step,          # elements between y's steps (see step_stride)
        int proj_parts,             # the input projections in parts on a team
        int n_team,                 #   of n_team threads (see project_on_team)
        Pipeline* pipe,             # or the projections ahead of the loop, or NULL
) noexcept nogil:
    cdef Py_ssize_t G = 4 * H
    cdef Py_ssize_t s, t, b, j
    cdef floating *g
    cdef floating *h_in
    cdef floating *c_in
    cdef floating *h_out
    cdef floating *c_out
    cdef floating *yt
    cdef floating *mt
    cdef floating h_
    if projects_ahead(pipe, x, w_ih, packed_ih, bias, gates, T, B, I, G, reverse):
        return
    for s in range(T):
        t = time_at(s, T, reverse)
        g = step_gates(x, w_ih, packed_ih, bias, gates, s, T, B, I, G, chunk, reverse, proj_parts,
                       n_team, pipe)
        h_in = hs + slot_in(t, reverse) % n_slots * B * P
        c_in = cs + slot_in(t, reverse) % n_slots * B * H
        h_out = hs + slot_out(t, reverse) % n_slots * B * P
        c_out = cs + slot_out(t, reverse) % n_slots * B * H
        yt = y + t * y_step
        recurrent_product(rec, B, h_in, 0, gh, s)
        if w_hr == NULL:
            fused_rows(g, gh, h_in, c_in, h_out, c_out, yt, lengths, t, B, H, 0, H)
            continue
        # projection: the fused pass writes m_t, one GEMM projects it to y_t
        mt = m + (t * B * H if keep_m else 0)
        for b in range(B):
            if not is_valid(lengths, b, t):
                carry_row(c_in + b * H, c_out + b * H, H)
                zero_row(mt + b * H, H)
                continue
            for j in range(H):
                mt[b * H + j] = cell_unit(g + b * G, gh + b * G, c_in + b * H, c_out + b * H,
                                        j, H)
        gemm(False, True, <int> B, <int> P, <int> H, <floating> 1, mt, <int> H,
             w_hr, <int> H, <floating> 0, yt, <int> P)
        for b in range(B):
            if is_valid(lengths, b, t):
                carry_row(yt + b * P, h_out + b * P, P)
            else:
                carry_row(h_in + b * P, h_out + b * P, P)
                zero_row(yt + b * P, P)


cdef inline void lstm_units_step(
        const float* x, const float* w_ih, const float* w_hh, const float* packed,
        const float* bias,
        const float* packed_ih,
        const Py_ssize_t* lengths, Py_ssize_t s, Py_ssize_t T, Py_ssize_t B,
        Py_ssize_t I, Py_ssize_t H, bint reverse, Py_ssize_t chunk, float* gates,
        float* gh, float* hs, float* cs, Py_ssize_t n_slots, float* y, Py_ssize_t y_step,
        Py_ssize_t u0, Py_ssize_t u1) noexcept nogil:
    """Step s of a forward for units [u0, u1) of every row (``part_gates``,
    then those units' fused pass)."""
    cdef Py_ssize_t t = time_at(s, T, reverse)
    cdef float* h_in = hs + slot_in(t, reverse) % n_slots * B * H
    cdef float* c_in = cs + slot_in(t, reverse) % n_slots * B * H
    cdef float* h_out = hs + slot_out(t, reverse) % n_slots * B * H
    cdef float* c_out = cs + slot_out(t, reverse) % n_slots * B * H
    cdef float* yt = y + t * y_step
    cdef float* g = part_gates(x, w_ih, w_hh, packed, bias, packed_ih, h_in, s, T, B, I, H, 4,
                               reverse, chunk, gates, gh, u0, u1)
    fused_rows(g, gh, h_in, c_in, h_out, c_out, yt, lengths, t, B, H, u0, u1)


cdef void lstm_forward_units(
        const float* x, const float* w_ih, const float* w_hh, float* packed, bint pack_here,
        const float* bias, float* packed_ih, const Py_ssize_t* lengths, Py_ssize_t T,
        Py_ssize_t B, Py_ssize_t I,
        Py_ssize_t H, bint reverse, Py_ssize_t chunk, float* gates, float* gh,
        float* hs, float* cs, Py_ssize_t n_slots, float* y, Py_ssize_t y_step,
        int n_parts, fr_barrier* bar) noexcept nogil:
    """The forward with the hidden units split into ``n_parts``
    parts instead of the batch, run by the calling OpenMP team: thread k takes
    parts k, k + team size, ..., and the team meets at a barrier after every
    step (the next one reads every unit's h). Each core then streams only its
    parts' columns of W_hh^T, for all the rows. Every part is computed the
    same way whichever thread runs it: the bits do not depend on the team's
    size. ``hs``, ``cs``: ``n_slots`` slots, 2 (inference) or T+1 (training,
    with ``gates`` (T, B, 4H): the chunk is the whole sequence). ``pack_here``:
    first pack this thread's panels of ``w_hh``^T into ``packed``, and of
    W_ih^T into ``packed_ih`` if that is not NULL (``pack_own_parts``).
    ``packed`` NULL: the parts multiply by their rows of ``w_hh`` itself
    (``part_gates``; a call too short to pack it).
    A team of one runs on the calling thread, inside no parallel region."""
    cdef int rank = fr_team_rank(), size = fr_team_size(), part
    cdef Py_ssize_t s
    if pack_here:
        pack_own_parts(w_hh, True, H, H, 4, packed, n_parts)
        if packed_ih != NULL:
            pack_own_parts(w_ih, True, I, H, 4, packed_ih, n_parts)
    for s in range(T):
        part = rank
        while part < n_parts:
            lstm_units_step(x, w_ih, w_hh, packed, bias, packed_ih, lengths, s, T, B, I, H,
                            reverse, chunk, gates, gh, hs, cs, n_slots, y, y_step,
                            part_start(H, part, n_parts), part_start(H, part + 1, n_parts))
            part += size
        fr_barrier_wait(bar)


cdef void lstm_backward_kernel(
        const floating* gates,      # IN    (T, B, 4H) activated i, f, g, o
        const floating* cs,         # IN    (T+1, B, H) cell-state slots
        const Recurrent* rec,       # IN    W_hh (4H, P)
        const floating* w_hr,       # IN    (P, H), or NULL: no projection (P = H)
        const floating* dy,         # IN    (T, B, P), dy_step apart, or NULL
        Py_ssize_t dy_step,         # elements between dy's steps (see step_stride)
        const Py_ssize_t* lengths,  # IN    (B,) or NULL
        Py_ssize_t T, Py_ssize_t B, Py_ssize_t H, Py_ssize_t P,
        bint reverse,
        floating* dh,               # INOUT (B, P) dh_n in, dh0 out
        floating* dc,               # INOUT (B, H) dc_n in, dc0 out
        floating* dg,               # OUT   (T, B, 4H) gradient of the pre-activations
        floating* dh_total,         # OUT   projection only: (T, B, P) dh + dy_t, 0 at padding
        floating* dm,               # OUT   projection only: (B, H) scratch
        Pipeline* pipe,             # the gradients behind the loop, or NULL
) noexcept nogil:
    cdef Py_ssize_t G = 4 * H
    cdef Py_ssize_t s, t, b, j
    cdef const floating *gt
    cdef const floating *c_in
    cdef const floating *c_out
    cdef floating *dgt
    cdef floating *dht
    cdef floating dh_
    for s in range(T):
        t = time_at(T - 1 - s, T, reverse)   # the forward's steps, last first
        gt = gates + t * B * G
        dgt = dg + t * B * G
        c_in = cs + slot_in(t, reverse) * B * H
        c_out = cs + slot_out(t, reverse) * B * H
        if w_hr != NULL:
            # h_t = m_t @ W_hr^T: dm = (dh + dy_t) @ W_hr; h reaches the past
            # only through the gates, so dh restarts from the GEMM below
            dht = dh_total + t * B * P
            for b in range(B):
                if not is_valid(lengths, b, t):
                    zero_row(dht + b * P, P)
                    continue
                for j in range(P):
                    dh_ = dh[b * P + j]
                    if dy != NULL:
                        dh_ = dh_ + dy[t * dy_step + b * P + j]
                    dht[b * P + j] = dh_
                    dh[b * P + j] = 0
            gemm(False, False, <int> B, <int> H, <int> P, <floating> 1, dht, <int> P,
                 w_hr, <int> H, <floating> 0, dm, <int> H)
        if w_hr == NULL:
            backward_rows(gt, dgt, c_in, c_out, NULL if dy == NULL else dy + t * dy_step,
                          dh, dc, lengths, t, B, H, 0, H)
        else:
            for b in range(B):
                if not is_valid(lengths, b, t):
                    # padding passed the state through: dh, dc pass back unchanged
                    zero_row(dgt + b * G, G)
                    continue
                for j in range(H):
                    dc[b * H + j] = cell_unit_backward(gt + b * G, dgt + b * G,
                                                       c_in[b * H + j], c_out[b * H + j],
                                                       dm[b * H + j], dc[b * H + j], j, H)
        recurrent_product(rec, B, dgt, 1, dh, s)
        step_finished(pipe, s, T)


cdef void lstm_backward_units(
        const float* gates, const float* cs, const float* w_hh, float* packed, const float* dy,
        Py_ssize_t dy_step, const Py_ssize_t* lengths, Py_ssize_t T, Py_ssize_t B,
        Py_ssize_t H, bint reverse, float* dh, float* dc, float* dg,
        int n_parts, fr_barrier* bar) noexcept nogil:
    """``lstm_backward_kernel`` (no projection, packed W_hh) with the hidden
    units split into ``n_parts`` parts across the calling OpenMP team, as
    ``lstm_forward_units``: each step, a part's fused pass for its units,
    a barrier (the product reads every unit's gate gradients), then its
    columns of dh += dG @ W_hh from its panels. A part's next fused pass reads
    only its own columns of dh and dc, so one barrier a step is enough. The
    per-column sums are those of the whole product: the same bits as
    ``lstm_backward_kernel``. ``w_hh`` not NULL: first pack this thread's
    panels of W_hh into ``packed``."""
    cdef int rank = fr_team_rank(), size = fr_team_size(), part
    cdef Py_ssize_t G = 4 * H, s, t
    if w_hh != NULL:
        pack_own_parts(w_hh, False, H, H, 4, packed, n_parts)
    for s in range(T):
        t = time_at(T - 1 - s, T, reverse)
        part = rank
        while part < n_parts:
            backward_rows(gates + t * B * G, dg + t * B * G, cs + slot_in(t, reverse) * B * H,
                          cs + slot_out(t, reverse) * B * H,
                          NULL if dy == NULL else dy + t * dy_step, dh, dc, lengths, t, B, H,
                          part_start(H, part, n_parts), part_start(H, part + 1, n_parts))
            part += size
        fr_barrier_wait(bar)
        parts_dh_product(dg + t * B * G, packed, dh, B, H, 4, s, n_parts)


def forward(const floating[:, :, ::1] x,
            const floating[:, ::1] w_ih,
            const floating[:, ::1] w_hh,
            const floating[::1] bias,
            const Py_ssize_t[::1] lengths,
            bint reverse,
            floating[:, :, ::1] gates,
            floating[:, ::1] gh,
            floating[:, :, ::1] hs,
            floating[:, :, ::1] cs,
            floating[:, :, :] y,             # rows contiguous (see step_stride)
            const floating[:, ::1] w_hr=None,
            floating[:, :, ::1] m=None,
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
    """Run the LSTM over x; see ``fastrnn._cython_backend`` for the buffers.

    ``hs``/``cs`` have T+1 slots (training: every state kept) or 2 slots
    (inference, alternating); the caller fills the slot the first step reads. With a
    projection, ``w_hr`` is (P, H) and ``m`` has as many slots as ``hs`` less
    one (T or 1). Weights are in PyTorch's layout. ``packed`` (float32 only)
    selects the packed recurrent product: W_hh^T (P, 4H) as packed by
    ``packing.pack(w_hh, True, packed)``.

    ``unit_parts`` > 0 (float32, no projection, H a multiple of the panel
    width): split the hidden units into that many parts run by a team of
    ``n_team`` threads, a barrier per step (``lstm_forward_units``), instead
    of one thread for the whole batch; without ``packed`` (inference too
    short to pack W_hh) each part multiplies by its rows of ``w_hh`` itself.
    Otherwise ``proj_parts``: the input projections in that many column parts
    on the team (``project_on_team``). ``pack_here`` (with ``unit_parts``):
    ``packed`` is only room for the panels, and each thread of the team packs
    the panels its parts read from ``w_hh`` (``pack_own_parts``).
    ``packed_ih`` (float32 only): the input projections through W_ih^T's
    panels (``project_columns``) instead of BLAS, as packed by
    ``packing.pack(w_ih, True, packed_ih)``; with ``pack_here``, room for them
    that the team packs as it does W_hh's. ``spin_barrier``: the team meets
    at src_ext/_team.h's spinning barrier, else at OpenMP's.

    ``pipe_chunk`` > 0 (without ``unit_parts``): the inputs are projected in
    chunks of that many steps, a second thread of the team (``n_team`` > 1)
    running ahead of the time loop (``project_ahead`` in _rnn_common.pxd),
    into ``gates``: every step's rows if it has T (training), else a ring of
    ``gates.shape[0] // pipe_chunk`` chunk slots; ``proj_parts`` is then not
    used.
    """
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], I = x.shape[2], H = cs.shape[2]
    cdef Py_ssize_t P = hs.shape[2]
    cdef const Py_ssize_t* lens = NULL if lengths is None else &lengths[0]
    cdef const floating* w_hr_ = NULL
    cdef floating* m_ = NULL
    cdef float* packed_ = check_packed(packed, P, 4 * H)
    cdef float* packed_ih_ = check_packed(packed_ih, I, 4 * H, "packed_ih",
                                          floating is double)
    cdef const floating* w_hh_t_ = NULL if w_hh_t is None else &w_hh_t[0, 0]
    cdef Py_ssize_t y_step = step_stride(y, "y", T, B, P)
    cdef Recurrent rec
    cdef fr_barrier bar             # the unit split's team meets here every step
    if w_hr is not None:
        if m is None or w_hr.shape[0] != P or w_hr.shape[1] != H:
            raise ValueError("a projection needs w_hr (P, H) and the m buffer")
        w_hr_ = &w_hr[0, 0]
        m_ = &m[0, 0, 0]
    elif P != H:
        raise ValueError("h and c differ in size but there is no projection")
    if gh.shape[0] != B or gh.shape[1] != 4 * H:
        raise ValueError(f"gh must be ({B}, {4 * H}) scratch, got ({gh.shape[0]}, {gh.shape[1]})")
    if pack_here and unit_parts <= 0:
        raise ValueError("pack_here needs unit_parts > 0: only a unit split's team packs")
    cdef Pipeline pipe
    cdef Pipeline* pipe_ = forward_pipeline(&pipe, pipe_chunk, gates.shape[0], T, n_team,
                                            unit_parts)
    cdef Py_ssize_t chunk = gates.shape[0] if pipe_ == NULL else pipe_chunk
    cdef bint keep_m = m is not None and m.shape[0] > 1
    if unit_parts > 0:
        # without panels (a call too short to pack them) the parts multiply by
        # their rows of W_hh itself
        if floating is not float or (pack_here and packed_ == NULL) or w_hr is not None \
                or (packed_ != NULL and H % FR_PANEL != 0) or n_team < 1:
            raise ValueError(f"unit_parts needs float32, room for the panels with pack_here, "
                             f"no projection, H a multiple of {FR_PANEL} with panels and "
                             f"n_team >= 1")
        if floating is float:
            fr_barrier_init(&bar, spin_barrier)
            with nogil:
                # a team of one starts no OpenMP region (_parallel.team_size)
                if n_team > 1:
                    with parallel(num_threads=n_team):
                        fr_team_spread()
                        lstm_forward_units(&x[0, 0, 0], &w_ih[0, 0], &w_hh[0, 0], packed_,
                                           pack_here, &bias[0], packed_ih_, lens, T, B, I, H,
                                           reverse, gates.shape[0], &gates[0, 0, 0], &gh[0, 0],
                                           &hs[0, 0, 0], &cs[0, 0, 0], hs.shape[0],
                                           &y[0, 0, 0], y_step, unit_parts, &bar)
                else:
                    lstm_forward_units(&x[0, 0, 0], &w_ih[0, 0], &w_hh[0, 0], packed_,
                                       pack_here, &bias[0], packed_ih_, lens, T, B, I, H,
                                       reverse, gates.shape[0], &gates[0, 0, 0], &gh[0, 0],
                                       &hs[0, 0, 0], &cs[0, 0, 0], hs.shape[0], &y[0, 0, 0],
                                       y_step, unit_parts, &bar)
        return
    with nogil:
        if w_hh_t_ != NULL:
            rec = recurrent(w_hh_t_, False, P, 4 * H, <float*> NULL, 1)
        else:
            rec = recurrent(&w_hh[0, 0], True, P, 4 * H, packed_, n_threads)
        if pipe_ != NULL and pipe_.helper:
            with parallel(num_threads=2):
                fr_team_spread()
                lstm_forward_kernel(&x[0, 0, 0], &w_ih[0, 0], packed_ih_, &rec, w_hr_, &bias[0],
                                    lens, T, B, I, H, P, reverse, chunk, &gates[0, 0, 0],
                                    &gh[0, 0], &hs[0, 0, 0], &cs[0, 0, 0], hs.shape[0], m_,
                                    keep_m, &y[0, 0, 0], y_step, 1, 1, pipe_)
        else:
            lstm_forward_kernel(&x[0, 0, 0], &w_ih[0, 0], packed_ih_, &rec, w_hr_, &bias[0],
                                lens, T, B, I, H, P, reverse, chunk, &gates[0, 0, 0],
                                &gh[0, 0], &hs[0, 0, 0], &cs[0, 0, 0], hs.shape[0], m_,
                                keep_m, &y[0, 0, 0], y_step, proj_parts, n_team, pipe_)


def backward(const floating[:, :, ::1] x,
             const floating[:, ::1] w_ih,
             const floating[:, ::1] w_hh,
             const floating[:, :, ::1] gates,
             const floating[:, :, ::1] hs,
             const floating[:, :, ::1] cs,
             const floating[:, :, :] dy,       # rows contiguous (see step_stride)
             const Py_ssize_t[::1] lengths,
             bint reverse,
             floating[:, ::1] dh,
             floating[:, ::1] dc,
             floating[:, :, ::1] dg,
             floating[:, :, ::1] dx,
             floating[:, ::1] dw_ih,
             floating[:, ::1] dw_hh,
             floating[::1] db_ih,
             floating[::1] db_hh,
             const floating[:, ::1] w_hr=None,
             const floating[:, :, ::1] m=None,
             floating[:, :, ::1] dh_total=None,
             floating[:, ::1] dm=None,
             floating[:, ::1] dw_hr=None,
             float[::1] packed=None,
             int n_threads=1,
             int grad_parts=1,
             Py_ssize_t wgrad_tiles_max_n=0,
             int n_team=1,
             int unit_parts=0,
             bint pack_here=False,
             bint spin_barrier=True,
             Py_ssize_t grad_chunk=0):
    """BPTT through a training forward; dh/dc hold dh_n/dc_n on entry, dh0/dc0 on exit.

    With a projection: ``w_hr`` (P, H), the forward's ``m`` (T, B, H), scratch
    ``dh_total`` (T, B, P) and ``dm`` (B, H), and the output ``dw_hr`` (P, H).
    ``packed``: as in ``forward``, but W_hh (4H, P) itself, packed by
    ``packing.pack(w_hh, False, packed)``. ``unit_parts`` > 0 (float32 with
    ``packed``, no projection, H a multiple of the panel width): the time
    loop's units split into that many parts on a team of ``n_team`` threads
    (``lstm_backward_units``); ``grad_parts``: the GEMMs after it in that many
    parts on the team (``gradients_on_team``); ``wgrad_tiles_max_n``: weight
    gradients with at most that many columns (I, H) in register tiles rather
    than BLAS where the build has them (``weight_gradient``; 0: never);
    ``pack_here``, ``spin_barrier``: as in ``forward``. ``grad_chunk`` > 0
    (without ``unit_parts``): instead of the GEMMs after the loop, a second
    thread of the team computes them behind it, block by block of that many
    steps, as the loop finishes each (``gradients_behind`` in
    _rnn_common.pxd); ``grad_parts`` is then not used.
    """
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], I = x.shape[2], H = dc.shape[1]
    cdef Py_ssize_t P = dh.shape[1]
    cdef const Py_ssize_t* lens = NULL if lengths is None else &lengths[0]
    cdef const floating* dy_ = NULL if dy is None else &dy[0, 0, 0]
    cdef Py_ssize_t dy_step = 0 if dy is None else step_stride(dy, "dy", T, B, P)
    cdef const floating* w_hr_ = NULL
    cdef floating* dh_total_ = NULL
    cdef floating* dm_ = NULL
    cdef float* packed_ = check_packed(packed, 4 * H, P)
    cdef const floating* to_pack = NULL         # pack_here: W_hh, which the team packs
    cdef Recurrent rec
    cdef fr_barrier bar             # the unit split's team meets here every step
    if w_hr is not None:
        if m is None or dh_total is None or dm is None or dw_hr is None:
            raise ValueError("a projection needs m, dh_total, dm and dw_hr")
        w_hr_ = &w_hr[0, 0]
        dh_total_ = &dh_total[0, 0, 0]
        dm_ = &dm[0, 0]
    elif P != H:
        raise ValueError("h and c differ in size but there is no projection")
    if pack_here and unit_parts <= 0:
        raise ValueError("pack_here needs unit_parts > 0: only a unit split's team packs")
    if unit_parts > 0 and (floating is not float or packed_ == NULL or w_hr is not None
                           or H % FR_PANEL != 0 or n_team < 1):
        raise ValueError(f"unit_parts needs float32 with packed panels, no "
                         f"projection, H a multiple of {FR_PANEL} and n_team >= 1")
    if pack_here:
        to_pack = &w_hh[0, 0]
    cdef Pipeline pipe
    cdef Pipeline* pipe_ = backward_pipeline(&pipe, grad_chunk, T, n_team, unit_parts)
    cdef bint behind = pipe_ != NULL and pipe_.helper     # a second thread, beside the loop
    cdef int role
    fr_barrier_init(&bar, spin_barrier)
    with nogil:
        # the loop's op(W_hh) = W_hh (unused by a unit split, which reads its panels)
        rec = recurrent(&w_hh[0, 0], False, 4 * H, P, packed_, n_threads)
        if unit_parts > 0:
            if floating is float:
                # a team of one starts no OpenMP region (_parallel.team_size)
                if n_team > 1:
                    with parallel(num_threads=n_team):
                        fr_team_spread()
                        lstm_backward_units(&gates[0, 0, 0], &cs[0, 0, 0], to_pack, packed_, dy_,
                                            dy_step, lens, T, B, H, reverse, &dh[0, 0],
                                            &dc[0, 0], &dg[0, 0, 0], unit_parts, &bar)
                else:
                    lstm_backward_units(&gates[0, 0, 0], &cs[0, 0, 0], to_pack, packed_, dy_,
                                        dy_step, lens, T, B, H, reverse, &dh[0, 0], &dc[0, 0],
                                        &dg[0, 0, 0], unit_parts, &bar)
        elif behind:
            with parallel(num_threads=2):
                fr_team_spread()
                role = pipeline_role(pipe_)
                if role == 0:
                    lstm_backward_kernel(&gates[0, 0, 0], &cs[0, 0, 0], &rec, w_hr_, dy_,
                                         dy_step, lens, T, B, H, P, reverse, &dh[0, 0],
                                         &dc[0, 0], &dg[0, 0, 0], dh_total_, dm_, pipe_)
                if runs_the_gradients(pipe_, role):
                    backward_gradients(pipe_, &dg[0, 0, 0], &dg[0, 0, 0], &x[0, 0, 0],
                                       &hs[1 if reverse else 0, 0, 0], &w_ih[0, 0], T, B, I,
                                       P, 4 * H, reverse, &dx[0, 0, 0], &dw_ih[0, 0],
                                       &dw_hh[0, 0], &db_ih[0], &db_hh[0], 1, 1,
                                       wgrad_tiles_max_n)
        else:
            lstm_backward_kernel(&gates[0, 0, 0], &cs[0, 0, 0], &rec, w_hr_, dy_, dy_step,
                                 lens, T, B, H, P, reverse, &dh[0, 0], &dc[0, 0],
                                 &dg[0, 0, 0], dh_total_, dm_, pipe_)
        if not behind:
            backward_gradients(pipe_, &dg[0, 0, 0], &dg[0, 0, 0], &x[0, 0, 0],
                               &hs[1 if reverse else 0, 0, 0], &w_ih[0, 0], T, B, I, P,
                               4 * H, reverse, &dx[0, 0, 0], &dw_ih[0, 0], &dw_hh[0, 0],
                               &db_ih[0], &db_hh[0], grad_parts, n_team, wgrad_tiles_max_n)
        if w_hr_ != NULL:
            # dW_hr = sum over steps of dh_total_t^T m_t; padding rows are zero in both
            weight_gradient(dh_total_, P, &m[0, 0, 0], T * B, P, H, &dw_hr[0, 0],
                            wgrad_tiles_max_n)
