"""The LSTM with a projection (PyTorch's ``proj_size``, ``weight_hr``).

h' = (o * tanh(c')) @ weight_hr.T, so h, y and weight_hh's second axis have
P < H features while c keeps H. Checked here: the reference against finite
differences, every backend against the reference, every backend against
torch.nn.LSTM(proj_size=P), the lengths semantics, and argument validation.

Every test that computes takes the ``backend`` fixture: a backend that loads but
does not support ``weight_hr`` raises NotImplementedError and fails here, it is
not skipped.
"""
import re
import tracemalloc

import numpy as np
import pytest

import fastrnn
from fastrnn import _backends
from conftest import (DTYPES, PARAM_NAMES, RTOL, arrays_of, assert_close,
                      assert_results_equal, cast, final_states, finite_difference_gradient,
                      make_lengths, make_projected_params, make_projected_states, make_x,
                      run_backward, run_projected_forward, state0_grads)

PROJ_PARAM_NAMES = PARAM_NAMES + ("weight_hr",)
INPUT_NAMES = ("x", "h0", "c0") + PROJ_PARAM_NAMES

dtype_cases = pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
direction_cases = pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])


def projected_case(shape, dtype, seed=0):
    """Inputs ``(x, states, params)`` and output gradients ``(dy, dstates)``;
    ``shape`` is ``(T, B, I, H, P)``."""
    T, B, I, H, P = shape
    rng = np.random.default_rng(seed + 100)
    x = make_x(T, B, I, dtype, seed=seed)
    states = make_projected_states(B, H, P, dtype, seed=seed + 1)
    params = make_projected_params(I, H, P, dtype, seed=seed + 2)
    dy = rng.standard_normal((T, B, P)).astype(dtype)
    dstates = tuple(rng.standard_normal(s.shape).astype(dtype) for s in states)
    return x, states, params, dy, dstates


def forward_backward(backend, x, states, params, dy, dstates, **kw):
    out = run_projected_forward(backend, x, states, params, training=True, **kw)
    return out, run_backward("lstm", out.workspace, dy, dstates)


def param_grads(grads):
    """The five parameter gradients, weight_hr's last."""
    return tuple(getattr(grads, "d" + name) for name in PROJ_PARAM_NAMES)


# ------------------------------------------------- reference: finite differences

# As in test_reference.py: central differences in float64 have truncation error
# ~EPS**2 and rounding error ~1e-16 * |loss| / EPS ~ 1e-9, so atol 1e-8 sits
# above the noise while rtol 1e-6 catches any wrong or missing term.
EPS = 1e-6
FD_RTOL, FD_ATOL = 1e-6, 1e-8
T_FD, B_FD, I_FD, H_FD, P_FD = 4, 3, 2, 4, 2
LENGTHS_FD = np.array([2, 0, 4])        # unsorted, with a 0 and a full length


@pytest.mark.parametrize("lengths", [None, LENGTHS_FD], ids=["full", "lengths"])
@direction_cases
@pytest.mark.parametrize("name", INPUT_NAMES)
def test_reference_gradient_matches_finite_differences(name, reverse, lengths):
    x, states, params, wy, wstates = projected_case((T_FD, B_FD, I_FD, H_FD, P_FD), np.float64)
    inputs = dict(zip(INPUT_NAMES, (x,) + states + params))
    kw = dict(lengths=lengths, reverse=reverse)

    def run(**more):
        return run_projected_forward("reference", inputs["x"], (inputs["h0"], inputs["c0"]),
                                     tuple(inputs[n] for n in PROJ_PARAM_NAMES), **kw, **more)

    def loss():
        out = run()
        return np.sum(out.y * wy) + sum(np.sum(s * w) for s, w in zip(final_states(out), wstates))

    out = run(training=True)
    grads = run_backward("lstm", out.workspace, wy, wstates)
    analytic = arrays_of(grads)["d" + name]
    numeric = finite_difference_gradient(loss, inputs[name], EPS)
    assert np.any(analytic != 0), "vacuous check: the gradient is identically zero"
    np.testing.assert_allclose(analytic, numeric, rtol=FD_RTOL, atol=FD_ATOL)


