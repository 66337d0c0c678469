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
    void fr_team_spread()


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
        fr_team_spread()
        k = fr_team_rank()
        while k < n:
            call_alone(<PyObject*> fn, k)
            k = k + fr_team_size()


cdef extern from *:
    """
    #if defined(__linux__) && defined(_GNU_SOURCE) && defined(CPU_COUNT) && defined(_OPENMP)
    #include <sched.h>
    /* The second thread of a team of two puts itself on the master's CPU,
     * as a wake there would, then calls fr_team_spread. out: the master's CPU,
     * this thread's CPU before and after, and whether its CPUs are all of
     * them again (1) afterwards. */
    static void fr_spread_trial(int* out)
    {
        fr_barrier bar;
        fr_barrier_init(&bar, 1);
        #pragma omp parallel num_threads(2)
        {
            fr_team_spread();           /* the master records its CPU */
            fr_barrier_wait(&bar);
            if (omp_get_thread_num() == 1 && omp_get_num_threads() == 2) {
                cpu_set_t all, one;
                int master = out[0] = __atomic_load_n(&fr_master_cpu, __ATOMIC_RELAXED);
                sched_getaffinity(0, sizeof all, &all);
                CPU_ZERO(&one);
                CPU_SET(master, &one);
                sched_setaffinity(0, sizeof one, &one);
                sched_setaffinity(0, sizeof all, &all);
                out[1] = sched_getcpu();
                fr_team_spread();
                out[2] = sched_getcpu();
                cpu_set_t now;
                sched_getaffinity(0, sizeof now, &now);
                out[3] = CPU_EQUAL(&now, &all);
            }
            fr_barrier_wait(&bar);
        }
    }
    #else
    static void fr_spread_trial(int* out) { out[0] = out[1] = out[2] = out[3] = -1; }
    #endif
    """
    void fr_spread_trial(int* out) nogil


def _spread_trial():
    """For the tests: (the master's CPU, the second thread's CPU once it has
    put itself there, its CPU after ``fr_team_spread``, whether its CPUs are
    all of them again), or -1s where this build cannot spread."""
    cdef int out[4]
    with nogil:
        fr_spread_trial(out)
    return tuple(out[k] for k in range(4))
