"""Batch splitting: the cores run separate halves of the batch, not one GEMM together.

A recurrent layer's time loop is T small products in a row. BLAS threads
split each of them and meet at its end: T fork/joins, too many for the
small products of most shapes. But the sequences of a batch never meet: the
kernels can run rows [0, B/2) and [B/2, B) as two independent calls, each on
its own core with single-threaded BLAS, and synchronise once per call instead
of once per step.

Every call of a native backend, split or not, runs with BLAS held at one
thread (``blas_hold``). Two reasons, both measured:
- OpenBLAS's float32 GEMM rounds differently on 1 and 2 threads at many
  shapes, so BLAS threads would make the bits depend on the thread count;
- OpenBLAS's idle workers spin for a while after each threaded call, on the
  very cores the parts of a split batch need: interleaved with 2-thread BLAS
  calls, a split LSTM small inference took 41 ms instead of 20.

Determinism: how a batch is split depends on its size only (``parts``), never
on the thread count. One thread runs the same parts one after the other. So
the bits of every output and gradient are the same for any number of threads.
The weight gradients are the parts' sums, added in a fixed order.
"""
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import _buffers, _ext
from .frozen import FrozenParams

#: batches of at least this many rows are split in two. Measured with
#: ``python -m fastrnn bench``: see benchmarks/RESULTS.md.
SPLIT_MIN_B = 8
#: ... when a step multiplies at least this many multiply-adds (B * G*H * (I + H)):
#: below it, a part's work is shorter than waking a thread
SPLIT_MIN_MACS = 1 << 17

#: run a split batch's parts on an OpenMP team rather than on Python threads
#: (``run_parts``)
TEAM_PARTS = True

try:
    from ._ext import team_run as _team_run
except ImportError:         # no Cython build: Python threads
    _team_run = None

_threads = None
_pool = None
_pool_lock = threading.Lock()


def cores():
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def get_num_threads():
    """Threads fastrnn runs the parts of a split batch on.

    The default is ``FASTRNN_NUM_THREADS`` if set, else the cores this process
    may use. BLAS runs at one thread inside every fastrnn call (see above).
    """
    global _threads
    if _threads is None:
        env = os.environ.get("FASTRNN_NUM_THREADS")
        _threads = _positive_threads(int(env) if env else cores(),
                                     "FASTRNN_NUM_THREADS")
    return _threads


_local = threading.local()


def call_threads():
    """Threads the fastrnn call running on this thread may use: all of
    ``get_num_threads()``, or its share while other independent calls run
    beside it (``run_independent``)."""
    # the thread's own dict: getattr with a default raises and catches
    # AttributeError on every thread that has no share set (0.3 us a call)
    return _local.__dict__.get("threads") or get_num_threads()


#: multiply-adds per step of each call (B * G*H * (I + H)) times its steps from
#: which ``run_independent`` runs the calls side by side. Handing a call to a
#: Python thread costs tens of microseconds. A bidirectional layer, its
#: directions side by side against one after the other (``benchmarks/
#: ab_directions.py``, 9 rounds, (B, T, I, H), forward multiply-adds per
#: direction: speed-up inference / training): RNN (1, 100, 128, 128) 3.3M:
#: 0.90x / 0.81x; LSTM (1, 100, 128, 128) 13M: 0.98x / 1.09x; GRU the same
#: shape 9.8M: 1.01x / 1.13x; RNN (4, 100, 256, 256) 52M: 1.50x / 1.75x; GRU
#: 157M: 1.80x / 1.53x; LSTM 210M: 1.16x / 1.13x; RNN (8, 1000, 64, 64) 66M:
#: 1.56x / 1.37x; (16, 50, 256, 256) 1.03-1.34x; (64, 100, 512, 512) and LSTM
#: and GRU (8, 1000, 64, 64) 0.99-1.07x, where each direction already splits
#: its batch.
INDEPENDENT_MIN_MACS = 1 << 23


def run_independent(fn, n, macs):
    """``[fn(0), ..., fn(n-1)]`` for independent calls of ``macs``
    multiply-adds each (the two directions of a bidirectional layer): side by
    side, each with its share of fastrnn's threads, when there is a thread for
    each and they are large enough (``INDEPENDENT_MIN_MACS``); else one after
    the other, each with all of them.

    A direction alone can rarely keep two cores busy (a batch under 8 rows is
    not split; splitting its units costs a barrier per step); two directions
    side by side always do, and meet once. Every call's arithmetic depends on
    the shapes only, never on its threads, so the bits are the same either way.
    """
    if not side_by_side(n, macs):
        return [fn(k) for k in range(n)]
    total = call_threads()

    def with_share(k):
        saved = getattr(_local, "threads", None)
        _local.threads = total // n
        try:
            return fn(k)
        finally:
            _local.threads = saved
    return run_parts(with_share, n)


