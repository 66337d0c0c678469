"""The Cython kernels behind the backend interface (see ``_backends``).

Python owns all memory: this module allocates outputs, the workspace and the
scratch and hands everything to ``fastrnn._ext``, whose kernels allocate
nothing and run without the GIL. Weights stay in PyTorch's layout (BLAS reads
them through its transpose flag), so a short call copies no weight matrix. A
call of ``PREPARE_MIN_T`` steps or more prepares W_hh once for its per-step
product (``prepare_forward``, ``prepare_backward``): packed panels for small
float32 batches, else, where OpenBLAS multiplies it faster than through the
transpose flag (``K_MAJOR_COPY``: not on AVX-512), a K-major copy W_hh^T.

Buffers (T steps, B sequences, H hidden units, G gates)
------------------------------------------------------
``hs``, ``cs`` : (T+1, B, H) in training, the state entering and leaving each
    step (time-aligned slots, see ``src_ext/_rnn_common.pxd``); (2, B, H) in
    inference, the slot numbers taken modulo 2.
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
"""
import importlib
import importlib.util
import os
from threading import get_ident
from time import perf_counter, thread_time

import numpy as np

from . import _buffers
from .frozen import FrozenParams
from ._parallel import (cores as _cores, gradient_parts as _gradient_parts,
                        openmp_usable as _openmp_usable, projection_parts as _projection_parts,
                        team_size as _team_size)
from . import _ext
from ._ext import cpu as _cpu
from ._ext import packing as _packing


#: the builds of the kernel modules setup.py makes, best first: (FASTRNN_ISA
#: name, module suffix, whether this CPU runs it)
_BUILDS = (("x86-64-v4", "_v4", _cpu.supports_x86_64_v4),
           ("x86-64-v3", "_v3", _cpu.supports_x86_64_v3),
           ("baseline", "", lambda: True))


def runnable_builds():
    """``[(isa, suffix)]``, best first: the builds this CPU runs and this
    install has (for tests that check each build's modules directly)."""
    return [(isa, suffix) for isa, suffix, supported in _BUILDS
            if supported() and importlib.util.find_spec(f"{__package__}._ext.lstm{suffix}")]


def _kernel_modules(choice):
    """``(isa, lstm, gru, rnn)``: the build of the kernel modules to run.

    setup.py builds them for the baseline x86-64 and again for x86-64-v3 and
    x86-64-v4; ``choice`` is FASTRNN_ISA: "auto" (the best build this CPU
    runs), or one build's name (an error if this CPU or build lacks it).
    """
    isas = [isa for isa, _, _ in _BUILDS]
    if choice != "auto" and choice not in isas:
        expected = ", ".join(repr(n) for n in ["auto"] + isas)
        raise ValueError(f"FASTRNN_ISA: expected one of {expected}, got {choice!r}")
    for isa, suffix, supported in _BUILDS:
        if choice not in ("auto", isa):
            continue
        reason = None
        if not supported():
            reason = "this CPU lacks it"
        elif importlib.util.find_spec(f"{__package__}._ext.lstm{suffix}") is None:
            reason = f"this build of fastrnn has no {isa} kernels"
        if reason is None:
            return (isa,) + tuple(importlib.import_module(f"{__package__}._ext.{n}{suffix}")
                                  for n in ("lstm", "gru", "rnn"))
        if choice == isa:
            raise RuntimeError(f"FASTRNN_ISA={isa}, but {reason}")


#: which build of the kernels runs: "x86-64-v4", "x86-64-v3" or "baseline"
ISA, _lstm, _gru, _rnn = _kernel_modules(os.environ.get("FASTRNN_ISA", "auto"))

#: handles ``params = (w_ih, w_hh, b_ih, b_hh, w_hr)``: an LSTM with a projection
PROJECTION = True

#: the kernels' fused-type specialization for each dtype
_SPECIALIZATION = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}


def _typed(kernel, dtype):
    """``kernel``'s specialization for ``dtype``: calling it directly skips the
    fused function's dispatch on the argument types, 1.7 us of a ~30 us
    streaming call (the arrays' dtypes are checked either way)."""
    return kernel[_SPECIALIZATION[dtype]]


#: float32 batches up to this size multiply by W_hh with the packed-panel
#: kernel (src_ext/_packed_gemm.h) instead of BLAS, which repacks W_hh on every
#: call. AVX2 (interleaved, 2 cores): packed beats 2-thread OpenBLAS at
#: B = 1, 16, 32 and loses at B = 64 (LSTM large inference 433 vs 351 ms).
#: The x86-64-v4 build's 8-row AVX-512 blocks against one-thread OpenBLAS
#: (SkylakeX kernels; a C harness, one core, median of 21, per-step products
#: of H = 256 and 512): 1.5-1.7x at B = 64, 1.3-1.4x at 128, 1.06-1.16x at
#: 256, 0.98-1.09x at 512.
PACKED_MAX_B = 256 if ISA == "x86-64-v4" else 32
#: preparing W_hh costs about one step's product: not worth it for fewer steps
PREPARE_MIN_T = 4
#: batches too large for the panels multiply by a K-major copy of W_hh^T where
#: OpenBLAS's AVX2 kernels run that faster than PyTorch's layout through the
#: transpose flag; its SkylakeX (AVX-512) kernels, which it runs wherever the
#: x86-64-v4 build does, run the transpose flag faster: SciPy's sgemm, one
#: thread, the two alternating, 21 rounds, h (300-1024 rows) @ W_hh^T with
#: H = 128-512: 1.01-1.07x, and no copy.
K_MAJOR_COPY = ISA != "x86-64-v4"
#: multiply-adds per step from which the packed panels are split over OpenMP
#: threads. None (off): with OpenBLAS's worker threads spinning on the same two
#: cores it was 1.5-30x slower than one thread on every grid shape measured.
#: Measured again with BLAS held at one thread (one process, interleaved, 9
#: rounds, forward only): 0.43-0.80x at latency and long, 1.05-1.12x at small
#: and medium, whose batches the split in ``_parallel`` runs on both cores anyway.
PARALLEL_MIN_MACS = None


