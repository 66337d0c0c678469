# cython: language_level=3
"""Pieces every cell's kernel shares: time order, masking, and the big GEMMs
before and after the time loop.

States live in a buffer of ``n_slots`` slots of B*H values, slot ``s`` at
``(s % n_slots) * B*H``. Training keeps every step (``T + 1`` slots) so backward
can read the state that entered each step; inference alternates between two.
(One slot updated in place would do, but then the fused loop reads and writes
the same row, the compiler's runtime alias check fails, and the loop runs
scalar instead of vectorised.) The slots are time-aligned: the state entering step ``t`` sits in slot ``t`` going
forward and in slot ``t + 1`` going in reverse, so the states that fed steps
``0 .. T-1`` are one contiguous ``(T*B, H)`` block for the dW_hh GEMM.
"""
from cython cimport floating
from cython.parallel cimport parallel
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy
from _blas cimport gemm
from _recurrent cimport fr_gemm_packed_bias, FR_PANEL

cdef extern from "_weight_gradient.h" nogil:
    const int FR_WGRAD_TILES
    void fr_weight_gradient(Py_ssize_t rows, Py_ssize_t G, Py_ssize_t n, const float* dg,
                            Py_ssize_t ldg, const float* a, Py_ssize_t lda, float* dw,
                            Py_ssize_t ldw, int add)

cdef extern from "_team.h" nogil:
    ctypedef struct fr_barrier:
        int spin
    int fr_team_size()
    int fr_team_rank()
    void fr_team_spread()
    void fr_barrier_init(fr_barrier* b, int spin)
    void fr_barrier_wait(fr_barrier* b)
    const int FR_HANDOVER
    void fr_publish(long* counter, long value)
    void fr_wait_for(const long* counter, long value)
    long fr_read(const long* counter)
    long fr_take_next(long* counter)
    bint fr_take(long* counter, long k)

#: A weight gradient dW (G, n) = dg^T @ a sums over all T*B rows. With that
#: many rows and G > n, OpenBLAS's Haswell/Zen kernels compute dW^T = a^T @ dg
#: faster than dW itself: on the AMD EPYC (AVX2), SciPy's sgemm, one thread,
#: the two interleaved, 15 rounds, 4000 rows (long's halves) 1.32-1.36x for
#: LSTM and GRU, 3200 rows (large's) 1.06-1.09x, and 300-640 rows anywhere
#: from 0.67x to 1.10x, so only from this many rows is the product turned
#: around (and dW^T transposed back). End to end (training, 2 threads, old and
#: new modules alternating, three runs): LSTM long 1.06-1.13x; GRU and RNN
#: long and every large case 0.96-1.07x. Its SkylakeX (AVX-512) kernels, which
#: it runs wherever the x86-64-v4 build of these modules runs, do the
#: opposite: dW itself against dW^T plus the transposition, on the Intel Xeon,
#: 21 rounds alternating: 1.10-1.18x at the large and long halves, 1.02x at
#: LSTM medium's 800 rows. So that build never turns it around.
cdef extern from *:
    """
    #ifdef __AVX512F__
    #define FR_WGRAD_TRANSPOSED_MIN_ROWS PY_SSIZE_T_MAX
    #else
    #define FR_WGRAD_TRANSPOSED_MIN_ROWS 2048
    #endif
    """
    const Py_ssize_t WGRAD_TRANSPOSED_MIN_ROWS "FR_WGRAD_TRANSPOSED_MIN_ROWS"


cdef inline Py_ssize_t time_at(Py_ssize_t s, Py_ssize_t T, bint reverse) noexcept nogil:
    """The time index of the s-th step a direction visits."""
    return T - 1 - s if reverse else s


cdef inline Py_ssize_t slot_in(Py_ssize_t t, bint reverse) noexcept nogil:
    """Slot of the state entering step t."""
    return t + 1 if reverse else t


cdef inline Py_ssize_t slot_out(Py_ssize_t t, bint reverse) noexcept nogil:
    """Slot of the state leaving step t."""
    return t if reverse else t + 1


cdef inline bint is_valid(const Py_ssize_t* lengths, Py_ssize_t b, Py_ssize_t t) noexcept nogil:
    """Is step t of sequence b real (not padding)?"""
    return lengths == NULL or t < lengths[b]