def side_by_side(n, macs):
    """Does ``run_independent`` run ``n`` calls of ``macs`` multiply-adds
    each side by side, on their own threads?"""
    return n >= 2 and call_threads() >= n and macs >= INDEPENDENT_MIN_MACS


def set_num_threads(n):
    """Run the parts of a split batch on at most ``n`` threads (1: in the caller).

    Results are bit-identical for every ``n``; only the speed changes.
    """
    global _threads
    _threads = _positive_threads(n, "n")


def _positive_threads(n, name):
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{name} must be a positive integer number of threads, got {n!r}")
    return int(n)


def parts(B, T, I, H, G):
    """Row ranges ``[(b0, b1), ...]`` the batch is split into; one range: no split."""
    if B >= SPLIT_MIN_B and B * G * H * (I + H) >= SPLIT_MIN_MACS and T > 1:
        half = (B + 1) // 2
        return [(0, half), (half, B)]
    return [(0, B)]


#: parts a backward whose batch is not split (``parts``: one core ran its time
#: loop) runs the GEMMs after the loop in, on fastrnn's threads, each part's
#: BLAS calls on one thread (``gradient_parts``)
GRADIENT_PARTS = 2


def gradient_parts(T, B, I, GH, H, min_macs):
    """Parts to split the GEMMs after an unsplit backward's time loop into (1:
    one BLAS call each): ``GRADIENT_PARTS`` from ``min_macs`` multiply-adds
    (dx, dW_ih, dW_hh: T*B rows by G*H by I + I + H), the backend's measured
    threshold. A rule on the shape alone, so that the bits do not depend on
    the thread count."""
    return GRADIENT_PARTS if T * B * GH * (2 * I + H) >= min_macs else 1


#: parts an unsplit forward (``parts``: one core runs its time loop) projects
#: its inputs in, on fastrnn's threads, each part's BLAS call on one thread
#: (``projection_parts``)
PROJECTION_PARTS = 2


def projection_parts(rows, I, GH, min_macs):
    """Parts to split each input projection of an unsplit forward into (1:
    one BLAS call): ``PROJECTION_PARTS`` from ``min_macs`` multiply-adds per
    projection GEMM (``rows`` by G*H by I), the backend's measured threshold.
    A rule on the shape alone, so that the bits do not depend on the thread
    count."""
    return PROJECTION_PARTS if rows * GH * I >= min_macs else 1


def limit_threads(n):
    """Limit every BLAS/OpenMP pool to ``n`` threads; the handle keeps the limit."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        print("warning: threadpoolctl (a dependency of fastrnn) is not installed; "
              "BLAS runs with its default thread count", file=sys.stderr)
        return None
    return threadpool_limits(n)


# -- BLAS at one thread inside fastrnn's calls -------------------------------

class _OneBlasThread:
    """Holds every BLAS of ``handles`` (``[(get, set), ...]``, Python
    callables) at one thread while any native call runs: the hold of BLAS
    libraries whose thread counts only threadpoolctl's controllers set
    (``blas_hold``).

    Reference-counted, so that concurrent calls from several user threads
    restore the user's setting only when the last one leaves. Through
    threadpoolctl's controllers, entering and leaving cost about 13 us a
    call.
    """

    def __init__(self, handles):
        self._lock = threading.Lock()
        self._active = 0
        self._saved = None
        self._handles = handles

    @staticmethod
    def _set(controller, n):
        """Set a BLAS's thread count from whichever thread calls.

        threadpoolctl lets only the first Python thread that set OpenBLAS's
        count change it again and silently ignores every other thread, so a
        split call made from a second thread would keep BLAS's threads, and
        OpenBLAS's sgemm rounds differently on 1 and 2 threads at some shapes.
        (The direct OpenBLAS functions of ``_blas_functions`` have no such rule.)
        """
        real = getattr(controller, "_real_set_num_threads", None)
        (real or controller.set_num_threads)(n)

    def __enter__(self):
        with self._lock:
            if self._active == 0:
                self._saved = [get() for get, _ in self._handles]
                for (_, setter), n in zip(self._handles, self._saved):
                    if n != 1:
                        setter(1)
            self._active += 1

    def __exit__(self, *exc):
        with self._lock:
            self._active -= 1
            if self._active == 0:
                for (_, setter), n in zip(self._handles, self._saved):
                    if n != 1:
                        setter(n)
        return False

    def reset(self):
        """In a forked child: the calls that held BLAS at one thread, and the
        lock one of them may have held, were the parent's threads', which
        will never leave; the counts they found are restored."""
        self._lock = threading.Lock()
        if self._active > 0:
            for (_, setter), n in zip(self._handles, self._saved):
                if n != 1:
                    setter(n)
        self._active = 0
        self._saved = None


def _blas_functions(controller):
    """``(get, set, direct)``: a BLAS's thread-count functions; ``direct``:
    OpenBLAS's own ``openblas_get/set_num_threads`` (ctypes functions),
    else threadpoolctl's controller methods."""
    symbol = getattr(controller, "_get_symbol", None)
    if getattr(controller, "internal_api", None) == "openblas" and symbol is not None \
            and getattr(controller, "threading_layer", None) != "openmp":
        get = symbol("openblas_get_num_threads")
        setter = symbol("openblas_set_num_threads")
        if get is not None and setter is not None:
            return get, setter, True
    return (controller.get_num_threads, lambda n: _OneBlasThread._set(controller, n), False)