#: In the x86-64-v4 build, an LSTM or GRU inference call can split its hidden
#: units across the cores instead of its batch (``unit_parts``): each core
#: then streams its half of W_hh^T for all the rows, and with half of it a big
#: W_hh^T fits in each core's L2; the price is a barrier per step. The
#: smallest W_hh^T (bytes) for which it does, by batch rows; measured against
#: the batch split (one core below 8 rows), the two alternating in one
#: process, 11-15 rounds, median of per-round ratios, (B, H: speed-up).
#: LSTM: 1, 32-64: 0.33-0.64x; 1, 96: 0.90-1.02x; 1, 128: 1.22-1.32x;
#: 1, 256: 1.51-1.56x; 1, 512: 2.95x; 4, 64: 0.50x; 4, 128: 0.98x;
#: 4, 256: 1.45x; 2-6, 512: 2.0-2.5x; 4, 1024: 1.82x; 8, 64: 0.40x;
#: 8-12, 512: 1.36-1.50x; 16, 256: 0.84-0.90x; 16, 512-1024: 1.08-1.15x;
#: 24, 512: 1.10x; 32, 512: 0.96-0.98x. GRU (W_hh^T 3/4 the LSTM's):
#: 1, 64-96: 0.51-0.68x; 1, 128: 1.13x; 4, 128: 1.06x; 8, 128: 0.70x;
#: 16, 256: 0.89x; 32, 256: 0.88x; 4, 512: 2.21x; 16, 512: 1.17x;
#: 24, 512: 1.08x; 32, 512: 1.00x. None: never (the other builds).
#: Training splits its forward's units where this table does (``unit_parts``
#: below), and its backward's the same way (``backward``). Against one core
#: for the time loops (11 rounds, forward and backward): LSTM and GRU B = 1,
#: H = 512 2.16-2.24x, B = 4, H = 512 1.57-1.63x, B = 1, H = 256 1.30-1.40x,
#: LSTM B = 4, H = 256 1.16x, B = 1, H = 128 (the grid's latency) 1.05-1.06x.
#: Against the batch split, which takes batches of 8 rows or more (11 rounds,
#: (B, T, I, H), LSTM / GRU): (16, 25, 512, 512) (the grid's small) 1.18x /
#: 1.19x, (12, 50, 512, 512) 1.32x / 1.32x, (8, 100, 512, 512) 1.28x / 1.27x,
#: (20, 25, 512, 512) 1.21x / 1.21x, (24, 25, 512, 512) 1.09x / 1.08x,
#: (16, 25, 384, 512) 1.19x / 1.17x, (8, 25, 1024, 1024) 1.45x / 1.43x; short
#: sequences most, where the batch split packs W_hh on one thread for each
#: pass: (16, 5, 512, 512) 1.58x / 1.55x, (8, 10, 512, 512) 1.72x / 1.63x;
#: long ones least: (8, 400, 512, 512) 1.20x / 1.09x, (16, 200, 512, 512)
#: 1.02x / 0.98x, (24, 100, 512, 512) 1.00x / 0.98x.
#: (Measured before the backward split its units, the forward's split alone
#: had lost to the batch split at the grid's small: 0.93-0.94x.)
UNIT_SPLIT_MIN_BYTES = ({1: 192 << 10, 7: 1 << 20, 24: 3 << 20}
                        if ISA == "x86-64-v4" else None)

#: Calls of at most ``UNIT_SPLIT_SHORT_T`` steps also split from these smaller
#: bounds (``unit_parts`` takes the lower of the two tables' bounds). Between
#: 1.5 and 3 MiB the unit split's lead over the batch split shrinks with T
#: (B = 8-24, the two alternating in one process, 11 rounds, inference /
#: training): LSTM (16, 25, 384, 384) 1.19x / 1.13x, (12, 25, 336, 336)
#: 1.21x / 1.23x, (10, 40, 352, 352) 1.17x / 1.11x, (20, 30, 400, 400)
#: 1.15x / 1.11x; GRU (16, 25, 384, 384) 1.11x / 1.08x, (16, 25, 448, 448)
#: 1.14x / 1.12x; but at T = 50 0.93-1.04x (LSTM (16, 50, 384, 384), (24, 50,
#: 368, 368), GRU (16, 50, 384, 384), (24, 50, 368, 368)), at T = 100-200 GRU
#: (16, 100, 384, 384) 0.95x / 0.94x, (16, 200, 384, 384) 0.90x / 0.93x.
UNIT_SPLIT_SHORT_T = 40
UNIT_SPLIT_SHORT_MIN_BYTES = {24: 3 << 19} if ISA == "x86-64-v4" else None

#: Inference calls too short to pack W_hh (fewer than ``PREPARE_MIN_T``
#: steps) of at most ``UNIT_SPLIT_NT_MAX_ROWS`` rows in all (T * B) split
#: their units too, from this W_hh^T size (bytes) up, in every build: each
#: core multiplies by its rows of W_hh itself. Every product of such a call,
#: split or not, its projections included, goes through src_ext/_small_gemm.h,
#: whose sums do not depend on the split: the bits are those of the unsplit
#: call (a call of more rows would project through BLAS's GEMM, whose sums
#: for a gate's columns alone may differ from its sums for all). Against one core,
#: or the batch split from 8 rows (``benchmarks/ab_setting.py ...
#: "_cython_backend.UNIT_SPLIT_NT_MIN_BYTES=None"
#: "_cython_backend.UNIT_SPLIT_NT_MIN_BYTES=0"``, frozen, 11 rounds, (B, T,
#: H) with I = H: speed-up): LSTM (1, 1, 128) 1.16x, (2, 1, 128) 1.24x,
#: (1, 1, 256) 1.44x, (4, 1, 256) 1.39x, (8, 1, 256) 1.11x, (16, 1, 256)
#: 1.01x, (32, 1, 256) 1.30x, (16, 1, 512) 1.74x, (4, 2, 256) 1.64x,
#: (8, 3, 128) 2.39x; GRU 1.09-2.81x at the same shapes; below 192 KiB
#: mixed: H = 64 0.87-0.98x, LSTM H = 80-112 0.89-1.15x, GRU H = 80-112
#: 0.79-1.25x. The x86-64-v3 build (9 rounds): LSTM 1.14-2.24x, GRU
#: 1.11-2.89x at (1, 1, 128), (4, 1, 256), (16, 1, 512), (8, 3, 128),
#: (32, 1, 256). The vanilla RNN (its W_hh^T (H, H) a quarter of the LSTM's
#: at the same H) by the same bound, 15 rounds: (1, 1, 224) 1.10x, (4, 1,
#: 224) 1.10x, (16, 1, 224) 1.37x, (1, 1-3, 256) 1.12-1.22x, (4, 1, 256)
#: 1.22x; 11 rounds: (4, 1, 384) 1.57x, (4, 1, 512) 1.53x, (8, 1, 512)
#: 1.65x, (32, 1, 256) 1.52x, (8, 3, 256) 2.57x; below it mixed: H = 192
#: (144 KiB) 0.68-1.32x, H = 128 0.58-1.12x, H = 64 0.57-0.90x. H off the
#: panel width splits too, its last part taking the units past the last
#: whole panel (11-15 rounds): LSTM (1-16, 1, 300) 1.15-1.19x, (4-16, 1,
#: 200) 1.58-1.66x, (8, 1, 150) 1.36x, (8, 1, 120) 1.26x, (4, 2, 250) 1.61x,
#: (8, 1, 1000) 1.60x; GRU (1-16, 1, 300) 1.19-1.34x, (8, 1, 200) 1.33x,
#: (4, 2, 250) 1.62x; RNN (1-16, 1, 300) 1.22-1.56x, (4, 2, 250) 1.33x,
#: (8, 1, 1000) 1.21x; the x86-64-v3 build (11 rounds) 1.19-1.66x at (1-16,
#: 1, 300) and (4, 2, 250). None: never.
UNIT_SPLIT_NT_MIN_BYTES = 192 << 10
UNIT_SPLIT_NT_MAX_ROWS = _packing.NT_MAX_ROWS

