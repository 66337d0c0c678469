# cython: language_level=3
"""What the CPU running us can do, for choosing between builds of the kernels.

The kernel modules are built three times on x86-64 (see setup.py): for the
baseline ISA every x86-64 runs, for x86-64-v3 (AVX2, FMA, ...), where the
fused element-wise loops run twice as wide with fused multiply-adds, and for
x86-64-v4 (AVX-512), where the packed recurrent product runs 16 wide.
"""

cdef extern from *:
    """
    static int fr_cpu_x86_64_v3(void)
    {
    #if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
        __builtin_cpu_init();
    #  if !defined(__clang__) && __GNUC__ >= 12
        /* the level as GCC defines it, OS support for the AVX state included */
        return __builtin_cpu_supports("x86-64-v3") != 0;
    #  else
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
            && __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("f16c");
    #  endif
    #else
        return 0;
    #endif
    }
    """
    int fr_cpu_x86_64_v3() nogil

cdef extern from *:
    """
    static int fr_cpu_x86_64_v4(void)
    {
    #if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
        __builtin_cpu_init();
    #  if !defined(__clang__) && __GNUC__ >= 12
        return __builtin_cpu_supports("x86-64-v4") != 0;
    #  else
        return fr_cpu_x86_64_v3() && __builtin_cpu_supports("avx512f")
            && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512cd")
            && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
    #  endif
    #else
        return 0;
    #endif
    }
    """
    int fr_cpu_x86_64_v4() nogil


def supports_x86_64_v3():
    """True if this CPU (and OS) can run code built with ``-march=x86-64-v3``."""
    return bool(fr_cpu_x86_64_v3())


def supports_x86_64_v4():
    """True if this CPU (and OS) can run code built with ``-march=x86-64-v4``."""
    return bool(fr_cpu_x86_64_v4())