def _make_blas_hold():
    """The hold of every BLAS loaded now. Where all are OpenBLAS builds whose
    own thread-count functions it can call, ``blas_threads.Hold`` calls them
    from C: entering and leaving cost 0.18 us against 2.2 through ctypes
    (``timeit``, best of 7, with NumPy's and SciPy's OpenBLAS loaded), 14%
    of a frozen layer's one-step call before (15.7 us); else
    ``_OneBlasThread``."""
    try:
        from threadpoolctl import ThreadpoolController
        controllers = [c for c in ThreadpoolController().lib_controllers
                       if c.user_api == "blas"]
    except Exception:       # no threadpoolctl: BLAS keeps its threads
        controllers = []
    functions = [_blas_functions(c) for c in controllers]
    if all(direct for _, _, direct in functions):
        try:
            import ctypes
            from ._ext.blas_threads import Hold
        except ImportError:     # no Cython build: the Numba backend alone
            pass
        else:
            address = lambda f: ctypes.cast(f, ctypes.c_void_p).value  # noqa: E731
            return Hold([(address(g), address(s)) for g, s, _ in functions])
    return _OneBlasThread([(g, s) for g, s, _ in functions])


_hold = None


def blas_hold():
    """The context manager that holds every loaded BLAS at one thread while
    any native call is inside it; made at the first call, when the BLAS
    libraries the kernels use (SciPy's, NumPy's) are loaded."""
    global _hold
    if _hold is None:
        _hold = _make_blas_hold()
    return _hold


def run_parts(fn, n):
    """``[fn(0), ..., fn(n-1)]``, on up to ``call_threads()`` threads: an
    OpenMP team (``_ext.team_run``) where each part runs on one thread, else
    Python threads, which can run parts that start teams of their own."""
    threads = min(n, call_threads())
    if threads == 1:
        return [fn(k) for k in range(n)]
    if TEAM_PARTS and _team_run is not None and _openmp_ok and call_threads() <= n:
        return _run_on_team(fn, n, threads)
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers < threads:
            _pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fastrnn")
        pool = _pool
    # the caller runs part 0 itself: one thread handed off, not two
    futures = [pool.submit(fn, k) for k in range(1, n)]
    first = fn(0)
    return [first] + [f.result() for f in futures]


def _run_on_team(fn, n, threads):
    """``run_parts`` on an OpenMP team; the first part's error (by k) is raised."""
    results, errors = [None] * n, []

    def part(k):
        try:
            results[k] = fn(k)
        except BaseException as e:      # noqa: B036 (raised below, on the caller's thread)
            errors.append((k, e))
    _team_run.run(part, n, threads)
    if errors:
        raise min(errors, key=lambda ke: ke[0])[1]
    return results


# -- OpenMP teams, and fork --------------------------------------------------
#
# libgomp's threads do not survive fork: a child forked after the forking
# thread ran an OpenMP team, fastrnn's or torch's (the same libgomp), waits
# forever for them at its own first team (a forked child's LSTM latency call
# hung after the parent's had run; so did one after a torch product). So the
# parent lets that thread's idle OpenMP threads exit just before it forks
# (``_ext.release_openmp_threads``), and the child starts teams of its own.
# Where that fails (a libgomp older than OpenMP 5.0), the child runs every
# part of a call on its calling thread or on Python threads of its own:
# slower, and the same bits (the parts depend on the shapes only). The
# split batch's pool threads stay in the parent too: the child makes its own.

