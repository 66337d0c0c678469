"""Compiled Cython kernels (built from ``src_ext/*.pyx`` by ``setup.py``).

Importing this package, before any kernel module loads, shortens how long
GNU OpenMP's idle threads spin (``GOMP_SPINCOUNT``). After a unit-split call
(an OpenMP team, ``_cython_backend.unit_parts``) libgomp's second thread
spins for its next region for about 6 ms by default (300,000 rounds); a
split batch's second part, which runs on a Python thread
(``_parallel.run_parts``), then shares its core with it. On the Zen 4
development machine a GRU medium inference call took 14.48 ms right after a
GRU latency call against 7.72 ms after its own kind, and 7.95 against 8.13
with ``GOMP_SPINCOUNT=10000`` (about 0.2 ms of spinning)
(``benchmarks/bench_after_team.py``), which left the unit-split calls as
fast as before. After that the thread sleeps, and waking it costs tens of
microseconds (hundreds after the process slept): a short call that finds it
asleep runs on the calling thread alone (``_cython_backend.IDLE_TEAM_S``).

libgomp reads its environment once, when it loads. If another package
loaded a ``libgomp.so.1`` first (PyTorch's wheels carry one under that
name), the kernels share it and its spin count: then ``SPINS_BRIEFLY`` is
False, unless the environment set a short spin, the idle rule is off, and
importing fastrnn warns (``_warn_long_spin``): a split batch right after any
OpenMP region, torch's own included, took twice its time (GRU medium
inference after a torch product: 12.45 ms importing torch first, 6.37
importing fastrnn first, 6.2-6.6 after its own kind;
``benchmarks/bench_after_team.py --after torch [--torch-first]``).
"""
import ctypes
import os
import warnings

#: libgomp's spin rounds before an idle thread sleeps, set unless the user
#: set ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY`` themselves
GOMP_SPINCOUNT = 10000

_LIBGOMP = "libgomp.so.1"
_SUFFIXES = {"k": 10 ** 3, "m": 10 ** 6, "g": 10 ** 9, "t": 10 ** 12}


def _loaded_before(name=_LIBGOMP):
    """Is the library ``name`` in this process already (RTLD_NOLOAD, where
    the platform has it)?"""
    no_load = getattr(os, "RTLD_NOLOAD", None)
    if no_load is None:
        return False
    try:
        ctypes.CDLL(name, mode=no_load)
    except OSError:
        return False
    return True


def _spin_briefly(environ=os.environ, load=ctypes.CDLL, loaded_before=_loaded_before):
    """Load libgomp with ``GOMP_SPINCOUNT`` set, then take the variable out
    again: libgomp reads its environment once, when it loads, so the kernels
    (which link it) get the setting and the user's environment and child
    processes do not. True if the setting reached libgomp. Nothing happens
    if the user set ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY``, if libgomp
    was loaded before (the setting would not reach it) or if it is not there
    (another OpenMP runtime, or a build without OpenMP)."""
    if "GOMP_SPINCOUNT" in environ or "OMP_WAIT_POLICY" in environ or loaded_before():
        return False
    environ["GOMP_SPINCOUNT"] = str(GOMP_SPINCOUNT)
    try:
        load(_LIBGOMP)
    except OSError:
        return False
    finally:
        del environ["GOMP_SPINCOUNT"]
    return True


def _spin_rounds(environ):
    """libgomp's spin rounds as the environment sets them (its documented
    rules: ``GOMP_SPINCOUNT`` a count with an optional k/M/G/T suffix or
    INFINITE/INFINITY, else 0 for ``OMP_WAIT_POLICY=passive``), or None
    where it does not, or asks for long spinning (active, or libgomp's
    default of 300,000)."""
    text = environ.get("GOMP_SPINCOUNT", "").strip().lower()
    if text:
        scale = _SUFFIXES.get(text[-1], 1)
        digits = text[:-1] if scale > 1 else text
        return int(digits) * scale if digits.isdigit() else None
    if environ.get("OMP_WAIT_POLICY", "").strip().lower() == "passive":
        return 0
    return None


def _sleeps_briefly(set_here, environ=os.environ):
    """Do idle OpenMP threads sleep after spinning at most about
    ``GOMP_SPINCOUNT`` rounds: fastrnn set the count (``set_here``) or the
    environment sets one as short?"""
    if set_here:
        return True
    rounds = _spin_rounds(environ)
    return rounds is not None and rounds <= GOMP_SPINCOUNT


def _warn_long_spin(preloaded, spins_briefly, environ=os.environ):
    """Warn when a libgomp loaded before fastrnn spins long and the user
    did not ask for that (no ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY``)."""
    if preloaded and not spins_briefly and not (
            "GOMP_SPINCOUNT" in environ or "OMP_WAIT_POLICY" in environ):
        warnings.warn(
            "fastrnn: libgomp.so.1 was loaded before fastrnn (importing torch first does "
            "that) and its idle OpenMP threads spin for about 6 ms after every parallel "
            "region, taking a core from fastrnn's split batches, which then run up to 2x "
            "slower. Import fastrnn before torch, or set GOMP_SPINCOUNT=10000 in the "
            "environment before Python starts (the README's 'Sharing the cores with "
            "PyTorch' has the trade).", RuntimeWarning, stacklevel=3)
        return True
    return False


#: ``omp_pause_soft`` of OpenMP 5.0's ``omp_pause_resource_t``
_OMP_PAUSE_SOFT = 1


def release_openmp_threads(loaded_before=_loaded_before, load=ctypes.CDLL):
    """Let the calling thread's idle OpenMP threads exit (OpenMP 5.0's
    ``omp_pause_resource_all``, libgomp from GCC 9): its next team starts new
    ones. True if they are gone or there is no libgomp in the process, False
    if libgomp is there but could not release them (older than 5.0, or
    called inside a parallel region).

    For fork: libgomp's threads do not survive it, but the forking thread's
    record of them does, and a child's first team waits for them forever. A
    pool released just before the fork leaves the child nothing stale. Every
    team of the thread counts, torch's among them (the same libgomp)."""
    if not loaded_before():
        return True
    try:
        pause = load(_LIBGOMP, mode=os.RTLD_NOLOAD).omp_pause_resource_all
    except (OSError, AttributeError):
        return False
    pause.argtypes = [ctypes.c_int]
    pause.restype = ctypes.c_int
    return pause(_OMP_PAUSE_SOFT) == 0


_preloaded = _loaded_before()
#: do the kernels' idle OpenMP threads sleep after about 0.2 ms of spinning
#: (``_sleeps_briefly``)? The idle rule (``_cython_backend.IDLE_TEAM_S``)
#: holds only then
SPINS_BRIEFLY = _sleeps_briefly(_spin_briefly(loaded_before=lambda: _preloaded))
_warn_long_spin(_preloaded, SPINS_BRIEFLY)