def test_reference_shapes():
    T, B, I, H, P = 3, 2, 4, 5, 2
    x, states, params, dy, dstates = projected_case((T, B, I, H, P), np.float64)
    out, grads = forward_backward("reference", x, states, params, dy, dstates)
    assert (out.y.shape, out.h_n.shape, out.c_n.shape) == ((T, B, P), (B, P), (B, H))
    assert (grads.dh0.shape, grads.dc0.shape) == ((B, P), (B, H))
    assert [g.shape for g in param_grads(grads)] == [p.shape for p in params]
    # dweight_hr is the last field, so positions 0..6 keep their meaning
    assert len(grads) == 8 and grads[-1] is grads.dweight_hr
    assert grads[:7] == tuple(getattr(grads, f) for f in grads._fields[:7])
    assert grads._fields[:7] == ("dx", "dh0", "dc0", "dweight_ih", "dweight_hh",
                                 "dbias_ih", "dbias_hh")
    ws = out.workspace
    assert (ws.hidden_size, ws.proj_size, ws.output_size) == (H, P, P)
    assert f"P={P}" in repr(ws)


# --------------------------------------------------- every backend vs reference

# (T, B, I, H, P): B=1, T=1, P=1 (the dW_hr GEMM then has a single row), P=H-1,
# odd sizes; the last two are long (T*B > 256 rows) or wide (B > 256) enough to
# split the inference input projection into several blocks.
SHAPES = [(1, 1, 1, 2, 1), (1, 3, 5, 7, 3), (7, 1, 3, 5, 4), (6, 5, 13, 11, 2),
          (9, 4, 17, 33, 8), (70, 4, 3, 5, 2), (3, 300, 2, 3, 1)]


def assert_matches(result, expected, dtype):
    """Every array of a result close to the reference's, and of the working dtype.
    RTOL is justified in test_backends.py; the projection adds one GEMM of
    length H per step, which the same margins cover."""
    got = arrays_of(result)
    assert got.keys() == arrays_of(expected).keys()
    for name, e in arrays_of(expected).items():
        assert got[name].dtype == dtype, name
        assert_close(got[name], e, RTOL[np.dtype(dtype)], name)


@pytest.mark.parametrize("lengths_kind", [None, "mixed", "full"])
@direction_cases
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}B{}I{}H{}P{}".format(*s))
@dtype_cases
def test_matches_reference(backend, dtype, shape, reverse, lengths_kind):
    T, B, I, H, P = shape
    x, states, params, dy, dstates = projected_case(shape, dtype)
    kw = dict(lengths=make_lengths(lengths_kind, T, B), reverse=reverse)

    out, grads = forward_backward(backend, x, states, params, dy, dstates, **kw)
    f64 = np.float64
    ref, ref_grads = forward_backward("reference", x.astype(f64), cast(states, f64),
                                      cast(params, f64), dy.astype(f64), cast(dstates, f64),
                                      **kw)
    assert_matches(out, ref, dtype)
    assert_matches(grads, ref_grads, dtype)

    ws = out.workspace
    assert (ws.backend, ws.proj_size, ws.hidden_size) == (backend, P, H)
    inference = run_projected_forward(backend, x, states, params, **kw)
    assert inference.workspace is None
    assert_results_equal(inference, out, exact=False, rtol=RTOL[np.dtype(dtype)])


@dtype_cases
def test_no_biases_equals_zero_biases(backend, dtype):
    x, states, params, dy, dstates = projected_case((4, 3, 5, 6, 2), dtype)
    w_ih, w_hh, b_ih, _, w_hr = params
    kw = dict(lengths=make_lengths("mixed", 4, 3))
    zero = np.zeros_like(b_ih)
    out, grads = forward_backward(backend, x, states, (w_ih, w_hh, None, None, w_hr),
                                  dy, dstates, **kw)
    z_out, z_grads = forward_backward(backend, x, states, (w_ih, w_hh, zero, zero, w_hr),
                                      dy, dstates, **kw)
    rtol = RTOL[np.dtype(dtype)]
    assert_results_equal(out, z_out, exact=False, rtol=rtol)
    assert grads.dbias_ih is None and grads.dbias_hh is None
    assert_close(grads.dweight_hr, z_grads.dweight_hr, rtol, "dweight_hr")
    for a, e in zip(grads[:5], z_grads[:5]):
        assert_close(a, e, rtol)


