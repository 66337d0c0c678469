"""The NumPy reference on its own: gradients against finite differences, stepping
equals the full sequence, and the packed-sequence ``lengths`` semantics.

Everything here goes through the public API with ``backend="reference"``; the
other backends are held to the reference in ``test_backends.py``.
"""
import numpy as np
import pytest

from conftest import (CELLS, PARAM_NAMES, STATE_NAMES, arrays_of, assert_close,
                      final_states, make_params, make_states, make_x, param_grads,
                      run_backward, run_forward, state0_grads)

REF = "reference"
T, B, I, H = 4, 3, 2, 3
LENGTHS = np.array([2, 0, 4])          # unsorted, with a 0 and a full length
TIGHT = 1e-12                          # same float64 ops, only summation order may differ

# Central differences in float64: truncation error ~ EPS**2 * |f'''| / 6 ~ 1e-13 and
# rounding error ~ 1e-16 * |loss| / EPS ~ 1e-9 for a loss of order 1..10. So
# atol=1e-8 sits above the noise and rtol=1e-6 still catches any wrong term (a
# missing or wrong term in BPTT changes a gradient by far more than 1e-6).
EPS = 1e-6
FD_RTOL, FD_ATOL = 1e-6, 1e-8

lengths_cases = pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "lengths"])
direction_cases = pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])


def input_names(cell):
    return ("x",) + tuple(f"{s}0" for s in STATE_NAMES[cell]) + PARAM_NAMES


def problem(cell, T=T, B=B):
    """Named float64 inputs and the loss weights ``(wy, (wh, [wc]))``."""
    values = (make_x(T, B, I),) + make_states(cell, B, H) + make_params(cell, I, H)
    inputs = dict(zip(input_names(cell), values))
    rng = np.random.default_rng(10)
    wy = rng.standard_normal((T, B, H))
    wstates = tuple(rng.standard_normal((B, H)) for _ in STATE_NAMES[cell])
    return inputs, wy, wstates


def split(cell, inputs):
    """``inputs`` -> ``(x, states, params)`` for run_forward."""
    n = len(STATE_NAMES[cell])
    v = [inputs[k] for k in input_names(cell)]
    return v[0], tuple(v[1:1 + n]), tuple(v[1 + n:])


def loss(cell, inputs, wy, wstates, **kw):
    """sum(y * wy) + sum(h_n * wh) (+ sum(c_n * wc)): a weighted sum exercises dy, dh_n, dc_n."""
    out = run_forward(cell, REF, *split(cell, inputs), **kw)
    return np.sum(out.y * wy) + sum(np.sum(s * w) for s, w in zip(final_states(out), wstates))


def forward_backward(cell, inputs, wy, wstates, **kw):
    out = run_forward(cell, REF, *split(cell, inputs), training=True, **kw)
    return out, run_backward(cell, out.workspace, wy, wstates)


# ---------------------------------------------------------- finite differences

@lengths_cases
@direction_cases
@pytest.mark.parametrize("cell, name", [(c, n) for c in CELLS for n in input_names(c)])
def test_gradient_matches_finite_differences(cell, name, reverse, lengths):
    inputs, wy, wstates = problem(cell)
    kw = dict(lengths=lengths, reverse=reverse)
    _, grads = forward_backward(cell, inputs, wy, wstates, **kw)
    analytic = arrays_of(grads)["d" + name]

    numeric = np.zeros_like(inputs[name])
    for idx in np.ndindex(numeric.shape):
        f = []
        for sign in (1, -1):
            moved = dict(inputs)
            moved[name] = inputs[name].copy()
            moved[name][idx] += sign * EPS
            f.append(loss(cell, moved, wy, wstates, **kw))
        numeric[idx] = (f[0] - f[1]) / (2 * EPS)

    assert np.any(analytic != 0), "vacuous check: the gradient is identically zero"
    np.testing.assert_allclose(analytic, numeric, rtol=FD_RTOL, atol=FD_ATOL)


# ------------------------------------------------------ stepwise == full run