#: Such a short unit-split call runs its parts on the calling thread alone
#: when no forward call has ended in the last ``IDLE_TEAM_S`` seconds and
#: its multiply-adds (T * B * (I + H) * G*H) are at most ``IDLE_SOLO_MAX_MACS``.
#: fastrnn's OpenMP thread spins for its next region for about 0.2 ms
#: (``fastrnn._ext.GOMP_SPINCOUNT``), then sleeps, and waking it costs more
#: than a small call's split saves. An OpenMP region of two threads after a
#: gap on the calling thread (C harness, medians of 200): 1.3-1.7 µs after
#: 25-200 µs of work, 8-30 µs (tails of 250-600 µs) after 250-600 µs, 21-30
#: µs (tails of 600 µs) after 200-300 µs of sleep, 335 µs after 1 ms of sleep.
#: Frozen calls after 300 µs or 1 ms of busy work, or 1 ms of sleep
#: (``benchmarks/bench_idle_gaps.py``, the team always against this rule,
#: medians of 400 calls): LSTM (1, 1, 128, 128) 54 / 53 / 990 µs against 17
#: / 28 / 40; GRU (1, 1, 256, 256) 56 / 70 / 1030 against 39 / 49 / 80; RNN
#: (8, 1, 256, 256) 62 / 89 / 1110 against 32 / 45 / 89; back to back the
#: same. At the bound, LSTM (1, 1, 512, 512) (2.1M), busy work favours the
#: team (113 / 121 against 149 / 215 µs) and sleep the calling thread (1122
#: against 179); beyond it (LSTM, GRU (8, 1, 256, 256)) the team's products
#: are worth waking it for. The bits do not depend on the team's size.
#: Only where the thread does sleep that soon (``_ext.SPINS_BRIEFLY``): with
#: a libgomp loaded before fastrnn's (PyTorch's, imported first) it spins
#: for about 6 ms, and with ``OMP_WAIT_POLICY=active`` for good; under the
#: latter the rule took 1.1-1.8x the team's time after 300 µs or 1 ms of
#: busy work at 11 of the 12 shapes it applies to, and 1.2-2.3x after 1 ms of
#: sleep (LSTM (1, 1, 512, 512) 73 / 83 / 102 µs against 131 / 148 / 172;
#: ``OMP_WAIT_POLICY=active python benchmarks/bench_idle_gaps.py``, one run).
#: None: always the team.
IDLE_TEAM_S = 150e-6 if _ext.SPINS_BRIEFLY else None
IDLE_SOLO_MAX_MACS = 2 << 20

#: Up to this many multiply-adds, a short unit-split call also runs alone
#: after an idle gap in which its thread slept (its CPU time over the gap
#: under half of it), as a stream waiting for its next input does: the
#: machine then idles too, and waking fastrnn's thread took about 1 ms
#: here. Timing the thread costs 0.56 µs, so only calls past
#: ``IDLE_SOLO_MAX_MACS`` do. Frozen calls (``bench_idle_gaps.py``, a bound
#: of 8M multiply-adds against 2M for all gaps): after 1 ms of sleep, LSTM
#: (8, 1, 256, 256) 1131 -> 176 µs, (4, 1, 512, 512) 1439 -> 487, GRU (8, 1,
#: 256, 256) 1049 -> 109, (16, 1, 256, 256) 1125 -> 200 (3-10x over the
#: shapes between the bounds); after busy work, alone took 0.60-1.35x the
#: team's time (LSTM (4, 1, 512, 512) 334 against 561 µs), hence the test of
#: the thread's sleep. Long calls whose projections run ahead on a second
#: thread (``pipe_chunk``) follow this bound too: after 1 ms of sleep the
#: RNN's latency call took 707 µs on its team and 123 alone, GRU and LSTM
#: (1, 100, 64, 64) 642 and 674 against 129 and 158; long unit-split calls
#: waited 0.05-0.1 ms for their team and keep it (alone, LSTM and GRU (1,
#: 50, 128, 128) took 1.3-1.4x their time). None: only ``IDLE_SOLO_MAX_MACS``.
SLEPT_SOLO_MAX_MACS = 8 << 20

#: when the last forward call ended (``time.perf_counter``)
_last_end = 0.0
#: the wall and CPU time (``time.thread_time``) at the end of the last call
#: that timed its thread, and that thread's identity
_last_timed = (0.0, 0.0, None)


#: A unit-split call packs W_hh on its team, each thread the panels its parts
#: read, rather than all of them on the calling thread before the team starts
#: (``_room_to_pack``): half the packing's time, and each core's panels start
#: out in its own cache. Against the latter (``benchmarks/ab_setting.py``,
#: the two alternating in one process, 2 threads, 11 rounds, median of
#: per-round ratios, inference / training): LSTM latency 1.10x / 1.06x, GRU
#: latency 1.08x / 1.02x; LSTM (1, 100, 256, 256) 1.05x / 1.06x, GRU 1.06x /
#: 1.02x; LSTM (4, 50, 512, 512) 1.10x / 1.05x, GRU 1.11x / 1.08x; small
#: inference LSTM 1.04x, GRU 1.06x (its training then split the batch: 1.00x).
PACK_IN_TEAM = True

#: The input projections through W_ih^T's packed panels, the bias added as each
#: value is stored (``project_columns`` in src_ext/_rnn_common.pxd), instead of
#: a bias pass and OpenBLAS. The panels multiply 1.17-1.30x faster than
#: one-thread OpenBLAS at the grid's projections (``benchmarks/projection_gemm.c``,
#: one core); packing W_ih costs part of that back. A unit-split forward
#: (``unit_parts``) always takes them, its team packing W_ih^T as it does W_hh.
#: Against OpenBLAS there (``benchmarks/ab_setting.py``, the two alternating in
#: one process, 2 threads, 21 rounds, median of per-round ratios, inference /
#: training): LSTM latency 1.09x / 1.01x, small 1.05x (its training then split
#: the batch), (1, 100, 256, 256) 1.07x / 1.03x, (4, 50, 512, 512) 1.04x / 1.01x;
#: GRU latency 1.07x / 1.03x, small 1.04x, (1, 100, 256, 256) 1.06x / 1.00x,
#: (4, 50, 512, 512) 1.04x / 1.02x.
PROJECT_PACKED = True

#: Other calls that pack W_hh take the panels for W_ih^T too
#: (``prepare_forward``: packed once, shared by a split batch's parts) where
#: W_ih^T takes up to this many bytes. On the Intel Xeon against OpenBLAS
#: (15 and 11 rounds, as above): W_ih^T of 16-256 KiB, inference
#: 1.01-1.07x, RNN long 1.28-1.29x, B = 1, T = 1000, H = 64 LSTM and GRU
#: 1.14x, training 0.96-1.06x (median 1.01); 1 MiB and more lost there,
#: 0.94-1.00x (LSTM, GRU, RNN at small, medium and large): inside the
#: kernel both ran below their rate alone and packing W_ih^T took most of
#: the panels' lead.
PROJECT_PACKED_MAX_BYTES = 256 << 10

