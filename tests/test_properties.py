"""Property-based tests: hypothesis draws the cell, shape, lengths, direction,
biases, projection, dtype and the memory layout of every array, and every
backend must equal the NumPy reference, or raise a clear error for input that
is invalid.

Shapes include the edges (T=0, B=0, I=0, H=1, I=1) and sizes that select each
internal path: several input-projection chunks (T*B > 256 rows), the packed
float32 product (T >= 4, B <= 32), the K-major copy of W_hh (B > 32), a panel
width that does not divide G*H (H=17), and (lowering its thresholds) a batch
split over fastrnn's threads. Layouts: C and Fortran order, strided
and negative-stride views, read-only, misaligned (data at an odd address),
non-native byte order, nested lists.

The examples are derandomised and bounded (``PROFILE``), so every CI run
draws the same examples in the same time. Crashes and out-of-bounds accesses
these examples could provoke in native code are looked for by running this
file under AddressSanitizer and valgrind (``tools/memcheck.sh``,
docs/reliability.md).
"""
import contextlib
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastrnn
from fastrnn import _parallel
from conftest import (CELLS, DTYPES, PARAM_NAMES, RTOL, STATE_NAMES, arrays_of,
                      assert_representable_close, cast, make_layer, make_params,
                      make_projected_params, run_backward, run_forward, states_of)

