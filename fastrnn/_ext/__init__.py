"""Compiled Cython kernels (built from ``src_ext/*.pyx`` by ``setup.py``).

Importing this package, before any kernel module loads, shortens how long
GNU OpenMP's idle threads spin (``GOMP_SPINCOUNT``): libgomp's default is
about 6 ms (300,000 rounds) after every region, here about 0.2 ms (10,000),
so that a core fastrnn is done with goes back to the rest of the program
soon after a call. It was set for a split batch, whose second part ran on a
Python thread beside the spinning one: on the Zen 4 development machine a
GRU medium inference call took 14.48 ms right after a GRU latency call
against 7.72 ms after its own kind (``benchmarks/bench_after_team.py``).
Split batches now run their parts on the OpenMP team itself
(``_parallel.run_parts``) and no longer care (6.42 ms either way, with the
default spin too). After the short spin the thread sleeps, and waking it
costs tens of microseconds (hundreds after the process slept): a short call
that finds it asleep runs on the calling thread alone
(``_cython_backend.IDLE_TEAM_S``).

libgomp reads its environment once, when it loads. If another package
loaded a ``libgomp.so.1`` first (PyTorch's wheels carry one under that
name), the kernels share it and its spin count: then ``SPINS_BRIEFLY`` is
False unless the environment sets a short spin, and the idle rule is off,
as the team is still awake after a gap. Loaded by fastrnn first, torch's
threads spin briefly too: ``benchmarks/bench_torch_after_gap.py`` times
what that costs a torch op after an idle gap.
"""
import ctypes
import os

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


#: ``omp_pause_soft`` of OpenMP 5.0's ``omp_pause_resource_t``
_OMP_PAUSE_SOFT = 1


def release_openmp_threads():
    """Let the calling thread's idle OpenMP threads exit (OpenMP 5.0's
    ``omp_pause_resource_all``, libgomp from GCC 9): its next team starts new
    ones. True if they are gone or there is no libgomp in the process, False
    if libgomp is there but could not release them (older than 5.0, or
    called inside a parallel region).

    For fork: libgomp's threads do not survive it, but the forking thread's
    record of them does, and a child's first team waits for them forever. A
    pool released just before the fork leaves the child nothing stale. Every
    team of the thread counts, torch's among them (the same libgomp)."""
    if not _loaded_before():
        return True
    try:
        pause = ctypes.CDLL(_LIBGOMP, mode=os.RTLD_NOLOAD).omp_pause_resource_all
    except (OSError, AttributeError):
        return False
    pause.argtypes = [ctypes.c_int]
    pause.restype = ctypes.c_int
    return pause(_OMP_PAUSE_SOFT) == 0


#: do the kernels' idle OpenMP threads sleep after about 0.2 ms of spinning
#: (``_sleeps_briefly``)? The idle rule (``_cython_backend.IDLE_TEAM_S``)
#: holds only then
SPINS_BRIEFLY = _sleeps_briefly(_spin_briefly())