#: Larger W_ih^T too, for an inference call of at least this many rows (T
#: times its part's B), over which one packing is spread. On the AMD EPYC
#: (Zen 4), panels for every size against the byte limit alone
#: (``benchmarks/ab_setting.py``, 2 threads, 15-21 rounds, each run beside a
#: run of the same setting to show its noise, here up to 3%): through frozen
#: layers, whose panels are packed once, GRU medium (800 rows a part)
#: 1.03-1.05x, large (3,200) 1.04x; LSTM medium 1.02-1.05x, large 1.04x; RNN
#: large 1.03-1.04x, RNN small (200 rows) 1.07x; through the kernel
#: functions, which pack on every call, large 1.01-1.04x, medium
#: 0.955-1.03x, RNN small 0.91-0.97x. Training forwards, which pack on
#: every call too: 0.99-1.00x for the LSTM and GRU at small, medium and large.
#: A rule on the shape alone, so a frozen layer's calls keep the layer's bits.
#: The x86-64-v4 build's only: with the x86-64-v3 build's panels (8 floats
#: wide, against OpenBLAS's AVX-512 kernels on the same machine) the frozen
#: grid's GRU, LSTM and RNN medium and large lost, 0.96-0.98x (RNN medium
#: 1.03x; 9 rounds). None: never.
PROJECT_PACKED_MIN_ROWS = 512 if ISA == "x86-64-v4" else None

#: And for a call that projects its inputs ahead of its loop in chunks
#: (``pipeline_chunk``) with I at least this many times H, training too.
#: Through OpenBLAS every chunk's GEMM packs all of W_ih^T again (16 rows of
#: work for megabytes of packing); where the projections outweigh the loop
#: that is no longer hidden behind it. Against no such rule (the kernel
#: functions, which pack the panels on every call; ``benchmarks/
#: ab_setting.py``, 9 rounds, inference / training): RNN (1, 200, 1024, 256)
#: 3.02x / 1.77x, (4, 100, 1024, 256) 2.68x / 1.75x, (1, 100, 2048, 512)
#: 2.95x / 1.57x; GRU (4, 100, 1024, 256) 3.29x / 1.80x; RNN at I = H,
#: (1, 100, 512, 512) and (1, 300, 512, 512), 0.96-1.00x for panels there, so
#: the bound. With the x86-64-v3 build (frozen inference / training, 9
#: rounds): RNN, LSTM and GRU at (4, 100, 1024, 256) and (1, 200, 1024, 256)
#: 3.2-3.4x / 1.6-1.8x. None: never.
PIPELINED_PACKED_MIN_I_OVER_H = 2


#: A unit-split call's team meets at the spinning barrier of src_ext/_team.h
#: every step instead of OpenMP's (``spin_barrier`` of the kernels); it spins
#: a while, then yields its core. Alone (``benchmarks/team_barrier.c``, two
#: threads doing nothing else, the Zen 4 machine, 12 runs): libgomp's took
#: 247-458 ns a meeting (median 279), the spinning one 27-164 (median 32).
#: Against OpenMP's (``benchmarks/ab_setting.py``,
#: the two alternating in one process, 2 threads, 21 rounds, median of
#: per-round ratios, inference / training): LSTM latency 1.06x / 1.05x,
#: (1, 300, 128, 128) 1.04x / 1.09x, (4, 100, 256, 256) 1.02x / 1.01x; GRU
#: latency 1.01x / 1.04x, (1, 300, 128, 128) 1.09x / 1.04x, (4, 100, 256,
#: 256) 0.98x / 1.00x; in another run of 15 rounds LSTM latency 1.10x /
#: 1.08x, the grid's small 0.98-1.00x. With both cores busy with two other
#: processes (7 rounds): LSTM latency 1.07x / 9.7x, GRU latency 5.0x / 1.00x:
#: OpenMP's barrier stalled for milliseconds where the spinning one yields.
SPIN_BARRIER = True


def unit_parts(cell, dtype, T, B, params, training):
    """Parts to split the hidden units into for this call (0: none; the batch
    split of ``_parallel`` applies). The forward (inference, or training's,
    which keeps every step) of an LSTM without projection or a GRU,
    float32, a call that packs W_hh (``prepare_forward``), H a multiple of
    the panel width, and W_hh^T of at least ``UNIT_SPLIT_MIN_BYTES`` for the
    smallest batch bound not under B (or ``UNIT_SPLIT_SHORT_MIN_BYTES``'s,
    if lower, for at most ``UNIT_SPLIT_SHORT_T`` steps). Training takes the
    same rule: its backward then splits the units the same way
    (``backward``). An inference call too short to pack W_hh splits them
    without panels, the vanilla RNN's too and H any width, from
    ``UNIT_SPLIT_NT_MIN_BYTES`` and up to ``UNIT_SPLIT_NT_MAX_ROWS`` rows
    (T * B). The rule looks at the shapes only, not at the threads: a call
    gets the same bits with a team of one (one fastrnn thread, or a forked
    child that may start no team: ``_parallel.team_size``), which runs on
    the calling thread.
    """
    # every call of a native backend asks, streaming steps too: the cheap tests first
    if len(params) > 4:
        return 0
    GH, H = params[1].shape
    if dtype != np.float32:
        return 0
    if T < PREPARE_MIN_T:
        if training or UNIT_SPLIT_NT_MIN_BYTES is None or T * B > UNIT_SPLIT_NT_MAX_ROWS:
            return 0
        return 2 if GH * H * 4 >= UNIT_SPLIT_NT_MIN_BYTES else 0
    if (cell not in ("lstm", "gru") or UNIT_SPLIT_MIN_BYTES is None or B > PACKED_MAX_B
            or H % _packing.PANEL):
        return 0
    need = _bound_for(UNIT_SPLIT_MIN_BYTES, B)
    if T <= UNIT_SPLIT_SHORT_T and UNIT_SPLIT_SHORT_MIN_BYTES is not None:
        need = min(need, _bound_for(UNIT_SPLIT_SHORT_MIN_BYTES, B))
    return 2 if GH * H * 4 >= need else 0


def _bound_for(table, B):
    """The bytes ``table`` asks of W_hh^T at B rows: its smallest batch bound
    not under B; infinite past the largest."""
    bound = min((b for b in table if b >= B), default=None)
    return float("inf") if bound is None else table[bound]


