/* SciPy's OpenBLAS for the C harnesses that time against it: its sgemm,
 * loaded from the path given on the command line, held at one thread. */
#ifndef FASTRNN_BENCH_OPENBLAS_H
#define FASTRNN_BENCH_OPENBLAS_H
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

typedef void (*sgemm_t)(const char*, const char*, const int*, const int*, const int*,
                        const float*, const float*, const int*, const float*, const int*,
                        const float*, float*, const int*);

/* scipy_sgemm_ from argv[1] on one thread; exits with a message otherwise */
static sgemm_t openblas_sgemm(int argc, char** argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s PATH_TO_SCIPY_OPENBLAS\n", argv[0]);
        exit(2);
    }
    void* lib = dlopen(argv[1], RTLD_NOW);
    void (*threads)(int) = lib ? (void (*)(int))dlsym(lib, "scipy_openblas_set_num_threads") : NULL;
    sgemm_t sgemm = lib ? (sgemm_t)dlsym(lib, "scipy_sgemm_") : NULL;
    if (sgemm == NULL || threads == NULL) {
        fprintf(stderr, "no scipy_sgemm_ in %s\n", argv[1]);
        exit(1);
    }
    threads(1);
    return sgemm;
}
#endif
