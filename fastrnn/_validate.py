"""Argument checks shared by every public function.

Every check raises a ``TypeError`` (wrong kind of object or dtype) or a
``ValueError`` (wrong shape or value) whose message names the argument, what
was expected and what was received. Arrays come back C-contiguous, aligned and
in native byte order in the working dtype, copied at most once. (A byte-swapped
float32 array is float32: it is accepted and converted like a strided one.)
"""
import operator

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
#: the kernels' BLAS (SciPy's, LP64) takes 32-bit sizes: a GEMM over all T*B
#: rows with more would be handed a truncated size and compute garbage
BLAS_INT_MAX = 2**31 - 1


def _describe(a):
    return f"shape {tuple(a.shape)} and dtype {a.dtype}"


def as_array(name, value):
    """``value`` as a plain ndarray in native byte order, or a TypeError naming ``name``.

    Not copied unless it is not an array yet or its bytes are swapped. A
    subclass (np.matrix, say) is viewed as a plain array; a masked array is
    refused, as SciPy's linear algebra does: its masked values would be
    computed with.
    """
    if type(value) is np.ndarray:       # the common case, first: calls of ~40 us check ~10 arrays
        return value if value.dtype.isnative else native(value)
    if isinstance(value, np.ndarray):
        if isinstance(value, np.ma.MaskedArray):
            raise TypeError(f"{name} must not be a masked array: fastrnn would compute with "
                            f"the masked values; pass lengths= for padded steps, or "
                            f"{name}.filled(0)")
        if type(value) is not np.ndarray:
            value = value.view(np.ndarray)
        return native(value)
    if hasattr(value, "__array__") or isinstance(value, (list, tuple)):
        try:
            return native(np.asarray(value))
        except Exception as exc:  # ragged lists and the like
            raise TypeError(f"{name} must be array-like, got {type(value).__name__}: {exc}") from None
    raise TypeError(f"{name} must be a NumPy array, got {type(value).__name__}")


def native(a):
    """``a``, or a copy in native byte order if its numbers are byte-swapped."""
    if a.dtype.isnative or a.dtype.fields is not None:
        return a
    return a.astype(a.dtype.newbyteorder("="))


def contiguous(a, dtype=None):
    """``a`` C-contiguous and aligned (the kernels read it through typed
    pointers), copied only if it is not both already."""
    if a.flags.c_contiguous and a.flags.aligned and (dtype is None or a.dtype == dtype):
        return a
    return np.array(a, dtype=dtype, order="C")


def working_dtype(x):
    """The dtype every array of a call must share: the dtype of ``x``."""
    x = as_array("x", x)
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"x must be float32 or float64, got dtype {x.dtype}; "
                        "cast it with x.astype(np.float32)")
    return x.dtype


def float_array(name, value, shape, dtype, hint=""):
    """Check ``value`` against ``shape`` (a tuple with ints and names) and ``dtype``.

    Returns a C-contiguous array of exactly ``dtype``. ``hint`` follows the
    expected shape in the error message.
    """
    a = as_array(name, value)
    if a.dtype != dtype:
        if a.dtype.kind == "f":
            raise TypeError(f"{name} must have dtype {dtype} (the dtype of x), "
                            f"got {a.dtype}")
        raise TypeError(f"{name} must be a float array of dtype {dtype}, got dtype {a.dtype}")
    if a.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}{hint}, got {_describe(a)}")
    return contiguous(a)


def sequence_input(x):
    """``x`` as a C-contiguous (T, B, I) float array."""
    x = as_array("x", x)
    working_dtype(x)
    if x.ndim != 3:
        raise ValueError(f"x must be 3-D (T, B, I), time-major; got {_describe(x)}")
    T, B, I = x.shape
    if T * B > BLAS_INT_MAX or I > BLAS_INT_MAX:
        raise ValueError(f"x must have at most 2**31 - 1 rows T*B and features I (BLAS's "
                         f"32-bit sizes; split the batch or the sequence), got {_describe(x)}")
    return contiguous(x)


def lengths_array(lengths, T, B):
    """``lengths`` as a (B,) intp array with 0 <= lengths[b] <= T, or None."""
    if lengths is None:
        return None
    a = as_array("lengths", lengths)
    # an empty list has no values to be integers: NumPy makes it float64
    if a.dtype.kind not in "iu" and not (a.size == 0 and a.dtype.kind == "f"):
        raise TypeError(f"lengths must be an integer array, got dtype {a.dtype}")
    if a.shape != (B,):
        raise ValueError(f"lengths must have shape ({B},) (one per sequence of x), "
                         f"got shape {tuple(a.shape)}")
    if B and (a.min() < 0 or a.max() > T):
        raise ValueError(f"lengths must lie in [0, T={T}], got values in "
                         f"[{a.min()}, {a.max()}]")
    return contiguous(a, np.intp)


