"""Bad arguments raise a TypeError (wrong kind or dtype) or ValueError (wrong
shape or value) whose message starts with the name of the offending argument."""
import re

import numpy as np
import pytest

import fastrnn
from conftest import (CELLS, PARAM_NAMES, STATE_NAMES, make_params, make_states,
                      make_x, run_backward, run_forward)

T, B, I, H = 3, 2, 4, 5


def valid_args(cell, dtype=np.float64):
    """Valid arguments as a dict: x, h0, [c0], weight_ih, weight_hh, bias_ih, bias_hh, lengths."""
    args = {"x": make_x(T, B, I, dtype)}
    args.update(zip((f"{n}0" for n in STATE_NAMES[cell]), make_states(cell, B, H, dtype)))
    args.update(zip(PARAM_NAMES, make_params(cell, I, H, dtype)))
    args["lengths"] = np.array([T, 1])
    return args


def call_forward(cell, backend, args, **kw):
    states = tuple(args[f"{n}0"] for n in STATE_NAMES[cell])
    params = tuple(args[n] for n in PARAM_NAMES)
    return run_forward(cell, backend, args["x"], states, params, lengths=args["lengths"], **kw)


def raises(exc, name):
    """pytest.raises for an error whose message starts with ``name``."""
    return pytest.raises(exc, match=rf"^{re.escape(name)}\b")


# Each case: id -> (function of the valid args returning the arguments to replace,
#                   expected exception, argument named at the start of the message).
FORWARD_CASES = {
    "x_2d": (lambda a: {"x": a["x"][0]}, ValueError, "x"),
    "x_4d": (lambda a: {"x": a["x"][None]}, ValueError, "x"),
    "x_none": (lambda a: {"x": None}, TypeError, "x"),
    "x_ragged_list": (lambda a: {"x": [[[1.0]], [[1.0, 2.0]]]}, TypeError, "x"),
    "h0_short_H": (lambda a: {"h0": a["h0"][:, :-1]}, ValueError, "h0"),
    "h0_short_B": (lambda a: {"h0": a["h0"][:-1]}, ValueError, "h0"),
    "h0_torch_layout": (lambda a: {"h0": a["h0"][None]}, ValueError, "h0"),
    "c0_short_H": (lambda a: {"c0": a["c0"][:, :-1]}, ValueError, "c0"),
    "c0_torch_layout": (lambda a: {"c0": a["c0"][None]}, ValueError, "c0"),
    "weight_ih_short_I": (lambda a: {"weight_ih": a["weight_ih"][:, :-1]}, ValueError, "weight_ih"),
    "weight_ih_short_GH": (lambda a: {"weight_ih": a["weight_ih"][:-1]}, ValueError, "weight_ih"),
    "weight_ih_transposed": (lambda a: {"weight_ih": a["weight_ih"].T}, ValueError, "weight_ih"),
    "weight_hh_short_H": (lambda a: {"weight_hh": a["weight_hh"][:, :-1]}, ValueError, "weight_hh"),
    "weight_hh_short_GH": (lambda a: {"weight_hh": a["weight_hh"][:-1]}, ValueError, "weight_hh"),
    "weight_hh_1d": (lambda a: {"weight_hh": a["weight_hh"].ravel()}, ValueError, "weight_hh"),
    "weight_hh_none": (lambda a: {"weight_hh": None}, TypeError, "weight_hh"),
    "bias_ih_short": (lambda a: {"bias_ih": a["bias_ih"][:-1]}, ValueError, "bias_ih"),
    "bias_ih_2d": (lambda a: {"bias_ih": a["bias_ih"][None]}, ValueError, "bias_ih"),
    "bias_hh_short": (lambda a: {"bias_hh": a["bias_hh"][:-1]}, ValueError, "bias_hh"),
    "only_bias_ih": (lambda a: {"bias_hh": None}, ValueError, "bias_ih and bias_hh"),
    "only_bias_hh": (lambda a: {"bias_ih": None}, ValueError, "bias_ih and bias_hh"),
    "weight_ih_int": (lambda a: {"weight_ih": a["weight_ih"].astype(int)}, TypeError, "weight_ih"),
    "lengths_above_T": (lambda a: {"lengths": np.array([T + 1, 1])}, ValueError, "lengths"),
    "lengths_negative": (lambda a: {"lengths": np.array([-1, 1])}, ValueError, "lengths"),
    "lengths_too_many": (lambda a: {"lengths": np.array([1, 1, 1])}, ValueError, "lengths"),
    "lengths_too_few": (lambda a: {"lengths": np.array([1])}, ValueError, "lengths"),
    "lengths_2d": (lambda a: {"lengths": np.array([[1, 1]])}, ValueError, "lengths"),
    "lengths_float": (lambda a: {"lengths": np.array([1.0, 2.0])}, TypeError, "lengths"),
    "lengths_bool": (lambda a: {"lengths": np.array([True, False])}, TypeError, "lengths"),
    "hidden_size_0": (lambda a: {"weight_ih": a["weight_ih"][:0], "weight_hh": a["weight_hh"][:0, :0],
                                 "bias_ih": a["bias_ih"][:0], "bias_hh": a["bias_hh"][:0]},
                      ValueError, "weight_hh"),
}
# x of a dtype other than float32/float64
FORWARD_CASES.update({
    f"x_{np.dtype(dt).name}": (lambda a, dt=dt: {"x": a["x"].astype(dt)}, TypeError, "x")
    for dt in (np.int64, np.int32, np.float16, np.complex128, np.bool_, object)
})
# one array of a different float dtype than x, both ways
FORWARD_CASES.update({
    f"{name}_{np.dtype(wrong).name}_x_{np.dtype(other).name}":
        (lambda a, name=name, wrong=wrong, other=other:
         {**{k: v.astype(other) for k, v in a.items() if k != "lengths" and v is not None},
          name: a[name].astype(wrong)}, TypeError, name)
    for name in ("h0", "c0") + PARAM_NAMES
    for wrong, other in ((np.float64, np.float32), (np.float32, np.float64))
})