@lengths_cases
@direction_cases
@pytest.mark.parametrize("cell", CELLS)
def test_stepwise_equals_full_sequence(cell, reverse, lengths):
    """T=1 calls carrying the state (in the direction's time order) equal one
    full call, forward and BPTT (each step's dh0/dc0 fed to the previous step)."""
    inputs, wy, wstates = problem(cell)
    x, states, params = split(cell, inputs)
    full, full_grads = forward_backward(cell, inputs, wy, wstates,
                                        lengths=lengths, reverse=reverse)

    steps = []
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        lengths_t = None if lengths is None else (t < lengths).astype(np.int64)
        out = run_forward(cell, REF, x[t:t + 1], states, params,
                          lengths=lengths_t, training=True)
        assert_close(out.y[0], full.y[t], TIGHT, f"y[{t}]")
        states = final_states(out)
        steps.append((t, out.workspace))
    for a, e in zip(states, final_states(full)):
        assert_close(a, e, TIGHT, "final state")

    dx = np.zeros_like(x)
    dparams = [np.zeros_like(p) for p in params]
    dstates = wstates
    for t, ws in reversed(steps):
        g = run_backward(cell, ws, wy[t:t + 1], dstates)
        dx[t] = g.dx[0]
        dstates = state0_grads(g)
        for acc, d in zip(dparams, param_grads(g)):
            acc += d
    assert_close(dx, full_grads.dx, TIGHT, "dx")
    for a, e in zip(dstates + tuple(dparams), state0_grads(full_grads) + param_grads(full_grads)):
        assert_close(a, e, TIGHT)


# ------------------------------------------------------- lengths semantics

@direction_cases
@pytest.mark.parametrize("cell", CELLS)
def test_padding_is_exactly_zero(cell, reverse):
    """Outputs past each length are exactly zero, and so is the gradient of x there."""
    inputs, wy, wstates = problem(cell)
    out, grads = forward_backward(cell, inputs, wy, wstates, lengths=LENGTHS, reverse=reverse)
    pad = np.arange(T)[:, None] >= LENGTHS[None, :]          # (T, B)
    assert pad.any() and (~pad).any()
    assert np.all(out.y[pad] == 0)
    assert np.any(out.y[~pad] != 0)                          # (relu may give exact zeros)
    assert np.all(grads.dx[pad] == 0)


@direction_cases
@pytest.mark.parametrize("cell", CELLS)
def test_zero_length_passes_state_through(cell, reverse):
    """lengths[b] = 0: h_n[b] == h0[b] (c_n too), zero outputs, and the state
    gradients pass through unchanged (dh0[b] == dh_n[b]) with zero dx."""
    inputs, wy, wstates = problem(cell)
    x, states, params = split(cell, inputs)
    out, grads = forward_backward(cell, inputs, wy, wstates, lengths=LENGTHS, reverse=reverse)
    b = int(np.flatnonzero(LENGTHS == 0)[0])
    for s0, s_n in zip(states, final_states(out)):
        np.testing.assert_array_equal(s_n[b], s0[b])
    for ds_n, ds0 in zip(wstates, state0_grads(grads)):
        np.testing.assert_array_equal(ds0[b], ds_n[b])
    assert np.all(out.y[:, b] == 0)
    assert np.all(grads.dx[:, b] == 0)


@direction_cases
@pytest.mark.parametrize("cell", CELLS)
def test_each_sequence_equals_its_valid_prefix_alone(cell, reverse):
    """Sequence b of a batch with lengths equals running the same direction over
    x[:lengths[b], b] alone (so the reverse direction starts at each sequence's
    own last valid step); parameter gradients are the sum over sequences."""
    inputs, wy, wstates = problem(cell)
    x, states, params = split(cell, inputs)
    out, grads = forward_backward(cell, inputs, wy, wstates, lengths=LENGTHS, reverse=reverse)

    dparams = [np.zeros_like(p) for p in params]
    for b, L in enumerate(LENGTHS):
        one = slice(b, b + 1)
        alone = run_forward(cell, REF, x[:L, one], tuple(s[one] for s in states), params,
                            reverse=reverse, training=True)
        g = run_backward(cell, alone.workspace, wy[:L, one], tuple(w[one] for w in wstates))
        assert_close(out.y[:L, b], alone.y[:, 0], TIGHT, "y")
        for a, e in zip(final_states(out), final_states(alone)):
            assert_close(a[b], e[0], TIGHT, "final state")
        assert_close(grads.dx[:L, b], g.dx[:, 0], TIGHT, "dx")
        for a, e in zip(state0_grads(grads), state0_grads(g)):
            assert_close(a[b], e[0], TIGHT, "dstate0")
        for acc, d in zip(dparams, param_grads(g)):
            acc += d
    for a, e in zip(param_grads(grads), dparams):
        assert_close(a, e, TIGHT, "dparams")


@direction_cases
@pytest.mark.parametrize("cell", CELLS)
def test_full_lengths_equal_no_lengths(cell, reverse):
    inputs, wy, wstates = problem(cell)
    full = np.full(B, T)
    a = forward_backward(cell, inputs, wy, wstates, lengths=full, reverse=reverse)
    e = forward_backward(cell, inputs, wy, wstates, lengths=None, reverse=reverse)
    for ra, re in zip(a, e):
        for k, v in arrays_of(ra).items():
            np.testing.assert_array_equal(v, arrays_of(re)[k], err_msg=k)
