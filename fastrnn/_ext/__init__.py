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
"""
import ctypes
import os

#: libgomp's spin rounds before an idle thread sleeps, set unless the user
#: set ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY`` themselves
GOMP_SPINCOUNT = 10000


def _spin_briefly(environ=os.environ, load=ctypes.CDLL):
    """Load libgomp with ``GOMP_SPINCOUNT`` set, then take the variable out
    again: libgomp reads its environment once, when it loads, so the kernels
    (which link it) get the setting and the user's environment and child
    processes do not. Nothing happens if libgomp was loaded before (the
    setting would not reach it) or is not there (another OpenMP runtime,
    or a build without OpenMP)."""
    if "GOMP_SPINCOUNT" in environ or "OMP_WAIT_POLICY" in environ:
        return False
    environ["GOMP_SPINCOUNT"] = str(GOMP_SPINCOUNT)
    try:
        load("libgomp.so.1")
    except OSError:
        return False
    finally:
        del environ["GOMP_SPINCOUNT"]
    return True


_spin_briefly()