@pytest.mark.parametrize("missing", ["dy", "dh_n", "dc_n", "all"])
def test_none_output_gradients_are_zero(backend, missing):
    x, states, params, dy, (dh_n, dc_n) = projected_case((4, 3, 5, 6, 2), np.float64)
    out = run_projected_forward(backend, x, states, params, training=True,
                                lengths=make_lengths("mixed", 4, 3))
    full = dict(dy=dy, dh_n=dh_n, dc_n=dc_n)
    given = {k: None if missing in (k, "all") else v for k, v in full.items()}
    zeros = {k: np.zeros_like(v) if given[k] is None else v for k, v in full.items()}
    got = fastrnn.lstm_backward(out.workspace, **given)
    expected = fastrnn.lstm_backward(out.workspace, **zeros)
    assert_results_equal(got, expected, exact=False, rtol=RTOL[np.dtype(np.float64)])
    if missing == "all":
        assert not any(np.any(a) for a in arrays_of(got).values())


# ------------------------------------------------------------ lengths semantics

@direction_cases
def test_padding_carries_the_state_and_gets_zero_gradient(backend, reverse):
    """Padded steps output exact zeros and get zero dx; a zero-length sequence
    keeps h0 (B, P) and c0 (B, H) and passes dh_n, dc_n back unchanged."""
    T, B = 5, 4
    x, states, params, dy, dstates = projected_case((T, B, 3, 6, 2), np.float64)
    lengths = make_lengths("mixed", T, B)
    out, grads = forward_backward(backend, x, states, params, dy, dstates,
                                  lengths=lengths, reverse=reverse)
    pad = np.arange(T)[:, None] >= lengths[None, :]
    assert pad.any() and (~pad).any()
    assert np.all(out.y[pad] == 0) and np.all(out.y[~pad] != 0)
    assert np.all(grads.dx[pad] == 0)
    b = int(np.flatnonzero(lengths == 0)[0])
    for s0, s_n in zip(states, final_states(out)):
        np.testing.assert_array_equal(s_n[b], s0[b])
    for d_n, d0 in zip(dstates, state0_grads(grads)):
        np.testing.assert_array_equal(d0[b], d_n[b])


def test_inference_memory_does_not_grow_with_T(backend):
    """Inference keeps no per-step state: peak memory grows with T by y only."""
    if backend == "reference":
        pytest.skip("the reference keeps a tape of every step by design")
    B, I, H, P = 4, 3, 32, 5

    def peak(T):
        x, states, params, _, _ = projected_case((T, B, I, H, P), np.float64)
        run_projected_forward(backend, x, states, params)      # warm-up (compilation)
        tracemalloc.start()
        try:
            run_projected_forward(backend, x, states, params)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    # both long enough for the inference input projection to use its full
    # block of steps (CHUNK_ROWS rows), so only y should differ
    from fastrnn import _buffers
    short = _buffers.CHUNK_ROWS // B + 1
    long = 5 * short
    y_growth = (long - short) * B * P * 8
    # anything kept per step (m is (T, B, H), gates (T, B, 4H)) would add more
    # than 6x y_growth; allow y plus a quarter for allocator noise
    assert peak(long) - peak(short) <= 1.25 * y_growth


# ------------------------------------------------------------------ PyTorch