#: fixed, bounded and deterministic: the same examples on every run, no database
PROFILE = dict(deadline=None, derandomize=True, database=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
#: at most this many examples per test if set (tools/memcheck.sh under valgrind)
_CAP = int(os.environ.get("FASTRNN_HYPOTHESIS_EXAMPLES", "0"))


def examples(n):
    """``n`` examples, or fewer when FASTRNN_HYPOTHESIS_EXAMPLES caps them."""
    return min(n, _CAP) if _CAP > 0 else n

BACKENDS = fastrnn.available_backends()

# ------------------------------------------------------------------ layouts

#: every layout a float array may come in; "list" (nested Python floats) only in float64
FLOAT_LAYOUTS = ("C", "fortran", "strided", "reversed", "readonly", "misaligned",
                 "byteswapped", "list")
LENGTHS_LAYOUTS = ("C", "list", "tuple", "int32", "uint8", "reversed", "strided", "readonly")


def relayout(a, kind):
    """The values of ``a`` in the memory layout ``kind`` (a new object each call)."""
    a = np.asarray(a)
    if kind == "C":
        return a.copy()
    if kind == "fortran":
        return np.asfortranarray(a.copy())
    if kind == "strided":                     # every other element of a bigger array
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        big[..., ::2] = a
        return big[..., ::2]
    if kind == "reversed":                    # negative strides along every axis
        flip = (slice(None, None, -1),) * a.ndim
        return np.ascontiguousarray(a[flip])[flip]
    if kind == "readonly":
        r = a.copy()
        r.flags.writeable = False
        return r
    if kind == "misaligned":                  # C-contiguous, data at an odd address
        buf = np.zeros(a.nbytes + 1, np.uint8)
        m = np.frombuffer(buf, a.dtype, a.size, offset=1).reshape(a.shape)
        m[...] = a
        assert not m.flags.aligned or a.size == 0
        return m
    if kind == "byteswapped":
        return a.astype(a.dtype.newbyteorder())
    if kind == "list":                        # an empty list would lose the shape
        return a.tolist() if a.size else a.copy()
    if kind == "tuple":
        return tuple(a.tolist())
    if kind in ("int32", "uint8"):
        return a.astype(kind)
    raise ValueError(kind)


def layouts_for(dtype):
    return FLOAT_LAYOUTS if np.dtype(dtype) == np.float64 else FLOAT_LAYOUTS[:-1]


# --------------------------------------------------------------- strategies

#: mostly tiny; sometimes large enough to reach another internal path
T_SIZES = st.integers(0, 7) | st.just(70)
B_SIZES = st.integers(0, 5) | st.sampled_from([33, 40])
I_SIZES = st.integers(0, 6)
H_SIZES = st.integers(1, 9) | st.just(17)


@st.composite
def kernel_cases(draw):
    """A valid call of a kernel function and its backward, as a dict."""
    cell = draw(st.sampled_from(CELLS))
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    T, B, I, H = draw(T_SIZES), draw(B_SIZES), draw(I_SIZES), draw(H_SIZES)
    P = None
    if cell == "lstm" and H >= 2 and draw(st.booleans()):
        P = draw(st.integers(1, H - 1))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    if P is None:
        params = make_params(cell, I, H, dtype, seed=seed)
    else:
        params = make_projected_params(I, H, P, dtype, seed=seed)
    names = PARAM_NAMES + (("weight_hr",) if P else ())
    args = dict(zip(names, params))
    if not draw(st.booleans()):
        args["bias_ih"] = args["bias_hh"] = None
    out_size = P or H
    sizes = {"h": out_size, "c": H}
    args["x"] = rng.standard_normal((T, B, I)).astype(dtype)
    for n in STATE_NAMES[cell]:
        args[f"{n}0"] = (0.5 * rng.standard_normal((B, sizes[n]))).astype(dtype) \
            if draw(st.booleans()) else None
    if draw(st.booleans()):
        args["lengths"] = np.array(draw(st.lists(st.integers(0, T), min_size=B, max_size=B)),
                                   dtype=np.int64)
    else:
        args["lengths"] = None
    grads = {"dy": rng.standard_normal((T, B, out_size)).astype(dtype)
             if draw(st.booleans()) else None}
    for n in STATE_NAMES[cell]:
        grads[f"d{n}_n"] = rng.standard_normal((B, sizes[n])).astype(dtype) \
            if draw(st.booleans()) else None
    layout = {name: draw(st.sampled_from(layouts_for(dtype)))
              for name in list(args) + list(grads) if name != "lengths"}
    layout["lengths"] = draw(st.sampled_from(LENGTHS_LAYOUTS if T < 256 else ("C",)))
    return dict(cell=cell, dtype=dtype, args=args, grads=grads, layout=layout,
                reverse=draw(st.booleans()), shape=(T, B, I, H, P),
                split=draw(st.booleans()))


@contextlib.contextmanager
def batch_split(enabled):
    """With ``enabled``, every batch of 2 rows or more and 2 steps or more is
    split over fastrnn's threads (fastrnn/_parallel.py), which the default
    thresholds reserve for large problems."""
    saved = _parallel.SPLIT_MIN_B, _parallel.SPLIT_MIN_MACS
    if enabled:
        _parallel.SPLIT_MIN_B, _parallel.SPLIT_MIN_MACS = 2, 0
    try:
        yield
    finally:
        _parallel.SPLIT_MIN_B, _parallel.SPLIT_MIN_MACS = saved


def laid_out(values, layout):
    """Each array of ``values`` (None kept) in its drawn layout."""
    return {k: None if a is None else relayout(a, layout[k]) for k, a in values.items()}


def call(case, backend, args, grads):
    """Forward (training) and backward of ``case`` with the given arguments."""
    cell = case["cell"]
    states = tuple(args[f"{n}0"] for n in STATE_NAMES[cell])
    params = tuple(args[n] for n in PARAM_NAMES)
    kw = {"weight_hr": args["weight_hr"]} if "weight_hr" in args else {}
    out = run_forward(cell, backend, args["x"], states, params, lengths=args["lengths"],
                      reverse=case["reverse"], training=True, **kw)
    dstates = tuple(grads[f"d{n}_n"] for n in STATE_NAMES[cell])
    return out, run_backward(cell, out.workspace, grads["dy"], dstates)


def reference64(case):
    """The reference in float64 on the case's values, C-contiguous."""
    f64 = np.float64
    args = {k: (v if k == "lengths" else None if v is None else v.astype(f64))
            for k, v in case["args"].items()}
    grads = dict(zip(case["grads"], cast(case["grads"].values(), f64)))
    return call(case, "reference", args, grads)


# ------------------------------------------------------------ valid input

@settings(max_examples=examples(300), **PROFILE)
@given(case=kernel_cases())
def test_every_backend_equals_the_reference(case):
    dtype = case["dtype"]
    rtol = RTOL[dtype]
    expected = [arrays_of(r) for r in reference64(case)]
    originals = {**case["args"], **case["grads"]}
    for backend in BACKENDS:
        args = laid_out(case["args"], case["layout"])
        grads = laid_out(case["grads"], case["layout"])
        given_arrays = [a for a in {**args, **grads}.values() if isinstance(a, np.ndarray)]
        with batch_split(case["split"]):
            results = call(case, backend, args, grads)
        T, B = case["shape"][:2]
        # an empty call computes nothing and is handed to the reference
        assert results[0].workspace.backend == (backend if T and B else "reference")
        for result, exp in zip(results, expected):
            assert arrays_of(result).keys() == exp.keys()
            for name, e in exp.items():
                got = arrays_of(result)[name]
                if e is None:                     # dbias_* without biases
                    assert got is None, name
                    continue
                assert got.dtype == dtype and got.flags.c_contiguous, name
                assert_representable_close(got, e, rtol, f"{backend}: {name}")
                assert not any(np.shares_memory(got, a) for a in given_arrays), name
        # the arguments are read, never written
        for name, a in {**args, **grads}.items():
            if a is not None:
                np.testing.assert_array_equal(np.asarray(a), originals[name], err_msg=name)


# ----------------------------------------------------------- invalid input

#: corruptions of an argument -> the exception they must raise
SHAPE_CORRUPTIONS = ("drop_axis", "add_axis", "grow", "shrink")
TYPE_CORRUPTIONS = ("int64", "float16", "complex128", "bool", "object", "other_float",
                    "none", "string")


def corrupt(a, kind, axis, dtype):
    """A wrong version of the array ``a`` of the working ``dtype``."""
    if kind == "drop_axis":                   # the last two axes merged, or a scalar
        shape = a.shape[:-2] + (a.shape[-2] * a.shape[-1],) if a.ndim > 1 else ()
        return np.zeros(shape, a.dtype)
    if kind == "add_axis":
        return a[None]
    if kind in ("grow", "shrink"):
        shape = list(a.shape)
        shape[axis] += 1 if kind == "grow" else -1
        return np.zeros(shape, a.dtype)
    if kind == "other_float":
        return a.astype(np.float32 if dtype == np.float64 else np.float64)
    if kind == "none":
        return None
    if kind == "string":
        return "zeros"
    return a.astype(kind)


@st.composite
def invalid_cases(draw):
    """A valid case with one argument of the forward made invalid."""
    case = draw(kernel_cases())
    args = case["args"]
    T, B, I, H, P = case["shape"]
    # x, weight_ih, weight_hh and weight_hr fix T, B, I, H (and P): a wrong size
    # along one of those axes is a valid call of another shape or an error
    # about another argument, so only their number of axes and type are corrupted
    defining = {"x", "weight_hh", "weight_hr"}
    required = {"x", "weight_ih", "weight_hh"}      # weight_hr=None: no projection
    name = draw(st.sampled_from(sorted(k for k, v in args.items()
                                       if v is not None and k != "lengths")
                                + (["lengths"] if args["lengths"] is not None else [])))
    if name == "lengths":
        kind = draw(st.sampled_from(["above_T", "negative", "grow", "shrink", "add_axis",
                                     "float64", "bool"] if B else ["grow", "add_axis"]))
        a = args["lengths"]
        bad = {"above_T": lambda: np.where(np.arange(B) == 0, T + 1, a),
               "negative": lambda: np.where(np.arange(B) == B - 1, -1, a),
               "grow": lambda: np.append(a, 0), "shrink": lambda: a[:-1],
               "add_axis": lambda: a[None], "float64": lambda: a.astype(np.float64),
               "bool": lambda: a > 0}[kind]()
        exc = TypeError if kind in ("float64", "bool") else ValueError
        return case, name, kind, bad, exc
    a = args[name]
    kinds = [k for k in SHAPE_CORRUPTIONS if name not in defining or k in ("drop_axis", "add_axis")]
    kinds += [k for k in TYPE_CORRUPTIONS if name in required or k not in ("none", "string")]
    if name == "x":
        kinds.remove("other_float")           # x sets the working dtype
    if name.startswith("bias"):
        kinds.append("none")                  # one bias without the other
    kind = draw(st.sampled_from(kinds))
    axis = draw(st.integers(0, a.ndim - 1))
    if kind == "shrink" and a.shape[axis] == 0:
        kind = "grow"
    bad = corrupt(a, kind, axis, case["dtype"])
    exc = ValueError if kind in SHAPE_CORRUPTIONS or name.startswith("bias") and kind == "none" \
        else TypeError
    return case, name, kind, bad, exc


def received(bad):
    """What an error message must show of a wrong argument: its shape, dtype or type."""
    if bad is None or isinstance(bad, str):
        return type(bad).__name__
    return None


@settings(max_examples=examples(300), **PROFILE)
@given(invalid=invalid_cases())
def test_invalid_forward_argument_raises_a_clear_error(invalid):
    """The error names the argument first and shows what it received; every
    backend raises the same one (validation comes before any backend)."""
    case, name, kind, bad, exc = invalid
    args = dict(case["args"], **{name: bad})
    messages = set()
    for backend in BACKENDS:
        with pytest.raises(exc) as info:
            call(case, backend, args, case["grads"])
        msg = str(info.value)
        messages.add(msg)
        if name.startswith("bias") and kind == "none":
            assert msg.startswith("bias_ih and bias_hh"), msg
            continue
        assert msg.startswith(name + " "), msg
        a = np.asarray(bad) if name == "lengths" or received(bad) is None else None
        if received(bad) is not None:
            assert received(bad) in msg, msg
        elif kind in ("above_T", "negative"):
            assert f"[{a.min()}, {a.max()}]" in msg, msg
        elif exc is ValueError:
            assert str(tuple(a.shape)) in msg, msg
        else:
            assert str(a.dtype) in msg, msg
    assert len(messages) == 1, messages


@st.composite
def invalid_gradient_cases(draw):
    case = draw(kernel_cases())
    names = list(case["grads"])
    name = draw(st.sampled_from(names))
    T, B, I, H, P = case["shape"]
    size = {"dy": (T, B, P or H), "dh_n": (B, P or H), "dc_n": (B, H)}[name]
    good = np.zeros(size, case["dtype"])
    kind = draw(st.sampled_from(SHAPE_CORRUPTIONS + ("int64", "other_float", "string")))
    axis = draw(st.integers(0, good.ndim - 1))
    if kind == "shrink" and good.shape[axis] == 0:
        kind = "grow"
    bad = corrupt(good, kind, axis, case["dtype"])
    exc = ValueError if kind in SHAPE_CORRUPTIONS else TypeError
    return case, name, bad, exc


@settings(max_examples=examples(100), **PROFILE)
@given(invalid=invalid_gradient_cases())
def test_invalid_backward_argument_raises_a_clear_error(invalid):
    case, name, bad, exc = invalid
    for backend in BACKENDS:
        with pytest.raises(exc) as info:
            call(case, backend, case["args"], dict(case["grads"], **{name: bad}))
        msg = str(info.value)
        assert msg.startswith(name + " "), msg
        shown = received(bad) or (str(bad.shape) if exc is ValueError else str(bad.dtype))
        assert shown in msg, msg


# ------------------------------------------------------------------- layers

@st.composite
def layer_cases(draw):
    cell = draw(st.sampled_from(CELLS))
    H = draw(st.integers(1, 6))
    proj = draw(st.integers(0, H - 1)) if cell == "lstm" and H > 1 and draw(st.booleans()) else 0
    options = dict(input_size=draw(st.integers(1, 5)), hidden_size=H,
                   num_layers=draw(st.integers(1, 3)), bias=draw(st.booleans()),
                   batch_first=draw(st.booleans()), bidirectional=draw(st.booleans()))
    if cell == "lstm":
        options["proj_size"] = proj
    T = draw(st.integers(0, 6))
    B = draw(st.none() | st.integers(0, 4))        # None: one unbatched (T, I) sequence
    lengths = None
    if B is not None and draw(st.booleans()):
        lengths = draw(st.lists(st.integers(0, T), min_size=B, max_size=B))
    return dict(cell=cell, options=options, T=T, B=B, lengths=lengths,
                dtype=np.dtype(draw(st.sampled_from(DTYPES))), with_hx=draw(st.booleans()),
                seed=draw(st.integers(0, 2**16)), layout=draw(st.sampled_from(FLOAT_LAYOUTS[:-1])))


def run_layer(layer, case, x, hx, dy, dhx):
    y, h_n, ctx = layer(x, hx, case["lengths"], training=True)
    return y, h_n, layer.backward(ctx, dy, dhx)


@settings(max_examples=examples(100), **PROFILE)
@given(case=layer_cases())
def test_layers_equal_the_reference(case):
    """Stacked, bidirectional, batch-first and unbatched layers on every backend
    equal the same layer on the reference backend in float64."""
    cell, opts, T, B, dtype = case["cell"], case["options"], case["T"], case["B"], case["dtype"]
    rng = np.random.default_rng(case["seed"])
    ref = make_layer(cell, **opts, dtype=np.float64, backend="reference", rng=case["seed"])
    layer_rng = np.random.default_rng(case["seed"])
    D = 2 if opts["bidirectional"] else 1
    out = opts.get("proj_size") or opts["hidden_size"]
    LD = opts["num_layers"] * D
    batch = () if B is None else (B,)
    x_shape = (T,) + batch + (opts["input_size"],)
    if B is not None and opts["batch_first"]:
        x_shape = (B, T, opts["input_size"])
    x = rng.standard_normal(x_shape).astype(dtype)
    dy = rng.standard_normal(x_shape[:-1] + (D * out,)).astype(dtype)
    sizes = [out] + ([opts["hidden_size"]] if cell == "lstm" else [])
    states = [(0.5 * rng.standard_normal((LD,) + batch + (n,))).astype(dtype) for n in sizes]
    dstates = [rng.standard_normal(s.shape).astype(dtype) for s in states]

    def hx(arrays, kind):
        if not case["with_hx"]:
            return None
        arrays = [relayout(a, kind) for a in arrays]
        return tuple(arrays) if cell == "lstm" else arrays[0]

    params = {}
    for backend in BACKENDS:
        layer = make_layer(cell, **opts, dtype=dtype, backend=backend, rng=layer_rng)
        if not params:
            params = {k: v.copy() for k, v in layer.named_parameters()}
            ref.load_state_dict({k: v.astype(np.float64) for k, v in params.items()})
            f64 = [a.astype(np.float64) for a in (x, dy)]
            expected = run_layer(ref, case, f64[0], hx([s.astype(np.float64) for s in states], "C"),
                                 f64[1], hx([s.astype(np.float64) for s in dstates], "C"))
        else:
            layer.load_state_dict(params)
        kind = case["layout"]
        y, h_n, grads = run_layer(layer, case, relayout(x, kind), hx(states, kind),
                                  relayout(dy, kind), hx(dstates, kind))
        rtol = RTOL[dtype]
        e_y, e_h, e_g = expected
        assert y.dtype == dtype
        assert_representable_close(y, e_y, rtol, f"{backend}: y")
        for a, e in zip(states_of(h_n, cell), states_of(e_h, cell)):
            assert_representable_close(a, e, rtol, f"{backend}: h_n")
        assert_representable_close(grads.dx, e_g.dx, rtol, f"{backend}: dx")
        for a, e in zip(states_of(grads.dhx, cell), states_of(e_g.dhx, cell)):
            assert_representable_close(a, e, rtol, f"{backend}: dhx")
        assert list(grads.dparams) == list(e_g.dparams)
        for n, a in grads.dparams.items():
            assert a.dtype == dtype
            assert_representable_close(a, e_g.dparams[n], rtol, f"{backend}: d{n}")



@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
def test_array_subclasses_compute_as_plain_arrays_and_masked_arrays_are_refused():
    """np.matrix weights give the plain arrays' bits; a masked array, whose
    masked values fastrnn would compute with, raises a TypeError naming it."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3, 4))
    params = make_params("gru", 4, 6)
    for backend in BACKENDS:
        plain = run_forward("gru", backend, x, (None,), params)
        matrix = run_forward("gru", backend, x, (None,),
                             (np.matrix(params[0]), np.matrix(params[1])) + params[2:])
        np.testing.assert_array_equal(matrix.y, plain.y)
        assert type(matrix.y) is np.ndarray
        with pytest.raises(TypeError, match="^x must not be a masked array"):
            run_forward("gru", backend, np.ma.masked_array(x, mask=x > 1), (None,), params)
    layer = make_layer("gru", 4, 6, dtype=np.float64, rng=0)
    with pytest.raises(TypeError, match="^x must not be a masked array"):
        layer(np.ma.masked_array(x, mask=x > 1))
