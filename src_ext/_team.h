/* The OpenMP team a unit-split kernel runs on (src_ext/lstm.pyx): its size,
 * this thread's rank and a barrier, called from inside Cython's
 * ``with parallel()`` block. Without OpenMP the block runs on one thread: a
 * team of one, and the barrier does nothing. */
#ifndef FASTRNN_TEAM_H
#define FASTRNN_TEAM_H
#ifdef _OPENMP
#include <omp.h>
static inline int fr_team_size(void) { return omp_get_num_threads(); }
static inline int fr_team_rank(void) { return omp_get_thread_num(); }
/* an orphaned barrier: it binds to the enclosing parallel region */
static inline void fr_team_barrier(void) { _Pragma("omp barrier") }
#else
static inline int fr_team_size(void) { return 1; }
static inline int fr_team_rank(void) { return 0; }
static inline void fr_team_barrier(void) {}
#endif
#endif