T_PT, B_PT, I_PT, H_PT, P_PT = 5, 4, 3, 7, 3
LENGTHS_PT = np.array([3, 5, 1, 4])        # unsorted, one full; torch rejects zero lengths


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@dtype_cases
def test_matches_torch(backend, dtype, bidirectional, packed):
    """Against torch.nn.LSTM(proj_size=P): outputs, final states and the gradients
    of x, h0, c0 and all five parameters, both directions of a bidirectional
    layer, padded and packed (unsorted) input. Tolerances as test_torch_parity.py."""
    torch = pytest.importorskip("torch")
    from test_torch_parity import run_torch
    torch.manual_seed(0)
    T, B, I, H, P = T_PT, B_PT, I_PT, H_PT, P_PT
    D = 2 if bidirectional else 1
    module = torch.nn.LSTM(input_size=I, hidden_size=H, proj_size=P,
                           bidirectional=bidirectional, dtype=getattr(torch, np.dtype(dtype).name))
    rng = np.random.default_rng(5)
    x = make_x(T, B, I, dtype)
    # torch states are (D, B, P) and (D, B, H)
    states = [np.stack(s) for s in zip(*(make_projected_states(B, H, P, dtype, seed=d)
                                         for d in range(D)))]
    w_out = rng.standard_normal((T, B, D * P)).astype(dtype)
    w_states = [rng.standard_normal(s.shape).astype(dtype) for s in states]
    lengths = LENGTHS_PT if packed else None

    out, states_n, grads = run_torch("lstm", module, x, states, w_out, w_states, lengths)

    rtol = RTOL[np.dtype(dtype)]
    dx = np.zeros_like(x)
    for d in range(D):
        suffix = "_l0_reverse" if d else "_l0"
        params = tuple(getattr(module, n + suffix).detach().numpy() for n in PROJ_PARAM_NAMES)
        half = slice(d * P, (d + 1) * P)
        res = run_projected_forward(backend, x, tuple(s[d] for s in states), params,
                                    lengths=lengths, reverse=bool(d), training=True)
        g = run_backward("lstm", res.workspace, w_out[..., half], tuple(w[d] for w in w_states))
        assert_close(res.y, out[..., half], rtol, f"y{suffix}")
        for name, a, e in zip("hc", final_states(res), states_n):
            assert_close(a, e[d], rtol, f"{name}_n{suffix}")
        for name, a in zip("hc", state0_grads(g)):
            assert_close(a, grads[f"{name}0"][d], rtol, f"d{name}0{suffix}")
        for name, a in zip(PROJ_PARAM_NAMES, param_grads(g)):
            assert_close(a, grads[name + suffix], rtol, f"d{name}{suffix}")
        dx += g.dx
    assert_close(dx, grads["x"], rtol, "dx")


# --------------------------------------------------------------- validation

T_V, B_V, I_V, H_V, P_V = 3, 2, 4, 5, 2


def valid_args():
    x, (h0, c0), params, _, _ = projected_case((T_V, B_V, I_V, H_V, P_V), np.float64)
    return dict(x=x, h0=h0, c0=c0, **dict(zip(PROJ_PARAM_NAMES, params)))


def call_forward(backend, args, **kw):
    return fastrnn.lstm_forward(args["x"], args["h0"], args["c0"],
                                *(args[n] for n in PARAM_NAMES), weight_hr=args["weight_hr"],
                                backend=backend, **kw)


def raises(exc, name, says):
    """An error whose message starts with ``name`` and contains ``says``."""
    return pytest.raises(exc, match=rf"^{re.escape(name)}\b.*{re.escape(says)}")


# id -> (arguments to replace, expected exception, argument named first, text in the message)
FORWARD_CASES = {
    "weight_hr_transposed": (lambda a: {"weight_hr": a["weight_hr"].T}, ValueError,
                             "weight_hr", f"({P_V}, {H_V}) = (P, H) with 0 < P < H"),
    "weight_hr_short_H": (lambda a: {"weight_hr": a["weight_hr"][:, :-1]}, ValueError,
                          "weight_hr", f"({P_V}, {H_V})"),
    "weight_hr_long_P": (lambda a: {"weight_hr": np.zeros((P_V + 1, H_V))}, ValueError,
                         "weight_hr", f"({P_V}, {H_V})"),
    "weight_hr_1d": (lambda a: {"weight_hr": a["weight_hr"].ravel()}, ValueError,
                     "weight_hr", "(P, H)"),
    # P = H: PyTorch requires proj_size < hidden_size
    "weight_hr_square": (lambda a: {"weight_hr": np.eye(H_V),
                                    "weight_hh": np.zeros((4 * H_V, H_V))}, ValueError,
                         "weight_hr", "0 < P < H"),
    "weight_hr_P0": (lambda a: {"weight_hr": np.zeros((0, H_V)),
                                "weight_hh": np.zeros((4 * H_V, 0))}, ValueError,
                     "weight_hr", "0 < P < H"),
    "weight_hr_int": (lambda a: {"weight_hr": a["weight_hr"].astype(int)}, TypeError,
                      "weight_hr", "float64"),
    "weight_hr_float32": (lambda a: {"weight_hr": a["weight_hr"].astype(np.float32)},
                          TypeError, "weight_hr", "float64"),
    "weight_hh_not_projected": (lambda a: {"weight_hh": np.zeros((4 * H_V, H_V))}, ValueError,
                                "weight_hh", f"({4 * H_V}, {P_V}) = (4*H, P)"),
    "weight_ih_of_size_P": (lambda a: {"weight_ih": np.zeros((4 * P_V, I_V))}, ValueError,
                            "weight_ih", f"({4 * H_V}, {I_V})"),
    "bias_ih_of_size_P": (lambda a: {"bias_ih": np.zeros(4 * P_V)}, ValueError,
                          "bias_ih", f"({4 * H_V},)"),
    "h0_of_size_H": (lambda a: {"h0": np.zeros((B_V, H_V))}, ValueError,
                     "h0", f"({B_V}, {P_V}) = (B, P)"),
    "c0_of_size_P": (lambda a: {"c0": np.zeros((B_V, P_V))}, ValueError,
                     "c0", f"({B_V}, {H_V}) = (B, H)"),
}


