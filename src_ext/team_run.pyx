# cython: language_level=3
"""Python callables run by an OpenMP team: the parts of a split batch.

A split batch (``fastrnn._parallel.run_parts``) ran its second part on a
Python thread of its own. The unit split's OpenMP team, and any other
team of the same libgomp (torch's), leave an idle thread spinning for its
next region for a while; a Python thread then shared a core with it. Run
by the team instead, the parts take that very thread: nothing spins beside
them, whatever libgomp's spin count.
"""
from cpython.object cimport PyObject
from cython.parallel cimport parallel

cdef extern from "_team.h" nogil:
    int fr_team_size()
    int fr_team_rank()


cdef void call_alone(PyObject* fn, int k) noexcept nogil:
    """fn(k) in a team of one of its own: a kernel that fn calls with a team
    of one starts no region, and takes omp_get_num_threads() and
    omp_get_thread_num() for its team's (src_ext/_team.h), which inside the
    outer team would be that team's."""
    with parallel(num_threads=1):
        with gil:
            (<object> fn)(k)


def run(fn, int n, int threads):
    """Call ``fn(k)`` for k in range(n) on an OpenMP team of up to
    ``threads``, the calling thread one of them: thread r calls k = r, r + size,
    ... (all of them on the calling thread in a build without OpenMP, or
    where the team comes out smaller). ``fn`` must not raise: the caller
    keeps its results and errors. Each call holds the GIL while it runs
    Python; the kernels it calls release it. Each part has one thread: a
    kernel there must not ask for a team of more."""
    cdef int k
    if n < 1:
        return
    with nogil, parallel(num_threads=max(1, min(n, threads))):
        k = fr_team_rank()
        while k < n:
            call_alone(<PyObject*> fn, k)
            k = k + fr_team_size()
