# cython: language_level=3
"""BLAS held at one thread while fastrnn's native calls run, in C.

``fastrnn._parallel._OneBlasThread`` holds every loaded BLAS at one thread
around each call; where each is an OpenBLAS whose thread-count functions it
can call directly, it hands their addresses to a :class:`Hold`, which calls
them here instead of through ctypes: 0.18 us to enter and leave against 2.2
(``_parallel._make_blas_hold``).
"""
from libc.stdint cimport uintptr_t

ctypedef int (*get_fn)() noexcept nogil
ctypedef void (*set_fn)(int) noexcept nogil

cdef enum:
    MAX_LIBRARIES = 8


cdef class Hold:
    """A context manager: every BLAS of ``functions`` at one thread while any
    holder is inside, the counts it found restored when the last one leaves.

    ``functions``: ``[(get, set), ...]``, the addresses of each library's
    ``openblas_get_num_threads`` and ``openblas_set_num_threads``. Entering
    and leaving run under the GIL and never release it, so the count of
    holders needs no lock of its own.
    """
    cdef get_fn gets[MAX_LIBRARIES]
    cdef set_fn sets[MAX_LIBRARIES]
    cdef int saved[MAX_LIBRARIES]
    cdef int n
    cdef int active

    def __cinit__(self, functions):
        functions = list(functions)
        if len(functions) > MAX_LIBRARIES:
            raise ValueError(f"at most {MAX_LIBRARIES} BLAS libraries, got {len(functions)}")
        self.n = 0
        for get, set_ in functions:
            if not get or not set_:
                raise ValueError("a BLAS's thread-count functions must have addresses, got "
                                 f"{get!r}, {set_!r}")
            self.gets[self.n] = <get_fn> <uintptr_t> get
            self.sets[self.n] = <set_fn> <uintptr_t> set_
            self.n += 1
        self.active = 0

    def __enter__(self):
        cdef int i
        if self.active == 0:
            for i in range(self.n):
                self.saved[i] = self.gets[i]()
                if self.saved[i] != 1:
                    self.sets[i](1)
        self.active += 1
        return self

    def __exit__(self, *exc):
        cdef int i
        self.active -= 1
        if self.active == 0:
            for i in range(self.n):
                if self.saved[i] != 1:
                    self.sets[i](self.saved[i])
        return False

    def reset(self):
        """In a forked child: the holders were the parent's threads, which
        will never leave; the counts they found are restored."""
        cdef int i
        if self.active > 0:
            for i in range(self.n):
                if self.saved[i] != 1:
                    self.sets[i](self.saved[i])
        self.active = 0

    @property
    def holders(self):
        """Calls inside the hold now."""
        return self.active