@pytest.mark.parametrize("case", FORWARD_CASES)
def test_bad_forward_argument(backend, case):
    change, exc, name, says = FORWARD_CASES[case]
    args = valid_args()
    args.update(change(args))
    with raises(exc, name, says):
        call_forward(backend, args)


def test_projected_weight_hh_without_weight_hr():
    a = valid_args()
    with raises(ValueError, "weight_hh", "needs weight_hr"):
        fastrnn.lstm_forward(a["x"], None, None, a["weight_ih"], a["weight_hh"])


BACKWARD_CASES = {
    "dy_of_size_H": ("dy", np.zeros((T_V, B_V, H_V)), f"({T_V}, {B_V}, {P_V}) = (T, B, P)"),
    "dh_n_of_size_H": ("dh_n", np.zeros((B_V, H_V)), f"({B_V}, {P_V}) = (B, P)"),
    "dc_n_of_size_P": ("dc_n", np.zeros((B_V, P_V)), f"({B_V}, {H_V}) = (B, H)"),
}


@pytest.mark.parametrize("case", BACKWARD_CASES)
def test_bad_backward_gradient(backend, case):
    name, bad, says = BACKWARD_CASES[case]
    out = call_forward(backend, valid_args(), training=True)
    grads = dict(dy=np.zeros_like(out.y), dh_n=np.zeros_like(out.h_n),
                 dc_n=np.zeros_like(out.c_n))
    grads[name] = bad
    with raises(ValueError, name, says):
        fastrnn.lstm_backward(out.workspace, **grads)


# ------------------------------------------------------------ backend choice

class _NoProjection:
    """A stand-in backend that does not declare PROJECTION."""

    @staticmethod
    def forward(*args):
        raise AssertionError("a backend without PROJECTION must not be called")


def test_backend_without_projection_raises_and_auto_skips_it(monkeypatch):
    fastest = fastrnn.available_backends()[0]
    monkeypatch.setitem(_backends._loaded, fastest, _NoProjection)
    args = valid_args()
    with pytest.raises(NotImplementedError, match=rf"{fastest!r}.*weight_hr"):
        call_forward(fastest, args)
    out = call_forward("auto", args, training=True)
    assert out.workspace.backend != fastest
    expected = call_forward("reference", args)
    assert_results_equal(out, expected, exact=False, rtol=RTOL[np.dtype(np.float64)])


def test_backward_leaves_the_workspace_and_arguments_alone(backend):
    """Two backwards give identical results, writing into y and the final states
    in between changes nothing, and no result shares memory with an argument."""
    x, states, params, dy, dstates = projected_case((5, 3, 4, 6, 2), np.float64)
    arguments = (x,) + states + params + (dy,) + dstates
    out = run_projected_forward(backend, x, states, params, training=True,
                                lengths=make_lengths("mixed", 5, 3), reverse=True)
    first = run_backward("lstm", out.workspace, dy, dstates)
    snapshot = type(first)(*(None if a is None else a.copy() for a in first))
    for a in (out.y,) + final_states(out):
        a[...] = 1e3
    assert_results_equal(run_backward("lstm", out.workspace, dy, dstates), snapshot)
    assert_results_equal(first, snapshot)
    for name, r in {**arrays_of(out), **arrays_of(first)}.items():
        assert not any(np.shares_memory(r, a) for a in arguments), name


def test_noncontiguous_weights_give_identical_results(backend):
    x, states, params, dy, dstates = projected_case((5, 3, 4, 6, 2), np.float64)
    expected = forward_backward(backend, x, states, params, dy, dstates, reverse=True)
    odd = tuple(np.asfortranarray(p) if p.ndim == 2 else p for p in params)
    assert not odd[4].flags.c_contiguous
    got = forward_backward(backend, x, states, odd, dy, dstates, reverse=True)
    for a, e in zip(got, expected):
        assert_results_equal(a, e)
