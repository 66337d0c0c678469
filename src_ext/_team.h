/* The OpenMP team a unit-split kernel runs on (src_ext/lstm.pyx): its size,
 * this thread's rank and a barrier, called from inside Cython's
 * ``with parallel()`` block. Without OpenMP the block runs on one thread: a
 * team of one, and the barrier does nothing.
 *
 * The barrier meets once a step. libgomp's took 247-458 ns a meeting on the
 * Zen 4 development machine (median 279 over 12 runs of
 * benchmarks/team_barrier.c: two threads doing nothing else), where a round
 * trip between the cores takes 65 ns (benchmarks/two_cores.c); the spinning
 * barrier below took 27-164 ns (median 32). A
 * 100-step unit-split call meets 100 times in its forward and 100 in its
 * backward. It spins only a while, then yields the core, so that a team
 * sharing its cores with other work still makes progress. */
#ifndef FASTRNN_TEAM_H
#define FASTRNN_TEAM_H
#ifdef _OPENMP
#include <omp.h>
#if defined(__GNUC__) && (defined(__linux__) || defined(__APPLE__))
#include <sched.h>
#define FR_SPIN_BARRIER 1
#endif

/* a barrier shared by one team: fr_barrier_init before the parallel region,
 * fr_barrier_wait by every thread of the team inside it */
typedef struct {
    int arrived;    /* threads at the barrier in this round */
    int round;      /* rounds completed: the waiting threads watch it */
    int spin;       /* 0: OpenMP's own barrier */
} fr_barrier;

/* pauses before a waiting thread starts yielding its core: tens to hundreds
 * of microseconds, far longer than a step of any call that splits its units */
#define FR_SPINS (1 << 14)

static inline void fr_barrier_init(fr_barrier* b, int spin)
{
    b->arrived = 0;
    b->round = 0;
    b->spin = spin;
}