def flag(name, value):
    """A bool argument; rejects strings and arrays that would be truthy by accident."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    try:
        return bool(operator.index(value))
    except TypeError:
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}") from None


def layer_params(n_gates, x, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr=None):
    """Check one layer's parameters against ``x``.

    Returns ``(H, (weight_ih, weight_hh, bias_ih, bias_hh), has_bias)``; missing
    biases (both None, as with PyTorch's ``bias=False``) come back as zeros.
    With ``weight_hr`` (an LSTM projection, (P, H) with 0 < P < H) ``weight_hh``
    must be (G*H, P) and the tuple gains ``weight_hr`` as a fifth entry.
    """
    dtype = x.dtype
    I = x.shape[2]
    w_hh = as_array("weight_hh", weight_hh)
    if weight_hr is None:
        if w_hh.ndim != 2 or w_hh.shape[1] < 1 or w_hh.shape[0] != n_gates * w_hh.shape[1]:
            raise ValueError(f"weight_hh must have shape ({n_gates}*H, H) with H >= 1, "
                             f"got {_describe(w_hh)}{_projected_hint(n_gates, w_hh)}")
        H = P = w_hh.shape[1]
        if n_gates * H > BLAS_INT_MAX:
            raise ValueError(f"weight_hh must have at most 2**31 - 1 rows G*H (BLAS's 32-bit "
                             f"sizes), got {_describe(w_hh)}")
    else:
        w_hr = projection_weight(weight_hr, n_gates, w_hh, dtype)
        P, H = w_hr.shape
    w_hh = float_array("weight_hh", w_hh, (n_gates * H, P), dtype,
                       "" if weight_hr is None else
                       f" = ({n_gates}*H, P) for weight_hr of shape (P, H) = ({P}, {H})")
    w_ih = float_array("weight_ih", weight_ih, (n_gates * H, I), dtype)
    if (bias_ih is None) != (bias_hh is None):
        given, missing = ("bias_ih", "bias_hh") if bias_hh is None else ("bias_hh", "bias_ih")
        raise ValueError(f"bias_ih and bias_hh must both be given or both be None (bias=False), "
                         f"got {given} but {missing}=None")
    has_bias = bias_ih is not None
    if has_bias:
        b_ih = float_array("bias_ih", bias_ih, (n_gates * H,), dtype)
        b_hh = float_array("bias_hh", bias_hh, (n_gates * H,), dtype)
    else:
        b_ih = np.zeros(n_gates * H, dtype)
        b_hh = np.zeros(n_gates * H, dtype)
    if weight_hr is None:
        return H, (w_ih, w_hh, b_ih, b_hh), has_bias
    return H, (w_ih, w_hh, b_ih, b_hh, w_hr), has_bias


def _is_projected(n_gates, w_hh):
    """Is ``w_hh`` shaped like a projected LSTM's (G*H, P) with 0 < P < H?"""
    return (w_hh.ndim == 2 and w_hh.shape[0] % n_gates == 0
            and 0 < w_hh.shape[1] < w_hh.shape[0] // n_gates)


def _projected_hint(n_gates, w_hh):
    """For a weight_hh shaped like a projected LSTM's: say what it needs."""
    if n_gates == 4 and _is_projected(n_gates, w_hh):
        return (f"; a ({n_gates}*H, P) weight_hh with P < H needs weight_hr=, "
                f"the (P, H) = ({w_hh.shape[1]}, {w_hh.shape[0] // 4}) projection")
    return ""


_PROJECTION_RULE = "(P, H) with 0 < P < H (P = proj_size, H = hidden_size)"


def projection_weight(weight_hr, n_gates, w_hh, dtype):
    """An LSTM projection ``weight_hr`` (P, H) with 0 < P < H, as PyTorch's ``proj_size``.

    A ``w_hh`` (not yet checked) shaped (G*H, P) with 0 < P < H fixes the
    expected (P, H), as weight_hh fixes H without a projection; otherwise
    ``weight_hr`` alone must have a valid shape, and ``w_hh`` is then checked
    against it.
    """
    w_hr = as_array("weight_hr", weight_hr)
    if _is_projected(n_gates, w_hh):
        H, P = w_hh.shape[0] // n_gates, w_hh.shape[1]
        return float_array("weight_hr", w_hr, (P, H), dtype,
                           f" = {_PROJECTION_RULE}, to match weight_hh of shape "
                           f"({n_gates}*H, P) = {tuple(w_hh.shape)}")
    if w_hr.ndim != 2 or not 0 < w_hr.shape[0] < w_hr.shape[1]:
        raise ValueError(f"weight_hr must have shape {_PROJECTION_RULE}, got {_describe(w_hr)}")
    return float_array("weight_hr", w_hr, w_hr.shape, dtype)


def state(name, value, B, H, dtype, hint=""):
    """An initial state (B, H); None means zeros."""
    if value is None:
        return np.zeros((B, H), dtype)
    return float_array(name, value, (B, H), dtype, hint)


def gradient(name, value, shape, dtype, hint=""):
    """An incoming gradient; None means zero and is passed on as None."""
    if value is None:
        return None
    return float_array(name, value, shape, dtype, hint)