#: multiply-adds from which an unsplit backward runs the GEMMs after its time
#: loop in parts on an OpenMP team (``_parallel.gradient_parts``). Against one
#: part (the two alternating in one process, 2 threads, training, 9-15 rounds,
#: median of per-round ratios, (B, T, I, H): speed-up): the grid's latency
#: shape 1.08x (RNN), 1.12x (LSTM), 1.08x (GRU); LSTM and GRU
#: (1, 100, 512, 512) 1.11-1.12x, (4, 100, 256, 256) 1.19x, (4, 50, 512, 512)
#: 1.18-1.20x, (2, 200, 64, 64) 1.06-1.10x; near the threshold, LSTM
#: (1, 50, 64, 64) 2.5M: 1.08x, (1, 10, 128, 128) 2.0M: 1.01x,
#: (1, 20, 64, 64) 1.0M: 1.00x; RNN 0.3-0.6M: 0.86-0.94x.
GRADIENT_PARTS_MIN_MACS = 1 << 21


#: Weight gradients (dW_ih, dW_hh: a sum over all T*B rows) with at most this
#: many columns (I or H; a multiple of 32) go through the register tiles of
#: src_ext/_weight_gradient.h in the x86-64-v4 build, rather than OpenBLAS,
#: which packs all of dG for them. Alone on a core
#: (``benchmarks/weight_gradient.c``): 1.26-1.31x at 4000 rows and 64
#: columns, 1.12-1.14x at 100-200 rows and 128, 1.05-1.07x at 800 and 128;
#: 0.62-0.95x from 256. Training calls against 0 (``benchmarks/ab_setting.py``,
#: 15 rounds, RNN / LSTM / GRU): the grid's long 1.16x / 1.06x / 1.07x,
#: (4, 500, 64, 64) 1.19x / 1.03x / 1.07x, (16, 100, 128, 128) 1.09x / 1.03x /
#: 1.02x, (1, 200, 128, 128) 1.09x / 1.02x / 1.01x, the grid's latency 1.01x.
#: 0: never.
WGRAD_TILES_MAX_N = 128


def gradient_parts(cell, T, B, I, GH, H):
    """Parts for the GEMMs after an unsplit backward's loop (``_parallel``)."""
    return _gradient_parts(T, B, I, GH, H, GRADIENT_PARTS_MIN_MACS)


#: multiply-adds per input projection GEMM from which an unsplit forward runs
#: it in parts on an OpenMP team (``_parallel.projection_parts``). Against one
#: part (``benchmarks/ab_setting.py``, the two alternating in one process, 2
#: threads, 9-21 rounds, median of per-round ratios, (B, T, I, H), projection
#: multiply-adds: speed-up inference / training): RNN (1, 100, 256, 256) 6.6M
#: 1.09-1.15x / 1.06-1.07x, (4, 200, 256, 256) 52M 1.13-1.17x / 1.08x; GRU
#: (4, 200, 256, 256) 157M 1.15x / 1.08x, (1, 1000, 64, 64) 12M 1.09x / 1.09x,
#: (2, 500, 64, 64) 12M 1.05x / 1.06x; LSTM (1, 1000, 64, 64) 16M 1.09-1.10x /
#: 1.05x; RNN (1, 1000, 64, 64) 4.1M 1.00x. Under it: RNN (1, 200, 128, 128)
#: 3.3M 1.03-1.06x, the grid's RNN latency 1.6M 0.96-1.00x.
PROJECTION_PARTS_MIN_MACS = 1 << 22


def projection_parts(cell, training, T, B, I, GH):
    """Parts for each input projection of an unsplit forward (``_parallel``):
    a GEMM over the rows of a chunk of steps, all T of them in an LSTM or
    GRU training call, which keeps every step's gates."""
    steps = T if training and cell in ("lstm", "gru") else _buffers.chunk(T, B, GH)
    return _projection_parts(steps * B, I, GH, PROJECTION_PARTS_MIN_MACS)


#: A forward whose time loop runs on one core (no unit split, one part of the
#: batch) projects its inputs ahead of the loop on a second thread
#: (``pipe_chunk`` of the kernels, ``project_ahead`` in
#: src_ext/_rnn_common.pxd) from this many multiply-adds of projection
#: (T*B*I*G*H); None: never. Against projecting each chunk in the loop
#: (``benchmarks/ab_setting.py``, the two alternating in one process, 2
#: threads, 11 rounds, median of per-round ratios, inference / training):
#: RNN latency 1.14x / 1.16x (21 rounds: 1.16x), (1, 1000, 64, 64) RNN 1.33x /
#: 1.17x, LSTM 1.28x / 1.03x, GRU 1.22x / 1.06x, (4, 200, 128, 128) RNN 1.45x
#: / 1.13x, LSTM 1.52x / 1.13x, GRU 1.39x / 1.12x, the grid's RNN long 1.34x /
#: 1.07x; near the bounds, (1, 100, 64, 64) RNN (410K) 1.04x / 1.04x, LSTM
#: 1.12x / 1.19x, GRU 1.11x / 1.08x; (1, 200, 32, 32) LSTM (819K) 1.13x /
#: 1.07x, GRU (614K) 1.12x / 1.08x, but RNN (205K) 0.78x / 1.01x; four
#: chunks, (1, 64, 128, 128) and (1, 64, 96, 96) RNN 1.05x (21 rounds).
#: The grid's LSTM and GRU latency (a unit split) and long (a split batch)
#: do not take it: 0.97-1.03x.
PIPELINE_MIN_MACS = 1 << 19
#: rows (steps * B) a chunk of the pipeline projects at once, at least.
#: 8 or 32 against 16 (11 rounds, as above): 0.95-1.12x, no side ahead.
PIPELINE_CHUNK_ROWS = 16
#: chunks a call must have: the loop waits for the first one. With two or
#: three, (1, 40, 64, 64) and (1, 40, 128, 128): 0.96-1.03x.
PIPELINE_MIN_CHUNKS = 4
#: chunk slots the inference's ring holds: how far the projections may run ahead
PIPELINE_SLOTS = 4
#: the largest batch whose loop still hides the chunks of wide inputs (I at
#: least 2H) projected beside it; larger ones project in parts before the
#: loop (``projection_parts``). A 16-row chunk of such a projection streams
#: all of W_ih^T for 16 rows of work, which at B = 1-2 takes no longer than
#: the loop's steps (each reads W_hh^T from L2), at B >= 4 it does. Without
#: the pipeline from B = 4 against with it (``benchmarks/ab_setting.py``,
#: frozen inference / training, 9 rounds): RNN (4, 100, 1024, 256) 1.11x /
#: 0.99x, (6, 100, 1024, 256) 1.29x / 1.04x, (4, 100, 512, 128) 1.12x /
#: 1.02x, (5, 60, 768, 128) 1.17x / 1.05x, (4, 300, 256, 64) 1.02x / 1.00x;
#: GRU 1.05-1.29x / 1.02-1.12x and the LSTM 1.00-1.22x / 1.00-1.09x at the
#: same shapes (the x86-64-v3 build: 1.07-1.27x / 0.98-1.12x; the kernel
#: functions, inference: 1.16-1.35x for the RNN and GRU); from B = 3
#: 0.90-1.13x; at B = 1-2 the pipeline wins, 1.15-1.28x (RNN and GRU at
#: I = 1024, H = 256). None: no bound.
PIPELINE_WIDE_MAX_B = 3