static inline void fr_pause(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline void fr_barrier_wait(fr_barrier* b)
{
    int n = omp_get_num_threads();
    if (n <= 1)
        return;
#ifdef FR_SPIN_BARRIER
    if (b->spin) {
        /* the round can only move on once this thread has arrived */
        int r = __atomic_load_n(&b->round, __ATOMIC_RELAXED);
        /* acq_rel: the last to arrive acquires every thread's writes of
         * the step, and its release of the next round hands them on */
        if (__atomic_fetch_add(&b->arrived, 1, __ATOMIC_ACQ_REL) == n - 1) {
            __atomic_store_n(&b->arrived, 0, __ATOMIC_RELAXED);
            __atomic_store_n(&b->round, r + 1, __ATOMIC_RELEASE);
        } else {
            for (long i = 0; __atomic_load_n(&b->round, __ATOMIC_ACQUIRE) == r; i++) {
                if (i < FR_SPINS)
                    fr_pause();
                else
                    sched_yield();
            }
        }
        return;
    }
#endif
    _Pragma("omp barrier")
}

/* A counter one thread of a team raises and another waits on: the input
 * projections run ahead of the time loop on a second thread
 * (src_ext/_rnn_common.pxd, ``project_ahead``), which publishes the chunks
 * it has projected, and the loop the chunks it is done with. The waiting
 * spins, then yields, as the barrier's does. A third counter hands the
 * chunks out (fr_take_next, fr_take): the loop projects a chunk itself when
 * it gets there before the other thread has taken it, so that a thread
 * that lost its core to another process holds it up less. */
#ifdef FR_SPIN_BARRIER
#define FR_HANDOVER 1
static inline void fr_publish(long* counter, long value)
{
    /* release: what this thread wrote before reaches the one that sees it */
    __atomic_store_n(counter, value, __ATOMIC_RELEASE);
}

static inline void fr_wait_for(const long* counter, long value)
{
    for (long i = 0; __atomic_load_n(counter, __ATOMIC_ACQUIRE) < value; i++) {
        if (i < FR_SPINS)
            fr_pause();
        else
            sched_yield();
    }
}

static inline long fr_read(const long* counter)
{
    return __atomic_load_n(counter, __ATOMIC_ACQUIRE);
}

/* the next of the chunks handed out one by one through ``counter`` */
static inline long fr_take_next(long* counter)
{
    return __atomic_fetch_add(counter, 1, __ATOMIC_ACQ_REL);
}

/* take chunk ``k`` if it is the next one nobody has taken */
static inline int fr_take(long* counter, long k)
{
    return __atomic_compare_exchange_n(counter, &k, k + 1, 0, __ATOMIC_ACQ_REL,
                                       __ATOMIC_ACQUIRE);
}
#endif

static inline int fr_team_size(void) { return omp_get_num_threads(); }
static inline int fr_team_rank(void) { return omp_get_thread_num(); }

/* Called first by every thread of a team: a thread that the master's wake
 * placed on the master's own CPU moves to another one at once.
 *
 * Why: after the process slept (10 ms or more), the kernel woke the team's
 * sleeping thread onto the CPU of the thread that woke it, and the two then
 * shared that CPU, the master spinning at the barrier, for 10-14 ms before
 * the other CPU took one of them: a unit-split LSTM or GRU call of 50-100
 * steps took 9.8-13.9 ms after 10-30 ms of sleep against 0.25-0.5 with the
 * threads pinned to CPUs of their own (GOMP_CPU_AFFINITY="0 1";
 * benchmarks/bench_idle_gaps.py). Pinning them for good would pin the
 * user's own thread (the master) too, so a thread that finds itself there
 * narrows its CPUs to the others, which moves it now, and widens them again.
 *
 * The master's CPU passes through a variable of this module's: the master
 * writes it first thing in the region, a few microseconds before a waking
 * thread reads it; a thread that was spinning may read the last region's,
 * but it runs on a CPU of its own already. Where the process may run on one
 * CPU only, nothing moves. */
#if defined(__linux__) && defined(_GNU_SOURCE) && defined(CPU_COUNT)
static int fr_master_cpu = -1;

static inline void fr_team_spread(void)
{
    int cpu = sched_getcpu();
    if (omp_get_thread_num() == 0) {
        __atomic_store_n(&fr_master_cpu, cpu, __ATOMIC_RELAXED);
        return;
    }
    int master = __atomic_load_n(&fr_master_cpu, __ATOMIC_RELAXED);
    if (cpu < 0 || cpu != master)
        return;
    cpu_set_t all, others;
    if (sched_getaffinity(0, sizeof all, &all) != 0)
        return;
    others = all;
    CPU_CLR(master, &others);
    if (CPU_COUNT(&others) == 0)
        return;
    if (sched_setaffinity(0, sizeof others, &others) == 0)
        sched_setaffinity(0, sizeof all, &all);
}
#else
static inline void fr_team_spread(void) {}
#endif
#else
typedef struct { int spin; } fr_barrier;
static inline void fr_barrier_init(fr_barrier* b, int spin) { b->spin = spin; }
static inline void fr_barrier_wait(fr_barrier* b) { (void)b; }
static inline int fr_team_size(void) { return 1; }
static inline int fr_team_rank(void) { return 0; }
static inline void fr_team_spread(void) {}
#endif
#ifndef FR_HANDOVER
/* no atomics to hand chunks over with: a kernel never starts a second
 * thread for them (fr_handover), and these are never called */
#define FR_HANDOVER 0
static inline void fr_publish(long* counter, long value) { *counter = value; }
static inline void fr_wait_for(const long* counter, long value) { (void)counter; (void)value; }
static inline long fr_read(const long* counter) { return *counter; }
static inline long fr_take_next(long* counter) { return (*counter)++; }
static inline int fr_take(long* counter, long k) { return *counter == k ? (*counter)++, 1 : 0; }
#endif
#endif