def applicable(cases, cell):
    """The cases that apply to ``cell`` (only the LSTM has c0 and dc_n)."""
    return [(cell, c) for c, (_, _, name) in cases.items()
            if cell == "lstm" or name not in ("c0", "dc_n")]


@pytest.mark.parametrize("cell, case", [p for c in CELLS for p in applicable(FORWARD_CASES, c)])
def test_bad_forward_argument(backend, cell, case):
    change, exc, name = FORWARD_CASES[case]
    args = valid_args(cell)
    args.update(change(args))
    with raises(exc, name):
        call_forward(cell, backend, args)


@pytest.mark.parametrize("kw, exc, name", [
    pytest.param(dict(reverse="yes"), TypeError, "reverse", id="reverse_str"),
    pytest.param(dict(reverse=None), TypeError, "reverse", id="reverse_none"),
    pytest.param(dict(training="no"), TypeError, "training", id="training_str"),
    pytest.param(dict(training=np.ones(2)), TypeError, "training", id="training_array"),
    pytest.param(dict(backend="cuda"), ValueError, "backend", id="backend_unknown"),
    pytest.param(dict(backend=None), TypeError, "backend", id="backend_none"),
])
@pytest.mark.parametrize("cell", CELLS)
def test_bad_forward_keyword(cell, kw, exc, name):
    args = valid_args(cell)
    kw = {"backend": "reference", **kw}
    with raises(exc, name):
        call_forward(cell, kw.pop("backend"), args, **kw)


@pytest.mark.parametrize("nonlinearity", ["sigmoid", "Tanh", None])
def test_bad_nonlinearity(nonlinearity):
    a = valid_args("rnn_tanh")
    with raises(ValueError, "nonlinearity"):
        fastrnn.rnn_forward(a["x"], a["h0"], a["weight_ih"], a["weight_hh"],
                            nonlinearity=nonlinearity)


# --------------------------------------------------------------- backward

BACKWARD_FNS = {"rnn": fastrnn.rnn_backward, "lstm": fastrnn.lstm_backward,
                "gru": fastrnn.gru_backward}


def family(cell):
    return "rnn" if cell.startswith("rnn") else cell