cdef inline void project_columns(const floating* x,      # IN  (rows, I)
                                 const floating* w_ih,   # IN  (G, I), PyTorch's layout
                                 const float* packed_ih,  # IN  W_ih^T's panels (I, G), or NULL
                                 const floating* bias,   # IN  (G,)
                                 floating* gates,        # OUT (rows, G), columns [c0, c1)
                                 Py_ssize_t rows, Py_ssize_t I, Py_ssize_t G,
                                 Py_ssize_t c0, Py_ssize_t c1) noexcept nogil:
    """gates[:, c0:c1] := x @ w_ih[c0:c1]^T + bias[c0:c1], for many steps at
    once (one large GEMM); a unit-split kernel projects its own columns.

    With ``packed_ih`` (float32; c0 where a panel starts, c1 where one starts
    or G): through W_ih^T's packed panels, the bias added as each value is
    stored (``fr_gemm_packed_bias``), instead of a bias pass and BLAS. Each
    value then sums over I in order, whichever rows and panels a call takes,
    not in BLAS's blocks."""
    cdef Py_ssize_t r, j
    if floating is float:
        if packed_ih != NULL:
            fr_gemm_packed_bias(rows, G, I, x, I, packed_ih, 0, gates, G, c0 // FR_PANEL,
                                (c1 + FR_PANEL - 1) // FR_PANEL, 0, bias)
            return
    for r in range(rows):
        for j in range(c0, c1):
            gates[r * G + j] = bias[j]
    gemm(False, True, <int> rows, <int> (c1 - c0), <int> I, <floating> 1, x, <int> I,
         w_ih + c0 * I, <int> I, <floating> 1, gates + c0, <int> G)


cdef inline void project_on_team(const floating* x,      # IN  (rows, I)
                                 const floating* w_ih,   # IN  (G, I), PyTorch's layout
                                 const float* packed_ih,  # IN  W_ih^T's panels, or NULL
                                 const floating* bias,   # IN  (G,)
                                 floating* gates,        # OUT (rows, G)
                                 Py_ssize_t rows, Py_ssize_t I, Py_ssize_t G,
                                 int n_parts, int n_team) noexcept nogil:
    """gates := x @ w_ih^T + bias, for many steps at once, in ``n_parts``
    column parts (``part_bound``; 1: one GEMM) run by a team of ``n_team``
    threads, each part's product on one thread: a forward whose time loop
    runs on one core gets every core for its input projections. The parts,
    not the team, fix the arithmetic: the same bits for any ``n_team``."""
    cdef int part
    n_parts = max(n_parts, 1)
    if n_team <= 1 or n_parts == 1:
        for part in range(n_parts):
            project_columns(x, w_ih, packed_ih, bias, gates, rows, I, G,
                            part_bound(G, part, n_parts),
                            part_bound(G, part + 1, n_parts))
        return
    with parallel(num_threads=n_team):
        fr_team_spread()
        part = fr_team_rank()
        while part < n_parts:
            project_columns(x, w_ih, packed_ih, bias, gates, rows, I, G,
                            part_bound(G, part, n_parts),
                            part_bound(G, part + 1, n_parts))
            part = part + fr_team_size()


cdef inline void column_sums(const floating* a, Py_ssize_t rows, Py_ssize_t cols,
                             Py_ssize_t lda, floating* out, bint add=False) noexcept nogil:
    """out := a.sum(axis=0) for a (rows, cols), rows lda apart (``add``: out
    +=); row by row so it vectorises."""
    cdef Py_ssize_t r, j
    if not add:
        for j in range(cols):
            out[j] = 0
    for r in range(rows):
        for j in range(cols):
            out[j] += a[r * lda + j]


cdef inline Py_ssize_t part_bound(Py_ssize_t n, int part, int n_parts) noexcept nogil:
    """Where part ``part`` of ``n`` columns starts: even shares, inner bounds
    on a multiple of 16 values (a 64-byte line of float32) so that no two
    parts write the same cache line of an output row."""
    if part >= n_parts:
        return n
    return n * part // n_parts // 16 * 16


cdef inline void input_and_weight_gradients(
        const floating* dg_x,     # IN  (rows, G) gradient of the input-side pre-activations
        const floating* dg_h,     # IN  (rows, G) gradient of the recurrent-side pre-activations
        const floating* x,        # IN  (rows, I)
        const floating* h_in,     # IN  (rows, H) the states that entered each step
        const floating* w_ih,     # IN  (G, I)
        Py_ssize_t rows, Py_ssize_t I, Py_ssize_t H, Py_ssize_t G,
        floating* dx,             # OUT (rows, I)
        floating* dw_ih,          # OUT (G, I)
        floating* dw_hh,          # OUT (G, H)
        floating* db_ih,          # OUT (G,)
        floating* db_hh,          # OUT (G,)
        int part, int n_parts, Py_ssize_t tiles_max_n, bint add=False) noexcept nogil:
    """Everything BPTT needs after the time loop, a few GEMMs over all T*B
    rows; here part ``part`` of ``n_parts`` of it: columns [i0, i1) of dx and
    rows [g0, g1) of the weight and bias gradients (``part_bound``). Each part
    is the same arithmetic whichever thread computes it. ``tiles_max_n``: as
    in ``weight_gradient``. ``add``: the weight and bias gradients of these
    rows are added to those of rows before (``gradients_behind``)."""
    cdef Py_ssize_t i0 = part_bound(I, part, n_parts), i1 = part_bound(I, part + 1, n_parts)
    cdef Py_ssize_t g0 = part_bound(G, part, n_parts), g1 = part_bound(G, part + 1, n_parts)
    gemm(False, False, <int> rows, <int> (i1 - i0), <int> G, <floating> 1, dg_x, <int> G,
         w_ih + i0, <int> I, <floating> 0, dx + i0, <int> I)
    weight_gradient(dg_x + g0, G, x, rows, g1 - g0, I, dw_ih + g0 * I, tiles_max_n, add)
    weight_gradient(dg_h + g0, G, h_in, rows, g1 - g0, H, dw_hh + g0 * H, tiles_max_n, add)
    column_sums(dg_x + g0, rows, g1 - g0, G, db_ih + g0, add)
    if dg_h == dg_x:
        # LSTM and RNN: both biases get the same gradient; a second pass over
        # all T*B rows of dg was 1-2% of a long training call
        memcpy(db_hh + g0, db_ih + g0, (g1 - g0) * sizeof(floating))
    else:
        column_sums(dg_h + g0, rows, g1 - g0, G, db_hh + g0, add)


cdef inline void gradients_on_team(
        const floating* dg_x, const floating* dg_h, const floating* x, const floating* h_in,
        const floating* w_ih, Py_ssize_t rows, Py_ssize_t I, Py_ssize_t H, Py_ssize_t G,
        floating* dx, floating* dw_ih, floating* dw_hh, floating* db_ih, floating* db_hh,
        int n_parts, int n_team, Py_ssize_t tiles_max_n) noexcept nogil:
    """``input_and_weight_gradients`` in ``n_parts`` parts (1: whole) run by a
    team of ``n_team`` threads: a backward whose batch is not split across the
    cores (one core ran its time loop) gets them all for its GEMMs, each part's
    BLAS call on one thread. The parts, not the team, fix the arithmetic: the
    same bits for any ``n_team``."""
    cdef int part
    n_parts = max(n_parts, 1)
    if n_team <= 1 or n_parts == 1:
        for part in range(n_parts):
            input_and_weight_gradients(dg_x, dg_h, x, h_in, w_ih, rows, I, H, G, dx, dw_ih,
                                       dw_hh, db_ih, db_hh, part, n_parts, tiles_max_n)
        return
    with parallel(num_threads=n_team):
        fr_team_spread()
        part = fr_team_rank()
        while part < n_parts:
            input_and_weight_gradients(dg_x, dg_h, x, h_in, w_ih, rows, I, H, G, dx, dw_ih,
                                       dw_hh, db_ih, db_hh, part, n_parts, tiles_max_n)
            part = part + fr_team_size()


cdef inline void weight_gradient(const floating* dg,    # IN  (rows, G), rows ldg apart
                                 Py_ssize_t ldg,
                                 const floating* a,     # IN  (rows, n)
                                 Py_ssize_t rows, Py_ssize_t G, Py_ssize_t n,
                                 floating* dw,          # OUT (G, n)
                                 Py_ssize_t tiles_max_n, bint add=False) noexcept nogil:
    """dw := dg^T @ a, a sum over all rows (``add``: dw +=): in the register
    tiles of _weight_gradient.h where this build has them and n is at most
    ``tiles_max_n`` (the caller's measured rule; 0: never), a multiple of 32,
    and G of 8; else BLAS (see WGRAD_TRANSPOSED_MIN_ROWS)."""
    cdef floating* dw_t = NULL
    cdef Py_ssize_t i0, i, j
    if floating is float:
        if FR_WGRAD_TILES and rows > 0 and n <= tiles_max_n and n % 32 == 0 and G % 8 == 0:
            fr_weight_gradient(rows, G, n, dg, ldg, a, n, dw, n, add)
            return
    if rows >= WGRAD_TRANSPOSED_MIN_ROWS and G > n and not add:
        dw_t = <floating*> malloc(G * n * sizeof(floating))
    if dw_t == NULL:
        gemm(True, False, <int> G, <int> n, <int> rows, <floating> 1, dg, <int> ldg,
             a, <int> n, <floating> add, dw, <int> n)
        return
    gemm(True, False, <int> n, <int> G, <int> rows, <floating> 1, a, <int> n,
         dg, <int> ldg, <floating> 0, dw_t, <int> G)
    # dw_t is (n, G); 16 rows of dw at a time keep both sides in cache
    for i0 in range(0, G, 16):
        for j in range(n):
            for i in range(i0, min(i0 + 16, G)):
                dw[i * n + j] = dw_t[j * G + i]
    free(dw_t)


cdef inline Py_ssize_t chunk_start(Py_ssize_t s, Py_ssize_t T, Py_ssize_t chunk, bint reverse,
                                   Py_ssize_t* n) noexcept nogil:
    """The earliest time of the chunk the s-th visited step falls in (whose
    inputs are projected together, in time order); its step count to ``n``."""
    cdef Py_ssize_t first = s - s % chunk
    n[0] = min(chunk, T - first)
    return T - first - n[0] if reverse else first


# -- the input projections ahead of the time loop ------------------------------
#
# A forward whose time loop runs on one core (a batch too small to split, and
# no unit split) leaves the other core idle while it steps; each chunk's
# projection, though, only has to be done before the loop reaches the chunk.
# So a second thread of the team projects chunk after chunk into a ring of
# chunk slots in the gates buffer (``project_ahead``) while the loop steps
# through the ones before (``step_gates``): the projection leaves the loop's
# path but for the first chunk. The two hand chunks over through two counters
# (src_ext/_team.h). A team of one (or a build without the atomics) projects
# each chunk in the loop instead, into the same slot with the same call: the
# bits do not depend on the team.

cdef struct Pipeline:
    long produced           # chunks projected into their slots so far
    long consumed           # chunks the time loop is done with
    long taken              # chunks a thread has taken to project
    Py_ssize_t chunk        # steps a chunk
    Py_ssize_t n_ring       # chunk slots before a slot is reused
    bint aligned            # the buffer holds every step at its time (training)
    bint helper             # a second thread projects (else the loop itself)


cdef inline Pipeline* pipeline_init(Pipeline* pipe, Py_ssize_t chunk, Py_ssize_t rows,
                                    Py_ssize_t T, int n_team) noexcept nogil:
    """``pipe`` set up for chunks of ``chunk`` steps in a gates buffer of
    ``rows`` steps (at least ``chunk``), a second thread projecting when
    ``n_team`` > 1; NULL (no pipeline) for ``chunk`` 0."""
    if chunk <= 0:
        return NULL
    pipe.produced = 0
    pipe.consumed = 0
    pipe.taken = 0
    pipe.chunk = chunk
    pipe.aligned = rows >= T
    # a buffer of every step never reuses a slot
    pipe.n_ring = (T + chunk - 1) // chunk if pipe.aligned else rows // chunk
    pipe.helper = n_team > 1 and FR_HANDOVER
    return pipe


cdef inline Py_ssize_t check_chunk(str name, Py_ssize_t chunk, Py_ssize_t rows,
                                   str what) except -1:
    """``chunk``, a kernel's argument ``name``, checked against the ``rows``
    steps of ``what``."""
    if chunk < 0 or chunk > rows:
        raise ValueError(f"{name} must be 0 (none) or a chunk of steps that fits {what}'s "
                         f"{rows}, got {chunk}")
    return chunk


cdef inline Pipeline* forward_pipeline(Pipeline* pipe, Py_ssize_t pipe_chunk, Py_ssize_t rows,
                                       Py_ssize_t T, int n_team, int unit_parts) except *:
    """``pipe`` set up for a forward's projections ahead of its loop, chunks
    of ``pipe_chunk`` steps in a gates buffer of ``rows`` steps
    (``project_ahead``), or NULL for none; the arguments checked."""
    if unit_parts > 0 and pipe_chunk != 0:
        raise ValueError("pipe_chunk needs unit_parts 0: a unit split projects its own columns")
    return pipeline_init(pipe, check_chunk("pipe_chunk", pipe_chunk, rows, "the gates buffer"),
                         rows, T, n_team)


cdef inline Pipeline* backward_pipeline(Pipeline* pipe, Py_ssize_t grad_chunk, Py_ssize_t T,
                                        int n_team, int unit_parts) except *:
    """``pipe`` set up for a backward's gradients behind its loop, blocks of
    ``grad_chunk`` steps (``gradients_behind``), or NULL for none; the
    arguments checked."""
    if unit_parts > 0 and grad_chunk != 0:
        raise ValueError("grad_chunk needs unit_parts 0: a unit split's team runs the loop")
    return pipeline_init(pipe, check_chunk("grad_chunk", grad_chunk, T, "the sequence"), T, T,
                         n_team)


cdef inline floating* chunk_slot(const Pipeline* pipe, floating* gates, Py_ssize_t k,
                                 Py_ssize_t t_low, Py_ssize_t B, Py_ssize_t G) noexcept nogil:
    """Where the k-th visited chunk, whose earliest step is ``t_low``, goes."""
    if pipe.aligned:
        return gates + t_low * B * G
    return gates + k % pipe.n_ring * pipe.chunk * B * G


cdef inline void project_ahead(const floating* x, const floating* w_ih,
                               const float* packed_ih, const floating* bias,
                               floating* gates, Py_ssize_t T, Py_ssize_t B, Py_ssize_t I,
                               Py_ssize_t G, bint reverse, Pipeline* pipe) noexcept nogil:
    """The second thread's work: the chunks' projections, in the order the
    loop visits them, each once the loop is done with its slot's last chunk.
    It takes them one by one (``pipe.taken``); the loop takes one itself
    when it gets there first (``step_gates``), so that a second thread that
    lost its core to other work holds the loop up less."""
    cdef Py_ssize_t k, n, t_low
    cdef Py_ssize_t n_chunks = (T + pipe.chunk - 1) // pipe.chunk
    while True:
        k = fr_take_next(&pipe.taken)
        if k >= n_chunks:
            return
        if k >= pipe.n_ring:
            fr_wait_for(&pipe.consumed, k - pipe.n_ring + 1)
        t_low = chunk_start(k * pipe.chunk, T, pipe.chunk, reverse, &n)
        project_columns(x + t_low * B * I, w_ih, packed_ih, bias,
                        chunk_slot(pipe, gates, k, t_low, B, G), n * B, I, G, 0, G)
        # in order: this thread takes chunks in order, and the loop takes
        # one only when every chunk before it is done
        fr_publish(&pipe.produced, k + 1)


cdef inline int pipeline_role(Pipeline* pipe) noexcept nogil:
    """This thread's part in a pipelined call, asked by every thread of its
    team: 0 runs the time loop, 1 the work beside it (the projections ahead
    of it, the gradients behind it), 2 nothing. A team that came out smaller
    than asked has its one thread run the loop, and the loop then does the
    helper's work itself (``pipe.helper`` false)."""
    if pipe == NULL or not pipe.helper:
        return 0
    if fr_team_size() < 2:
        pipe.helper = False     # the only thread
        return 0
    return min(fr_team_rank(), 2)


cdef inline bint projects_ahead(Pipeline* pipe, const floating* x, const floating* w_ih,
                                const float* packed_ih, const floating* bias,
                                floating* gates, Py_ssize_t T, Py_ssize_t B, Py_ssize_t I,
                                Py_ssize_t G, bint reverse) noexcept nogil:
    """Called first by a forward kernel on every thread of its team: True on
    the thread that projects ahead (it has done so when this returns) or has
    nothing to do; False on the one that runs the time loop
    (``pipeline_role``)."""
    cdef int role = pipeline_role(pipe)
    if role == 1:
        project_ahead(x, w_ih, packed_ih, bias, gates, T, B, I, G, reverse, pipe)
    return role != 0


# -- the gradients behind the backward's time loop -------------------------------
#
# The mirror image: a backward whose loop runs on one core finishes the
# gradient rows dG of a block of steps long before the loop ends, and dx,
# dW_ih, dW_hh and the biases' gradients of those rows need nothing else. So
# a second thread computes them block by block behind the loop
# (``gradients_behind``), adding each block's weight and bias gradients to
# the blocks' before, in the order the loop finishes them. Without a second
# thread the same blocks are computed in the same order after the loop: the
# same bits.

cdef inline void step_finished(Pipeline* pipe, Py_ssize_t s, Py_ssize_t T) noexcept nogil:
    """The backward's loop has finished its s-th visited step: hand over the
    block it completes, if any."""
    if pipe != NULL and pipe.helper and ((s + 1) % pipe.chunk == 0 or s + 1 == T):
        fr_publish(&pipe.produced, (s + pipe.chunk) // pipe.chunk)


cdef inline void gradients_behind(
        Pipeline* pipe,
        const floating* dg_x,     # IN  (T*B, G) as input_and_weight_gradients
        const floating* dg_h,     # IN  (T*B, G)
        const floating* x,        # IN  (T*B, I)
        const floating* h_in,     # IN  (T*B, H)
        const floating* w_ih,     # IN  (G, I)
        Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H, Py_ssize_t G, bint reverse,
        floating* dx, floating* dw_ih, floating* dw_hh, floating* db_ih, floating* db_hh,
        Py_ssize_t tiles_max_n) noexcept nogil:
    """``input_and_weight_gradients`` block by block of ``pipe.chunk`` steps,
    in the order the backward's loop visits them (the forward's last steps
    first), each once the loop has finished it (``step_finished``)."""
    cdef Py_ssize_t k, n, t_low, r0
    cdef Py_ssize_t n_blocks = (T + pipe.chunk - 1) // pipe.chunk
    for k in range(n_blocks):
        if pipe.helper:
            fr_wait_for(&pipe.produced, k + 1)
        # the loop's k-th block of steps is the forward's k-th from its end
        t_low = chunk_start(k * pipe.chunk, T, pipe.chunk, not reverse, &n)
        r0 = t_low * B
        input_and_weight_gradients(dg_x + r0 * G, dg_h + r0 * G, x + r0 * I, h_in + r0 * H,
                                   w_ih, n * B, I, H, G, dx + r0 * I, dw_ih, dw_hh, db_ih,
                                   db_hh, 0, 1, tiles_max_n, k > 0)


cdef inline void backward_gradients(
        Pipeline* pipe, const floating* dg_x, const floating* dg_h, const floating* x,
        const floating* h_in, const floating* w_ih, Py_ssize_t T, Py_ssize_t B, Py_ssize_t I,
        Py_ssize_t H, Py_ssize_t G, bint reverse, floating* dx, floating* dw_ih,
        floating* dw_hh, floating* db_ih, floating* db_hh, int n_parts, int n_team,
        Py_ssize_t tiles_max_n) noexcept nogil:
    """What a backward does besides or after its time loop: the gradients
    behind it (``pipe`` not NULL, ``gradients_behind``) or after it, in
    ``n_parts`` parts on a team of ``n_team`` (``gradients_on_team``)."""
    if pipe != NULL:
        gradients_behind(pipe, dg_x, dg_h, x, h_in, w_ih, T, B, I, H, G, reverse, dx, dw_ih,
                         dw_hh, db_ih, db_hh, tiles_max_n)
    else:
        gradients_on_team(dg_x, dg_h, x, h_in, w_ih, T * B, I, H, G, dx, dw_ih, dw_hh, db_ih,
                          db_hh, n_parts, n_team, tiles_max_n)


cdef inline bint runs_the_gradients(Pipeline* pipe, int role) noexcept nogil:
    """Does the thread of ``role`` (``pipeline_role``) compute a backward's
    gradients: behind the loop, or after it when it runs the loop alone?"""
    return role == 1 or (role == 0 and (pipe == NULL or not pipe.helper))


cdef inline floating* step_gates(const floating* x,       # IN  (T, B, I)
                                 const floating* w_ih,    # IN  (G, I)
                                 const float* packed_ih,  # IN  W_ih^T's panels, or NULL
                                 const floating* bias,    # IN  (G,)
                                 floating* gates,         # OUT (chunk, B, G)
                                 Py_ssize_t s, Py_ssize_t T, Py_ssize_t B, Py_ssize_t I,
                                 Py_ssize_t G, Py_ssize_t chunk, bint reverse,
                                 int proj_parts, int n_team, Pipeline* pipe) noexcept nogil:
    """The gate rows of the s-th visited step.

    Steps are projected ``chunk`` at a time: the first step of a chunk
    projects the inputs of the whole chunk, stored in time order, in
    ``proj_parts`` parts on a team of ``n_team`` threads (``project_on_team``).
    With ``pipe`` (not NULL), the chunks are the pipeline's: the first step of
    one hands the slots before it back and waits for it to be projected, or
    projects it itself without a helper (``projects_ahead``).
    """
    cdef Py_ssize_t n
    cdef Py_ssize_t t_low = chunk_start(s, T, chunk, reverse, &n)
    cdef Py_ssize_t k = s // chunk
    cdef floating* slot
    if pipe == NULL:
        if s % chunk == 0:
            project_on_team(x + t_low * B * I, w_ih, packed_ih, bias, gates, n * B, I, G,
                            proj_parts, n_team)
        return gates + (time_at(s, T, reverse) - t_low) * B * G
    slot = chunk_slot(pipe, gates, k, t_low, B, G)
    if s % chunk == 0:
        if pipe.helper:
            fr_publish(&pipe.consumed, k)
            if fr_read(&pipe.produced) > k or not fr_take(&pipe.taken, k):
                fr_wait_for(&pipe.produced, k + 1)
                return slot + (time_at(s, T, reverse) - t_low) * B * G
        # no second thread, or it has not taken this chunk yet: project it here
        project_columns(x + t_low * B * I, w_ih, packed_ih, bias, slot, n * B, I, G, 0, G)
    return slot + (time_at(s, T, reverse) - t_low) * B * G


cdef inline void carry_row(const floating* src, floating* dst, Py_ssize_t n) noexcept nogil:
    """dst := src; a padded step passes its state through."""
    cdef Py_ssize_t j
    for j in range(n):
        dst[j] = src[j]


cdef inline void zero_row(floating* dst, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(n):
        dst[j] = 0


cdef inline Py_ssize_t step_stride(const floating[:, :, :] a, str name, Py_ssize_t T,
                                   Py_ssize_t B, Py_ssize_t H) except -1:
    """Elements between the steps of ``a`` (T, B, H), the output y or the
    incoming gradient dy: B*H, or more when ``a`` is a part's rows of a larger
    batch's array, which the parts of a split batch write (y) or read (dy) in
    place (``_parallel``). Each step's rows must be contiguous."""
    if a.shape[0] != T or a.shape[1] != B or a.shape[2] != H \
            or (H > 1 and a.strides[2] != <Py_ssize_t> sizeof(floating)) \
            or (B > 1 and a.strides[1] != H * <Py_ssize_t> sizeof(floating)) \
            or a.strides[0] % <Py_ssize_t> sizeof(floating) != 0:
        raise ValueError(f"{name} must be ({T}, {B}, {H}) with each step's rows contiguous, "
                         f"got shape ({a.shape[0]}, {a.shape[1]}, {a.shape[2]}) and strides "
                         f"({a.strides[0]}, {a.strides[1]}, {a.strides[2]})")
    return a.strides[0] // <Py_ssize_t> sizeof(floating)