_openmp_ok = True           # False in a child forked without releasing the threads
_released_at_fork = True    # did the last fork's release work?


def team_size(n_parts):
    """Threads for an OpenMP team that runs ``n_parts`` fixed parts: up to
    ``call_threads()``, or 1 (no team) where teams are unusable
    (``openmp_usable``)."""
    if not _openmp_ok:
        return 1
    return max(1, min(call_threads(), n_parts))


def plan_context():
    """What a call's decisions depend on besides its shapes and settings:
    the threads it may use, and whether it may start OpenMP teams. A plan
    kept for later calls (``SplitBackend._planned``) is kept under it."""
    return call_threads(), _openmp_ok


def openmp_usable():
    """May this process start OpenMP teams? Not in a child forked where its
    parent could not release its OpenMP threads first."""
    return _openmp_ok


def _before_fork():
    global _released_at_fork
    _released_at_fork = False       # unless the release returns, and says so
    _released_at_fork = _ext.release_openmp_threads()


def _after_fork_in_child():
    global _pool, _pool_lock, _openmp_ok
    _pool = None                # its threads stayed in the parent
    _pool_lock = threading.Lock()
    if _hold is not None:
        _hold.reset()
    if not _released_at_fork:
        _openmp_ok = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


# -- the backend interface, split -------------------------------------------