def pipeline_chunk(cell, training, T, B, I, GH):
    """Steps a chunk of the pipelined input projections takes in an unsplit
    forward (``_parallel``), 0 for none: from ``PIPELINE_MIN_MACS``, for at
    least ``PIPELINE_MIN_CHUNKS`` chunks, and for wide inputs only up to
    ``PIPELINE_WIDE_MAX_B`` rows. A rule on the shape alone, like ``projection_parts``:
    a team of one projects the same chunks itself."""
    if PIPELINE_MIN_MACS is None or T * B * I * GH < PIPELINE_MIN_MACS:
        return 0
    H = GH // {"lstm": 4, "gru": 3}.get(cell, 1)
    if PIPELINE_WIDE_MAX_B is not None and B > PIPELINE_WIDE_MAX_B and I >= 2 * H:
        return 0
    steps = -(-PIPELINE_CHUNK_ROWS // B)
    return steps if T >= PIPELINE_MIN_CHUNKS * steps else 0


#: A backward whose time loop runs on one core computes its GEMMs (dx,
#: dW_ih, dW_hh, the biases' gradients) on a second thread behind the loop,
#: block by block (``grad_chunk`` of the kernels, ``gradients_behind`` in
#: src_ext/_rnn_common.pxd), from this many multiply-adds of them (the three
#: products: T*B*G*H*(2I + H)); None: never. Against the GEMMs after the loop
#: (in two parts on both cores from ``GRADIENT_PARTS_MIN_MACS``;
#: ``benchmarks/ab_setting.py``, training, the two alternating in one
#: process, 2 threads, 11 rounds, median of per-round ratios, 2^20 against
#: None): (1, 1000, 64, 64) RNN 1.17x, LSTM 1.13x, GRU 1.09x; (1, 400, 128,
#: 128) RNN 1.15x; (1, 300, 96, 96) RNN 1.04x, LSTM 0.98x, GRU 1.12x; 15
#: rounds: (1, 200, 64, 64) RNN 1.06x, LSTM 1.08x, GRU 1.24x; (1, 100, 64,
#: 64) LSTM 1.03x, GRU 1.09x, but RNN (1.2M) 0.68x; the grid's RNN latency
#: 0.97x and 1.07x in two runs. Without the bounds below, B = 4 or H = 256
#: lost 0.72-0.97x: there the two cores after the loop beat one beside it.
GRADIENTS_BEHIND_MIN_MACS = 1 << 21
#: rows (steps * B) of a block, at least: the weight gradients sum over them
GRADIENTS_BEHIND_ROWS = 32
#: blocks a call must have: the last one is computed after the loop
GRADIENTS_BEHIND_MIN_BLOCKS = 2
#: the most multiply-adds the GEMMs may have for each one of the loop's
#: products (B * (2I + H) against H), and the largest H: one core computes
#: them behind the loop, where after it two would, so they must not take
#: much longer than the loop itself
GRADIENTS_BEHIND_MAX_RATIO = 3
GRADIENTS_BEHIND_MAX_H = 128


def gradient_chunk(cell, T, B, I, GH, H):
    """Steps a block of the gradients behind an unsplit backward's loop
    takes (``_parallel``), 0 for none. A rule on the shape alone: a team of
    one computes the same blocks after the loop."""
    macs = T * B * GH * (2 * I + H)
    if GRADIENTS_BEHIND_MIN_MACS is None or macs < GRADIENTS_BEHIND_MIN_MACS \
            or H > GRADIENTS_BEHIND_MAX_H or B * (2 * I + H) > GRADIENTS_BEHIND_MAX_RATIO * H:
        return 0
    steps = -(-GRADIENTS_BEHIND_ROWS // B)
    return steps if T >= GRADIENTS_BEHIND_MIN_BLOCKS * steps else 0


def prepare_forward(cell, dtype, T, B, params, training=False, pipelined=False):
    """How the forward kernels multiply by W_hh^T each step, prepared once.

    Keyword arguments for the kernel: ``packed`` panels (float32 batches up to
    ``PACKED_MAX_B`` rows), a K-major copy ``w_hh_t`` (larger batches, where
    ``K_MAJOR_COPY``), or none (calls too short to repay it, or BLAS reads
    PyTorch's layout). ``_parallel.SplitBackend`` prepares
    once for all the parts of a split batch, with ``B`` their largest, and the
    parts share it: one copy of W_hh in the caches instead of one per core.
    With ``packed``, also ``packed_ih``, W_ih^T's panels for the input
    projections, where they take at most ``PROJECT_PACKED_MAX_BYTES``, for
    inference (not ``training``) over at least ``PROJECT_PACKED_MIN_ROWS``
    rows, or for a call whose projections are ``pipelined`` ahead of its loop
    in chunks and whose I is at least ``PIPELINED_PACKED_MIN_I_OVER_H`` times H.
    """
    rec = _prepared(dtype, T, B, params[1], trans=True, params=params)
    w_ih = params[0]
    I, H = w_ih.shape[1], params[1].shape[1]
    if "packed" in rec and PROJECT_PACKED and w_ih.size and (
            w_ih.size * 4 <= PROJECT_PACKED_MAX_BYTES
            or not training and PROJECT_PACKED_MIN_ROWS is not None
            and T * B >= PROJECT_PACKED_MIN_ROWS
            or pipelined and PIPELINED_PACKED_MIN_I_OVER_H is not None
            and I >= PIPELINED_PACKED_MIN_I_OVER_H * H):
        rec["packed_ih"] = _panels_ih(params)
    return rec


def prepare_backward(cell, dtype, T, B, w_hh):
    """The same for the backward kernels, which multiply by W_hh itself."""
    return _prepared(dtype, T, B, w_hh, trans=False)


def _prepared(dtype, T, B, w_hh, trans, params=None):
    rec = _buffers.prepared_w_hh(dtype, T, B, w_hh, trans, _pack, PACKED_MAX_B, PREPARE_MIN_T,
                                 K_MAJOR_COPY, params)
    if "packed" in rec:
        parallel = PARALLEL_MIN_MACS is not None and B * rec["packed"].size >= PARALLEL_MIN_MACS
        rec["n_threads"] = _cores() if parallel and _openmp_usable() else 1
    return rec


def _room_to_pack(w_hh, trans, w_ih=None):
    """Kernel arguments for a unit-split call whose team packs op(W_hh) itself
    (``pack_here``): each thread packs the panels its parts read, on the core
    that reads them (``PACK_IN_TEAM``). With ``w_ih`` (a forward, where
    ``PROJECT_PACKED``), room for W_ih^T's panels too, ``packed_ih``: the team
    packs them the same way and projects its parts' inputs through them."""
    K, N = (w_hh.shape[1], w_hh.shape[0]) if trans else w_hh.shape
    rec = dict(packed=_room(K, N), pack_here=True)
    if w_ih is not None and w_ih.shape[1]:        # no panels for no inputs
        rec["packed_ih"] = _room(w_ih.shape[1], w_ih.shape[0])
    return rec


def _frozen_panels(params, w_ih):
    """A unit-split forward's ``packed`` and ``packed_ih`` (if ``w_ih``) for
    frozen ``params``: packed once, for every call, instead of by each call's
    team (``_room_to_pack``); the same panels, so the same bits."""
    rec = dict(packed=_buffers.packed_panels(params[1], "w_hh", True, _pack, params))
    if w_ih is not None and w_ih.shape[1]:
        rec["packed_ih"] = _panels_ih(params)
    return rec


def _panels_ih(params):
    """W_ih^T's panels for the input projections (once for frozen ``params``)."""
    return _buffers.packed_panels(params[0], "w_ih", True, _pack, params)


def _room(K, N):
    """Room for op(W)'s (K, N) panels, from the memory cache like every other
    array of a call: fresh pages for each call's panels cost more than the
    packing. Against ``np.empty`` (``benchmarks/ab_setting.py`` on a switch
    since removed, 15 rounds, inference / training; W_ih's panels in such a
    room too): LSTM latency 1.10x / 1.06x, small 1.04x / 1.05x,
    (1, 100, 512, 512) 1.16x / 1.10x; GRU latency 1.00x / 0.97x, small 1.03x /
    1.00x, (1, 100, 512, 512) 1.09x / 1.12x. Aligned to a cache line
    (``_buffers.panels``)."""
    return _buffers.panels(_packing.packed_size(K, N))


def _pack(w_hh, trans, K, N):
    packed = _room(K, N)
    _packing.pack(w_hh, trans, packed)
    return packed


def forward(cell, x, state0, params, lengths, reverse, training, prepared=None, unit_parts=0,
            y=None, proj_parts=1, pipe_chunk=0):
    """The backend interface's forward; ``prepared``: ``prepare_forward``'s
    result, shared by the parts of a split batch (None: prepare here);
    ``unit_parts``: as ``unit_parts()`` returns, run on up to that many of
    fastrnn's threads; ``y``: (T, B, H) to write the output into, rows of a
    larger batch's output for a part of a split batch (None: a new array);
    ``proj_parts``: as ``projection_parts()`` returns, the input projections
    in that many parts on up to as many threads (without ``unit_parts``);
    ``pipe_chunk``: as ``pipeline_chunk()`` returns, the input projections in
    chunks of that many steps ahead of the time loop, on a second thread
    (instead of ``proj_parts``)."""
    T, B, _ = x.shape
    call = ForwardCall(cell, x.dtype, T, B, params, reverse, training, prepared, unit_parts,
                       proj_parts, pipe_chunk)
    return call(x, state0, lengths, y)


class ForwardCall:
    """A forward call of one shape with everything but its input decided:
    the kernel, its team, and its operands derived from ``params`` (W_hh^T's
    and W_ih^T's panels, the biases). ``forward`` makes one for each call; a
    frozen layer keeps one for each shape it is called with
    (``_parallel.SplitBackend.forward``), as its derived operands are kept
    anyway (``fastrnn.frozen``). Calling it allocates the call's outputs and
    scratch and runs the kernel: ``(x, state0, lengths, y=None)`` ->
    ``(y, state_n, data)`` as ``forward``. ``T`` and ``B`` must be x's.
    Only a frozen layer's may be called more than once, and from several
    threads at once: its operands are read-only, where a plain call's
    panels, or the room its team packs them in, are that call's own."""

    __slots__ = ("w_hr", "cell", "dtype", "T", "B", "reverse", "training", "unit_parts", "H",
                 "GH", "steps", "options", "w_ih", "w_hh", "kernel", "operands", "n_slots",
                 "first", "last", "new", "shapes", "solo", "solo_if_slept")

    def __init__(self, cell, dtype, T, B, params, reverse, training, prepared=None,
                 unit_parts=0, proj_parts=1, pipe_chunk=0):
        w_ih, w_hh, _, b_hh = params[:4]
        self.w_hr = params[4] if len(params) > 4 else None
        self.cell, self.dtype, self.T, self.B = cell, dtype, T, B
        self.reverse, self.training, self.unit_parts = reverse, training, unit_parts
        self.H = H = w_hh.shape[1]          # the size of h: P with a projection
        self.GH = GH = w_hh.shape[0]
        short = bool(unit_parts) and T < PREPARE_MIN_T     # a unit split without panels
        if short:
            rec = {}                        # the parts multiply by W_hh itself
        elif prepared is None and unit_parts and isinstance(params, FrozenParams):
            rec = _frozen_panels(params, w_ih if PROJECT_PACKED else None)
        elif prepared is None and unit_parts and PACK_IN_TEAM:
            rec = _room_to_pack(w_hh, True, w_ih if PROJECT_PACKED else None)
        else:
            rec = (prepare_forward(cell, dtype, T, B, params, training, bool(pipe_chunk))
                   if prepared is None else prepared)
        if training and cell in ("lstm", "gru"):
            self.steps = T                  # the gates of every step are kept
        elif pipe_chunk:
            self.steps = min(T, PIPELINE_SLOTS * pipe_chunk)
        else:
            self.steps = _buffers.chunk(T, B, GH)
        # the hidden units split across a team of fastrnn's threads (``unit_parts``),
        # the input projections ahead of the time loop on a second one
        # (``pipe_chunk``) or in parts on such a team (``proj_parts``)
        if unit_parts:
            team = dict(unit_parts=unit_parts, n_team=_team_size(unit_parts),
                        spin_barrier=SPIN_BARRIER)
        elif pipe_chunk:
            team = dict(pipe_chunk=pipe_chunk, n_team=_team_size(2))
        else:
            team = dict(proj_parts=proj_parts, n_team=_team_size(proj_parts))
        self.options = dict(team, **rec)
        # the call's options with the team idle (``IDLE_TEAM_S``), or None;
        # ``solo_if_slept``: only if its thread slept through the gap. Short
        # unit-split calls, and calls whose projections run ahead on a second
        # thread (``pipe_chunk``): its wake after a sleep held them for
        # 0.5-0.7 ms, where a long unit split's held it for 0.05-0.1
        self.solo, self.solo_if_slept = None, False
        macs = T * B * (w_ih.shape[1] + H) * GH
        pipelined = bool(pipe_chunk) and not unit_parts
        if self.options["n_team"] > 1 and (
                short and macs <= IDLE_SOLO_MAX_MACS
                or (short or pipelined) and SLEPT_SOLO_MAX_MACS is not None
                and macs <= SLEPT_SOLO_MAX_MACS):
            self.solo = dict(self.options, n_team=1)
            self.solo_if_slept = not short or macs > IDLE_SOLO_MAX_MACS
        self.w_ih, self.w_hh = w_ih, w_hh
        # the state buffers' slots and where the call's arrays come from, decided once
        self.n_slots, self.first, self.last, self.new = _buffers.forward_buffers(
            T, B, H, GH, self.steps, dtype, training, reverse)
        # the shapes of h's slots, y, the gates and the scratch of products, and c's slots
        self.shapes = ((self.n_slots, B, H), (T, B, H), (self.steps, B, GH), (B, GH),
                       (self.n_slots, B, GH // 4))
        if cell == "lstm":
            self.kernel = _typed(_lstm.forward, dtype)
            self.operands = (w_ih, w_hh, _buffers.bias_sum(params))
        elif cell == "gru":
            self.kernel = _typed(_gru.forward, dtype)
            self.operands = (w_ih, w_hh, _buffers.gru_bias(params), b_hh[2 * H:])
        else:
            self.kernel = _typed(_rnn.forward, dtype)
            self.operands = (w_ih, w_hh, _buffers.bias_sum(params))

    def __call__(self, x, state0, lengths, y=None):
        # a frozen layer's one-step call runs this thousands of times: its
        # shapes and options are the ones decided in __init__
        cell, dtype, training, new, first = (self.cell, self.dtype, self.training, self.new,
                                             self.first)
        hs_shape, y_shape, gates_shape, gh_shape, cs_shape = self.shapes
        options = self.options if self.solo is None else self.team_options()
        hs = new(hs_shape, dtype)
        hs[first] = state0[0]
        y = new(y_shape, dtype) if y is None else y
        gates = new(gates_shape, dtype)
        data = None
        if cell == "lstm":
            cs = new(cs_shape, dtype)
            cs[first] = state0[1]
            w_hr = self.w_hr
            m = None if w_hr is None else new((self.T if training else 1,) + cs_shape[1:], dtype)
            self.kernel(x, *self.operands, lengths, self.reverse, gates,
                        np.empty(gh_shape, dtype), hs, cs, y, w_hr, m, **options)
            state_n = (_buffers.final_state(hs, self.last, training),
                       _buffers.final_state(cs, self.last, training))
            if training:
                data = dict(gates=gates, hs=hs, cs=cs)
                if w_hr is not None:
                    data.update(w_hr=w_hr, m=m)
        elif cell == "gru":
            ghn = new(y_shape, dtype) if training else None
            self.kernel(x, *self.operands, lengths, self.reverse, gates,
                        np.empty(gh_shape, dtype), ghn, hs, y, **options)
            state_n = (_buffers.final_state(hs, self.last, training),)
            if training:
                data = dict(gates=gates, ghn=ghn, hs=hs)
        else:
            # a unit split's parts write their products to a scratch of the call's own
            gh = np.empty(gh_shape, dtype) if self.unit_parts else None
            self.kernel(x, *self.operands, lengths, self.reverse, cell == "rnn_relu", gates,
                        hs, y, gh=gh, **options)
            state_n = (_buffers.final_state(hs, self.last, training),)
            if training:
                data = dict(hs=hs)
        global _last_end, _last_timed
        _last_end = perf_counter()
        if self.solo_if_slept:
            _last_timed = (_last_end, thread_time(), get_ident())
        if training:
            data.update(x=x, w_ih=self.w_ih, w_hh=self.w_hh, lengths=lengths,
                        reverse=self.reverse, unit_parts=self.unit_parts)
        return y, state_n, data

    def team_options(self):
        """The kernel's options for a call starting now: ``solo`` where the
        team has been idle long enough to have gone to sleep (``IDLE_TEAM_S``)
        and, for a call of more than ``IDLE_SOLO_MAX_MACS``, its thread slept
        through the gap since it last timed itself on this thread
        (``SLEPT_SOLO_MAX_MACS``)."""
        if self.solo is None or IDLE_TEAM_S is None:
            return self.options
        now = perf_counter()
        if now - _last_end <= IDLE_TEAM_S:
            return self.options
        if not self.solo_if_slept:
            return self.solo
        wall, cpu, thread = _last_timed
        if thread == get_ident() and thread_time() - cpu < (now - wall) / 2:
            return self.solo
        return self.options


def backward(cell, data, dy, dstate_n, prepared=None, grad_parts=1, grad_chunk=0):
    """The backend interface's backward; ``prepared`` as in ``forward``, from
    ``prepare_backward``; ``grad_parts``: as ``gradient_parts()`` returns, run
    on up to that many of fastrnn's threads; ``grad_chunk``: as
    ``gradient_chunk()`` returns, the GEMMs behind the time loop on a second
    thread (instead of ``grad_parts``)."""
    x, w_ih, w_hh = data["x"], data["w_ih"], data["w_hh"]
    lengths, reverse = data["lengths"], data["reverse"]
    T, B, _ = x.shape
    GH, H = w_hh.shape
    dtype = x.dtype
    dstate, dg, grads = _buffers.backward_outputs(cell, x, w_ih, w_hh, dstate_n)
    dx, dw_ih, dw_hh, db_ih, db_hh = grads
    # a forward that split its units has its backward split them the same way
    units = data.get("unit_parts", 0)
    if prepared is None and units and PACK_IN_TEAM:
        rec = _room_to_pack(w_hh, False)
    else:
        rec = prepare_backward(cell, dtype, T, B, w_hh) if prepared is None else prepared
        units = units if "packed" in rec else 0
    rec = dict(rec, grad_parts=grad_parts, n_team=_team_size(max(grad_parts, units)),
               wgrad_tiles_max_n=WGRAD_TILES_MAX_N)
    if grad_chunk and not units:
        rec.update(grad_chunk=grad_chunk, n_team=_team_size(2))
    if units:
        rec.update(unit_parts=units, spin_barrier=SPIN_BARRIER)
    if cell == "lstm" and "w_hr" in data:
        w_hr = data["w_hr"]
        dw_hr = np.empty_like(w_hr)
        kernel = _typed(_lstm.backward, dtype)
        kernel(x, w_ih, w_hh, data["gates"], data["hs"], data["cs"], dy,
               lengths, reverse, dstate[0], dstate[1], dg, *grads,
               w_hr=w_hr, m=data["m"], dh_total=_buffers.empty((T, B, H), dtype),
               dm=np.empty((B, GH // 4), dtype), dw_hr=dw_hr, **rec)
        return dx, tuple(dstate), (dw_ih, dw_hh, db_ih, db_hh, dw_hr)
    if cell == "lstm":
        kernel = _typed(_lstm.backward, dtype)
        kernel(x, w_ih, w_hh, data["gates"], data["hs"], data["cs"], dy,
               lengths, reverse, dstate[0], dstate[1], dg, *grads, **rec)
    elif cell == "gru":
        dg_h = _buffers.empty((T, B, GH), dtype)
        kernel = _typed(_gru.backward, dtype)
        kernel(x, w_ih, w_hh, data["gates"], data["ghn"], data["hs"], dy,
               lengths, reverse, dstate[0], dg, dg_h, *grads, **rec)
    else:
        kernel = _typed(_rnn.backward, dtype)
        kernel(x, w_ih, w_hh, data["hs"], dy, lengths, reverse,
               cell == "rnn_relu", dstate[0], dg, *grads, **rec)
    return dx, tuple(dstate), (dw_ih, dw_hh, db_ih, db_hh)
