"""The Numba kernels behind ``backend='numba'`` (see ``fastrnn._numba_backend``).

Everything Numba compiles lives in one module, :mod:`fastrnn._numba.kernels`:
Numba's on-disk cache (``cache=True``) checks only the source file of the
function it loads, and bakes every helper and intrinsic that function calls
into the cached code, so a helper kept in another file could change without
invalidating the cache.
"""