def _ranges(cell, T, B, I, params):
    """``parts`` for a call of ``cell`` with ``params`` over (T, B, I) input."""
    G = {"lstm": 4, "gru": 3}.get(cell, 1)
    return parts(B, T, I, params[1].shape[0] // G, G)


#: the shapes a frozen layer's direction keeps its decisions for (``SplitBackend._planned``)
MAX_PLANS = 64


def _rows(a, b0, b1, axis):
    """A contiguous copy of rows [b0, b1) of ``a`` along ``axis`` (None stays None)."""
    if a is None:
        return None
    part = a[(slice(None),) * axis + (slice(b0, b1),)]
    out = _buffers.empty(part.shape, part.dtype)
    out[...] = part
    return out


class SplitBackend:
    """A backend whose calls run the batch in parts (see ``parts``).

    Wraps a backend module with the interface of ``fastrnn._backends`` and is
    used in its place; everything but ``forward`` and ``backward`` is the
    wrapped module's.
    """

    def __init__(self, module):
        self.module = module

    def __getattr__(self, name):
        return getattr(self.module, name)

    def forward(self, cell, x, state0, params, lengths, reverse, training):
        if not training and isinstance(params, FrozenParams):
            # a frozen layer's inference: this shape's decisions, made once
            run = self._planned(cell, x.dtype, *x.shape, params, reverse)
            with blas_hold():
                return run(x, state0, lengths)
        with blas_hold():
            return self._forward(cell, x, state0, params, lengths, reverse, training)

    def backward(self, cell, data, dy, dstate_n):
        with blas_hold():
            return self._backward(cell, data, dy, dstate_n)

    def _shared(self, prepare, ranges, cell, dtype, T, w, **options):
        """``{"prepared": ...}``: the wrapped backend's ``prepare`` (its
        ``prepare_forward`` or ``prepare_backward``, with ``options``), run
        once for all the parts with the largest part's size; {} if the
        backend has none."""
        fn = getattr(self.module, prepare, None)
        if fn is None:
            return {}
        largest = max(b1 - b0 for b0, b1 in ranges)
        return {"prepared": fn(cell, dtype, T, largest, w, **options)}

    def _whole(self, cell, dtype, T, B, I, params, training):
        """The wrapped forward's keyword arguments for a call whose batch is
        not split, or None: split it (``parts``)."""
        units = getattr(self.module, "unit_parts", None)
        n_units = units(cell, dtype, T, B, params, training) if units else 0
        if n_units:
            # the backend splits the hidden units across the threads instead
            return dict(unit_parts=n_units)
        if len(_ranges(cell, T, B, I, params)) > 1:
            return None
        # one core will run the time loop: the backend may project the
        # inputs ahead of it on another thread, or share the projections
        # among the threads
        options = {}
        ahead = getattr(self.module, "pipeline_chunk", None)
        if ahead is not None:
            options["pipe_chunk"] = ahead(cell, training, T, B, I, params[0].shape[0])
        fn = getattr(self.module, "projection_parts", None)
        if fn is not None and not options.get("pipe_chunk"):
            options["proj_parts"] = fn(cell, training, T, B, I, params[0].shape[0])
        return options

    def _forward(self, cell, x, state0, params, lengths, reverse, training):
        T, B, I = x.shape
        options = self._whole(cell, x.dtype, T, B, I, params, training)
        if options is not None:
            return self.module.forward(cell, x, state0, params, lengths, reverse, training,
                                       **options)
        return self._split(cell, x, state0, params, lengths, reverse, training)

    def _split(self, cell, x, state0, params, lengths, reverse, training):
        """The forward of a batch split into ``parts``, each on its own thread."""
        T, B, I = x.shape
        ranges = _ranges(cell, T, B, I, params)
        shared = self._shared("prepare_forward", ranges, cell, x.dtype, T, params,
                              training=training)
        # each part writes its rows of y in place: no concatenation afterwards
        y = _buffers.empty((T, B, params[1].shape[1]), x.dtype)

        def part(k):
            b0, b1 = ranges[k]
            return self.module.forward(
                cell, _rows(x, b0, b1, 1), tuple(_rows(s, b0, b1, 0) for s in state0),
                params, _rows(lengths, b0, b1, 0), reverse, training, y=y[:, b0:b1],
                **shared)
        results = run_parts(part, len(ranges))
        state_n = tuple(np.concatenate([r[1][i] for r in results])
                        for i in range(len(results[0][1])))
        data = None
        if training:
            data = {"split": ranges, "parts": [r[2] for r in results]}
        return y, state_n, data

    def _planned(self, cell, dtype, T, B, I, params, reverse):
        """``run(x, state0, lengths)``: an inference call of a (T, B, I)
        ``dtype`` x on frozen ``params``, with the decisions ``_forward`` would make, made
        at the first such call and kept with ``params`` (as the operands
        derived from them are): which split, which options, and the
        backend's ``ForwardCall`` with its kernel and operands. The threads a
        call may use are part of the key; the module settings are read once."""
        key = (cell, T, B, reverse, plan_context())
        plans = params.plans
        run = plans.get(key)
        if run is not None:
            return run
        options = self._whole(cell, dtype, T, B, I, params, False)
        if options is None:
            def run(x, state0, lengths):
                return self._split(cell, x, state0, params, lengths, reverse, False)
        else:
            run = self.module.ForwardCall(cell, dtype, T, B, params, reverse, False, **options)
        if len(plans) >= MAX_PLANS:     # a stream of ever new shapes: keep the newest
            plans.clear()
        plans[key] = run
        return run

    def _backward(self, cell, data, dy, dstate_n):
        if "split" not in data:
            # one core ran the forward's time loop and will run the backward's:
            # the backend may share the GEMMs after it among the threads
            fn = getattr(self.module, "gradient_parts", None)
            if fn is None:
                return self.module.backward(cell, data, dy, dstate_n)
            x, w_hh = data["x"], data["w_hh"]
            T, B, I = x.shape
            n = fn(cell, T, B, I, *w_hh.shape)
            extra = {}
            behind = getattr(self.module, "gradient_chunk", None)
            if behind is not None and not data.get("unit_parts"):
                # or compute them behind the loop on another thread
                extra["grad_chunk"] = behind(cell, T, B, I, *w_hh.shape)
            return self.module.backward(cell, data, dy, dstate_n, grad_parts=n, **extra)
        ranges = data["split"]
        first = data["parts"][0]
        shared = self._shared("prepare_backward", ranges, cell, first["x"].dtype,
                              first["x"].shape[0], first["w_hh"])

        T, _, I = first["x"].shape
        dx = _buffers.empty((T, ranges[-1][1], I), first["x"].dtype)

        def part(k):
            # a part reads its rows of dy in place, and copies its dx into its
            # rows of the whole batch's, on its own thread
            b0, b1 = ranges[k]
            result = self.module.backward(cell, data["parts"][k],
                                          None if dy is None else dy[:, b0:b1],
                                          tuple(_rows(d, b0, b1, 0) for d in dstate_n),
                                          **shared)
            dx[:, b0:b1] = result[0]
            return result
        results = run_parts(part, len(ranges))
        dstate0 = tuple(np.concatenate([r[1][i] for r in results])
                        for i in range(len(results[0][1])))
        dparams = list(results[0][2])
        for r in results[1:]:           # a fixed order: the same bits every run
            for i, g in enumerate(r[2]):
                if g is not None:
                    np.add(dparams[i], g, out=dparams[i])
        return dx, dstate0, tuple(dparams)
