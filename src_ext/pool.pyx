# cython: language_level=3, boundscheck=False, wraparound=False
"""A cache of the memory behind fastrnn's large arrays, reused from call to call.

A training call of a large layer allocates tens of MiB of workspace and
scratch, and frees them when done. The C library hands blocks that large back
to the kernel (munmap, or trimming a thread's arena), so the next call's first
writes fault and the kernel zeroes every page again: GRU large training with
the process's allocations kept (glibc tunables) ran 213-219 ms against
231-239 by default (three runs each, alternating).

``take`` returns a ``Block``, which NumPy arrays view through the buffer
protocol (``fastrnn._buffers.empty``). When the last array viewing a block
is gone, its memory goes back into this cache instead of to the C library,
and the next request of about that size reuses it. The cache keeps at most
``limit`` bytes (``set_limit``), dropping the least recently freed blocks
beyond that; ``empty`` frees everything it keeps.

Blocks are reported to tracemalloc, in NumPy's domain, while an array can
use them, as NumPy reports its own buffers. Every entry point holds the GIL
(Python calls ``take``; a block is deallocated with the GIL held), which is
what keeps the table consistent.
"""
from cpython.buffer cimport PyBuffer_FillInfo

cdef extern from *:
    """
    #include <stdlib.h>
    #if defined(_WIN32)
    #include <malloc.h>
    #elif defined(__linux__)
    #include <sys/mman.h>
    #endif
    /* Large blocks are aligned to 2 MiB and advised to use huge pages, as
     * NumPy does for its own arrays of 4 MiB or more: the same TLB reach. */
    #define FR_HUGE_MIN ((size_t) 4 << 20)
    static void* fr_block_alloc(size_t size)
    {
        size_t align = size >= FR_HUGE_MIN ? ((size_t) 2 << 20) : 64;
    #if defined(_WIN32)
        return _aligned_malloc(size, align);
    #else
        void* p = NULL;
        if (posix_memalign(&p, align, size) != 0)
            return NULL;
    #if defined(__linux__) && defined(MADV_HUGEPAGE)
        if (size >= FR_HUGE_MIN)
            madvise(p, size, MADV_HUGEPAGE);
    #endif
        return p;
    #endif
    }
    static void fr_block_free(void* p)
    {
    #if defined(_WIN32)
        _aligned_free(p);
    #else
        free(p);
    #endif
    }
    """
    void* fr_block_alloc(size_t size)
    void fr_block_free(void* p)
    int PyTraceMalloc_Track(unsigned int domain, size_t ptr, size_t size)
    int PyTraceMalloc_Untrack(unsigned int domain, size_t ptr)

cdef enum:
    N_ENTRIES = 64              # free blocks kept at most
    NUMPY_TRACE_DOMAIN = 389047  # the tracemalloc domain NumPy reports its buffers in

#: the default ``limit``: the scratch and workspace of a few large calls
DEFAULT_LIMIT = 512 << 20

cdef void* _ptr[N_ENTRIES]
cdef size_t _capacity[N_ENTRIES]
cdef unsigned long long _freed_at[N_ENTRIES]
cdef int _n = 0
cdef size_t _cached = 0
cdef size_t _limit = DEFAULT_LIMIT
cdef unsigned long long _clock = 0


cdef class Block:
    """``nbytes`` of memory, writable through the buffer protocol; back to the
    cache when nothing refers to it any more."""
    cdef void* ptr
    cdef size_t capacity
    cdef Py_ssize_t nbytes

    def __getbuffer__(self, Py_buffer* view, int flags):
        PyBuffer_FillInfo(view, self, self.ptr, self.nbytes, 0, flags)

    def __releasebuffer__(self, Py_buffer* view):
        pass

    def __len__(self):
        return self.nbytes

    def __dealloc__(self):
        if self.ptr != NULL:
            PyTraceMalloc_Untrack(NUMPY_TRACE_DOMAIN, <size_t> self.ptr)
            _keep(self.ptr, self.capacity)
            self.ptr = NULL


cdef void* _remove(int i) noexcept:
    """Take entry i out of the table (the last entry takes its place); its block."""
    global _n, _cached
    cdef void* ptr = _ptr[i]
    _cached -= _capacity[i]
    _n -= 1
    _ptr[i], _capacity[i], _freed_at[i] = _ptr[_n], _capacity[_n], _freed_at[_n]
    return ptr


cdef void _shrink_to(size_t limit, int entries) noexcept:
    """Drop the least recently freed blocks until at most ``limit`` bytes in at
    most ``entries`` entries stay."""
    cdef int i, oldest
    while _n > 0 and (_cached > limit or _n > entries):
        oldest = 0
        for i in range(1, _n):
            if _freed_at[i] < _freed_at[oldest]:
                oldest = i
        fr_block_free(_remove(oldest))


cdef void _keep(void* ptr, size_t capacity) noexcept:
    """A block nothing uses any more: into the cache, or freed if it cannot fit."""
    global _n, _cached, _clock
    if capacity > _limit:
        fr_block_free(ptr)
        return
    _shrink_to(_limit - capacity, N_ENTRIES - 1)
    _clock += 1
    _ptr[_n], _capacity[_n], _freed_at[_n] = ptr, capacity, _clock
    _cached += capacity
    _n += 1


def take(Py_ssize_t nbytes):
    """A ``Block`` of ``nbytes``: the smallest cached one that holds them and
    is at most twice as large (calls of varying lengths reuse each other's),
    else new memory. Its contents are undefined, as ``np.empty``'s."""
    if nbytes < 1:
        raise ValueError(f"nbytes must be positive, got {nbytes}")
    cdef int i, best = -1
    cdef size_t want = <size_t> nbytes
    for i in range(_n):
        if want <= _capacity[i] <= 2 * want and (best < 0 or _capacity[i] < _capacity[best]):
            best = i
    cdef Block block = Block.__new__(Block)
    if best >= 0:
        block.capacity = _capacity[best]
        block.ptr = _remove(best)
    else:
        block.ptr = fr_block_alloc(want)
        if block.ptr == NULL:
            raise MemoryError(f"fastrnn could not allocate {nbytes} bytes")
        block.capacity = want
    block.nbytes = nbytes
    PyTraceMalloc_Track(NUMPY_TRACE_DOMAIN, <size_t> block.ptr, want)
    return block


def cached_bytes():
    """Bytes the cache keeps for reuse (not counting blocks in use)."""
    return _cached


def limit():
    """The most bytes the cache keeps."""
    return _limit


def set_limit(size_t n_bytes):
    """Keep at most ``n_bytes`` of freed memory for reuse (0: none); returns the old limit."""
    global _limit
    old = _limit
    _limit = n_bytes
    _shrink_to(_limit, N_ENTRIES)
    return old


def empty():
    """Free every block the cache keeps."""
    _shrink_to(0, 0)