@pytest.mark.parametrize("workspace", [None, "result", "dict"])
@pytest.mark.parametrize("fn", BACKWARD_FNS)
def test_backward_needs_a_workspace(backend, fn, workspace):
    cell = {"rnn": "rnn_tanh"}.get(fn, fn)
    out = call_forward(cell, backend, valid_args(cell), training=True)
    bad = {None: None, "result": out, "dict": {"cell": cell}}[workspace]
    with raises(TypeError, "workspace"):
        BACKWARD_FNS[fn](bad)


@pytest.mark.parametrize("fn", BACKWARD_FNS)
@pytest.mark.parametrize("cell", CELLS)
def test_backward_of_another_cell(backend, cell, fn):
    out = call_forward(cell, backend, valid_args(cell), training=True)
    if family(cell) == fn:
        BACKWARD_FNS[fn](out.workspace)          # the right one works
    else:
        with raises(TypeError, "workspace"):
            BACKWARD_FNS[fn](out.workspace)


def test_inference_forward_has_no_workspace(backend):
    out = call_forward("gru", backend, valid_args("gru"), training=False)
    with raises(TypeError, "workspace"):
        fastrnn.gru_backward(out.workspace)


BACKWARD_CASES = {
    "dy_long_T": (lambda y, s: {"dy": np.zeros((T + 1, B, H))}, ValueError, "dy"),
    "dy_short_H": (lambda y, s: {"dy": np.zeros((T, B, H - 1))}, ValueError, "dy"),
    "dy_2d": (lambda y, s: {"dy": np.zeros((T * B, H))}, ValueError, "dy"),
    "dy_float32": (lambda y, s: {"dy": np.zeros((T, B, H), np.float32)}, TypeError, "dy"),
    "dy_int": (lambda y, s: {"dy": np.zeros((T, B, H), int)}, TypeError, "dy"),
    "dh_n_short_B": (lambda y, s: {"dh_n": np.zeros((B - 1, H))}, ValueError, "dh_n"),
    "dh_n_torch_layout": (lambda y, s: {"dh_n": np.zeros((1, B, H))}, ValueError, "dh_n"),
    "dh_n_float32": (lambda y, s: {"dh_n": np.zeros((B, H), np.float32)}, TypeError, "dh_n"),
    "dc_n_short_H": (lambda y, s: {"dc_n": np.zeros((B, H - 1))}, ValueError, "dc_n"),
    "dc_n_float32": (lambda y, s: {"dc_n": np.zeros((B, H), np.float32)}, TypeError, "dc_n"),
}


@pytest.mark.parametrize("cell, case", [p for c in CELLS for p in applicable(BACKWARD_CASES, c)])
def test_bad_backward_gradient(backend, cell, case):
    change, exc, name = BACKWARD_CASES[case]
    out = call_forward(cell, backend, valid_args(cell), training=True)
    grads = dict(zip(("dy",) + tuple(f"d{n}_n" for n in STATE_NAMES[cell]),
                     (np.zeros_like(out.y),) + tuple(np.zeros_like(s) for s in out[1:-1])))
    grads.update(change(out.y, out[1:-1]))
    with raises(exc, name):
        run_backward(cell, out.workspace, grads.pop("dy"), tuple(grads.values()))


# ------------------------------------------------------ accepted variations

@pytest.mark.parametrize("lengths", [
    [3, 1], (3, 1), np.array([3, 1], np.int32), np.array([3, 1], np.uint8),
    np.array([3, 1], np.int64)[::-1][::-1],
], ids=["list", "tuple", "int32", "uint8", "view"])
def test_lengths_accept_any_integer_sequence(backend, lengths):
    args = valid_args("lstm")
    expected = call_forward("lstm", backend, args)
    args["lengths"] = lengths
    got = call_forward("lstm", backend, args)
    for a, e in zip(got[:-1], expected[:-1]):
        np.testing.assert_array_equal(a, e)


@pytest.mark.parametrize("flag", [np.bool_(True), 1])
def test_flags_accept_numpy_bools_and_ints(backend, flag):
    args = valid_args("gru")
    expected = call_forward("gru", backend, args, reverse=True, training=True)
    got = call_forward("gru", backend, args, reverse=flag, training=flag)
    assert got.workspace is not None
    np.testing.assert_array_equal(got.y, expected.y)
