# cython: language_level=3
"""The hidden units split across a thread team, for float32 inference with
packed panels (``lstm_forward_units``, ``gru_forward_units``): what every
cell's step does for its part of the units before its own fused pass, and
the team (src_ext/_team.h). A call too short to pack W_hh (inference of
fewer than 4 steps) splits its units without panels, the vanilla RNN's too
(``rnn_forward_units``): each part multiplies by its rows of W_hh itself
(src_ext/_small_gemm.h), whose sums do not depend on the split.

A part is units [u0, u1), whole panels of W_hh^T: gate k's columns for it are
[k*H + u0, k*H + u1), so with panels H and the bounds are multiples of
FR_PANEL. Without them H need not be: the last part takes the units past the
last whole panel.
"""
from _blas cimport fr_gemm_nt
from _recurrent cimport fr_gemm_packed, fr_pack_panel_range, FR_PANEL
from _rnn_common cimport (time_at, chunk_start, project_columns, fr_team_size,
                          fr_team_rank)


cdef inline Py_ssize_t part_start(Py_ssize_t H, int part, int n_parts) noexcept nogil:
    """The first unit of ``part`` (H for ``n_parts``): the whole panels split
    as evenly as they go, the units past them in the last part (a split
    without panels, H not a multiple of FR_PANEL). A part's vectors then start
    where the unsplit call's do. The bits do not depend on where a part
    starts: each unit's activation and each column's sums are the same on any
    lane (tests/test_unit_split.py; so too with parts at H * part // n_parts)."""
    if part >= n_parts:
        return H
    return (H // FR_PANEL) * part // n_parts * FR_PANEL


cdef inline void pack_own_parts(const float* w,     # IN  W_hh (G*H, H) or W_ih (G*H, K)
                                bint trans, Py_ssize_t K, Py_ssize_t H, Py_ssize_t n_gates,
                                float* packed,      # OUT op(W)'s panels, this thread's
                                int n_parts) noexcept nogil:
    """Pack the panels this thread's parts read (parts rank, rank + size, ...).
    The forward's op(W_hh) is W_hh^T (H, G*H) (``trans``, K = H): a part reads
    each gate's columns for its units; the same for W_ih^T (K = I, G*H) when
    the forward projects through panels (``project_columns``). The backward's
    is W_hh (G*H, H): a part reads the columns of its units.

    A part's steps read only its own panels, so packing them on the thread
    that reads them needs no barrier, halves the packing's time, and leaves
    them in that core's cache instead of the other's."""
    cdef int part = fr_team_rank(), size = fr_team_size()
    cdef Py_ssize_t G = n_gates * H, k, u0, u1
    while part < n_parts:
        u0 = part_start(H, part, n_parts)
        u1 = part_start(H, part + 1, n_parts)
        if trans:
            for k in range(n_gates):
                fr_pack_panel_range(K, G, w, True, packed, (k * H + u0) // FR_PANEL,
                                    (k * H + u1) // FR_PANEL)
        else:
            fr_pack_panel_range(G, H, w, False, packed, u0 // FR_PANEL, u1 // FR_PANEL)
        part += size


cdef inline float* part_gates(const float* x,        # IN  (T, B, I)
                              const float* w_ih,     # IN  (G*H, I)
                              const float* w_hh,     # IN  (G*H, H), read without panels
                              const float* packed,   # IN  W_hh^T's panels (H, G*H), or NULL
                              const float* bias,     # IN  (G*H,) the projection's
                              const float* packed_ih,  # IN  W_ih^T's panels (I, G*H), or NULL
                              const float* h_in,     # IN  (B, H) the state entering the step
                              Py_ssize_t s, Py_ssize_t T, Py_ssize_t B, Py_ssize_t I,
                              Py_ssize_t H, Py_ssize_t n_gates, bint reverse,
                              Py_ssize_t chunk,
                              float* gates,          # OUT (chunk, B, G*H) the projection
                              float* gh,             # OUT (B, G*H) h_in @ W_hh^T
                              Py_ssize_t u0, Py_ssize_t u1) noexcept nogil:
    """For units [u0, u1) of every row at step s: the chunk's input projection
    (at its first step, as ``step_gates``) and the step's recurrent product, in
    each gate's columns for those units. Returns the step's rows of ``gates``."""
    cdef Py_ssize_t G = n_gates * H, n, k, q
    cdef Py_ssize_t t_low = chunk_start(s, T, chunk, reverse, &n)
    if s % chunk == 0:
        for k in range(n_gates):
            project_columns(x + t_low * B * I, w_ih, packed_ih, bias, gates, n * B, I, G,
                            k * H + u0, k * H + u1)
    # the gates, like the panels within each, in the opposite order on odd steps
    # (see fr_gemm_packed)
    for q in range(n_gates):
        k = n_gates - 1 - q if s & 1 else q
        if packed != NULL:
            fr_gemm_packed(B, G, H, h_in, H, packed, 0, gh, G, (k * H + u0) // FR_PANEL,
                           (k * H + u1) // FR_PANEL, s & 1)
        else:
            fr_gemm_nt(B, u1 - u0, H, h_in, H, w_hh + (k * H + u0) * H, H, 0,
                       gh + k * H + u0, G)
    return gates + (time_at(s, T, reverse) - t_low) * B * G


cdef inline void parts_dh_product(const float* dgt,     # IN  (B, G*H) the step's dG
                                  const float* packed,  # IN  W_hh's panels (G*H, H)
                                  float* dh,            # INOUT (B, H)
                                  Py_ssize_t B, Py_ssize_t H, Py_ssize_t n_gates,
                                  Py_ssize_t s, int n_parts) noexcept nogil:
    """A unit-split backward's step, after the barrier: for each of this
    thread's parts, its columns of dh += dG_t @ W_hh from its panels (walked
    backwards on odd steps, as in ``fr_gemm_packed``)."""
    cdef int part = fr_team_rank(), size = fr_team_size()
    cdef Py_ssize_t G = n_gates * H, u0, u1
    while part < n_parts:
        u0 = part_start(H, part, n_parts)
        u1 = part_start(H, part + 1, n_parts)
        fr_gemm_packed(B, H, G, dgt, G, packed, 1, dh, H, u0 // FR_PANEL, u1 // FR_PANEL, s & 1)
        part += size
