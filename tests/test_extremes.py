"""Values at the edges of floating point: saturating magnitudes, NaN and Inf,
and float32 subnormals.

- Inputs, weights and biases of +-1e4 saturate the gates (sigmoid 0 or 1,
  tanh +-1) and give finite results equal to the reference's, never NaN.
- NaN and Inf propagate as IEEE arithmetic says, exactly as the reference
  computes them: the same values, NaN and Inf in the same places, and only
  where the data flow carries them (padding is never computed, so it receives
  and passes on nothing). Every such call finishes: a watchdog fails the test
  if one takes more than a minute.
- Subnormal float32 inputs, states and weights, and gates saturated so that
  sigmoids return subnormal values, give the reference's results. (Their speed is measured by benchmarks/bench_denormals.py, not
  asserted here; see docs/reliability.md.)
"""
import threading

import numpy as np
import pytest

from conftest import (CELLS, DTYPES, RTOL, STATE_NAMES, arrays_of, assert_close,
                      assert_representable_close, cast, final_states, make_params,
                      run_forward)
from test_backends import forward_backward, make_case

T, B, I, H = 6, 4, 3, 5
LENGTHS = np.array([6, 3, 0, 5])          # unsorted, full, partial, empty

dtype_cases = pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
direction_cases = pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
cell_cases = pytest.mark.parametrize("cell", CELLS)


def finishes(fn, seconds=60):
    """``fn()``, run in a thread that must finish within ``seconds`` (the
    kernels release the GIL, so a hang there cannot hang the watchdog)."""
    result = {}

    def target():
        try:
            result["value"] = fn()
        except BaseException as exc:      # re-raised in the test's thread
            result["error"] = exc
    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"the call did not finish within {seconds} s"
    if "error" in result:
        raise result["error"]
    return result["value"]


def case(cell, dtype, seed=0):
    return make_case(cell, (T, B, I, H), dtype, seed)


def compare_with_reference(backend, cell, dtype, args, **kw):
    """Forward and backward of ``args`` on ``backend`` (under the watchdog) and
    on the reference in float64; every array matched with assert_representable_close,
    which also requires NaN and Inf in the same places. Returns the results."""
    def quiet_call():                         # errstate is per thread
        with np.errstate(all="ignore"):
            return forward_backward(cell, backend, *args, **kw)
    with np.errstate(all="ignore"):
        got = finishes(quiet_call)
        f64 = [a.astype(np.float64) if isinstance(a, np.ndarray) else cast(a, np.float64)
               for a in args]
        expected = forward_backward(cell, "reference", *f64, **kw)
    for result, exp in zip(got, expected):
        for name, e in arrays_of(exp).items():
            a = arrays_of(result)[name]
            if e is None:
                assert a is None, name
                continue
            assert a.dtype == dtype, name
            assert_representable_close(a, e, RTOL[np.dtype(dtype)], name)
    return got


# ------------------------------------------------------------------ saturation

@direction_cases
@dtype_cases
@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_values_of_1e4_saturate_the_gates_and_stay_finite(backend, cell, dtype, reverse):
    """Every input, weight and bias is +-1e4. With I = 3 (odd), x @ W_ih^T is
    an odd multiple of 1e8, which the other terms (biases 2e4, h @ W_hh^T at
    most H * 1e4 * max|h| = 1e5) cannot cancel: every gate is saturated, in
    float32 as in float64. (ReLU does not saturate: its state grows by a
    factor of up to H * 1e4 per step, an overflow to Inf as IEEE says.)"""
    rng = np.random.default_rng(7)
    x, states, params, dy, dstates = case(cell, dtype)
    assert I % 2 == 1

    def huge(a):
        return (1e4 * rng.choice([-1.0, 1.0], a.shape)).astype(dtype)
    args = (huge(x), states, tuple(huge(p) for p in params), dy, dstates)
    out, grads = compare_with_reference(backend, cell, dtype, args, lengths=LENGTHS,
                                        reverse=reverse)
    for name, a in {**arrays_of(out), **arrays_of(grads)}.items():
        assert np.all(np.isfinite(a)), name
    if cell == "rnn_tanh":
        # h = tanh(pre) with |pre| >= 1e4 (or exactly 0): +-1, or 0 (also when padded)
        assert np.all(np.isin(out.y, [-1, 0, 1]))
        assert np.mean(out.y[:, 0] != 0) > 0.5


# --------------------------------------------------------------- NaN and Inf

#: (t, b, i) entries of x set to a non-finite value; all at valid steps of
#: sequences that also have padding (LENGTHS), so the padding test below is strict
NONFINITE_X = {
    "nan": [((1, 1, 0), np.nan)],
    "inf": [((2, 3, 1), np.inf)],
    "-inf": [((0, 1, 2), -np.inf)],
    "nan_and_inf": [((4, 0, 0), np.nan), ((0, 3, 2), np.inf), ((1, 3, 0), -np.inf)],
    "last_valid_step": [((2, 1, 1), np.nan)],      # carried through padding afterwards
}


@pytest.mark.parametrize("kind", NONFINITE_X)
@direction_cases
@dtype_cases
@cell_cases
def test_nonfinite_input_propagates_as_the_reference_says(backend, cell, dtype, reverse, kind):
    x, states, params, dy, dstates = case(cell, dtype)
    x = x.copy()
    for idx, value in NONFINITE_X[kind]:
        x[idx] = value
    out, grads = compare_with_reference(backend, cell, dtype, (x, states, params, dy, dstates),
                                        lengths=LENGTHS, reverse=reverse)
    # sequences without a non-finite input are untouched (a NaN in x reaches y:
    # it is not absorbed by a saturating gate as an Inf can be)
    hit = {b for (_, b, _), _ in NONFINITE_X[kind]}
    clean = [b for b in range(B) if b not in hit]
    assert np.all(np.isfinite(out.y[:, clean])) and np.all(np.isfinite(grads.dx[:, clean]))
    if any(np.isnan(v) for _, v in NONFINITE_X[kind]):
        nan_b = next(b for (_, b, _), v in NONFINITE_X[kind] if np.isnan(v))
        assert np.isnan(out.y[:, nan_b]).any()
    # padding got no gradient, whatever its sequence carried
    padded = np.arange(T)[:, None] >= LENGTHS[None, :]
    assert not np.any(grads.dx[padded])


#: non-finite values in the other arguments: (argument, index, value)
NONFINITE_OTHER = {
    "h0_nan": ("h0", (1, 0), np.nan),
    "h0_inf": ("h0", (3, 2), np.inf),
    "c0_inf": ("c0", (1, 1), -np.inf),
    "weight_ih_nan": ("weight_ih", (0, 1), np.nan),
    "weight_hh_inf": ("weight_hh", (0, 0), np.inf),
    "bias_hh_nan": ("bias_hh", (1,), np.nan),
    "dy_inf": ("dy", (2, 1, 3), np.inf),
    "dy_padding_nan": ("dy", (4, 1, 0), np.nan),        # t=4 is padding for b=1
    "dh_n_nan": ("dh_n", (2, 4), np.nan),                # b=2 is all padding
}


@direction_cases
@dtype_cases
@pytest.mark.parametrize("cell, kind", [(c, k) for c in CELLS for k in NONFINITE_OTHER
                                        if c == "lstm" or NONFINITE_OTHER[k][0] != "c0"])
def test_nonfinite_states_weights_and_gradients_propagate_as_the_reference_says(
        backend, cell, dtype, reverse, kind):
    name, idx, value = NONFINITE_OTHER[kind]
    x, states, params, dy, dstates = case(cell, dtype)
    args = {"x": x, "dy": dy.copy(),
            **{f"{n}0": s.copy() for n, s in zip(STATE_NAMES[cell], states)},
            **dict(zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), (p.copy() for p in params))),
            **{f"d{n}_n": d.copy() for n, d in zip(STATE_NAMES[cell], dstates)}}
    args[name][idx] = value
    states = tuple(args[f"{n}0"] for n in STATE_NAMES[cell])
    params = tuple(args[n] for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
    dstates = tuple(args[f"d{n}_n"] for n in STATE_NAMES[cell])
    out, grads = compare_with_reference(backend, cell, dtype, (x, states, params, args["dy"],
                                                               dstates),
                                        lengths=LENGTHS, reverse=reverse)
    if kind == "dy_padding_nan":                 # dy is not read at padded steps
        assert all(np.all(np.isfinite(a)) for a in arrays_of(grads).values())
    if kind == "dh_n_nan":                       # b=2 took no step: dh0 is dh_n, nothing else
        np.testing.assert_array_equal(grads.dh0[2], dstates[0][2])
        assert np.all(np.isfinite(grads.dx)) and np.all(np.isfinite(grads.dweight_hh))


@cell_cases
def test_nonfinite_padding_carried_into_the_backward_matches_the_reference(backend, cell):
    """A NaN at a sequence's last valid step is carried through its padding;
    with a ReLU, whose derivative at NaN is 0 (a select), the weight gradient
    stays finite: the padded steps must not contribute 0 * NaN to it."""
    x, states, params, dy, dstates = case(cell, np.float64)
    x = x.copy()
    x[2, 1, :] = np.nan                            # b=1 has length 3
    out, grads = compare_with_reference(backend, cell, np.float64, (x, states, params, dy,
                                                                    dstates), lengths=LENGTHS)
    assert np.all(np.isnan(final_states(out)[0][1]))      # carried to the end
    if cell == "rnn_relu":
        assert np.all(np.isfinite(grads.dweight_hh))


# ------------------------------------------------------------------ subnormals

SUBNORMAL = np.float32(1e-39)


def subnormal_case(cell, scenario):
    """The scenarios of benchmarks/bench_denormals.py, at a small shape; here
    "saturated" drives only the first gate block (LSTM i, GRU r) to sigmoids of
    about 1e-38, so that the results keep a normal scale to compare at."""
    x, states, params, dy, dstates = case(cell, np.float32)
    w_ih, w_hh, b_ih, b_hh = (p.copy() for p in params)
    if scenario == "x":
        x = x * SUBNORMAL
    elif scenario == "state":
        states = tuple(s * SUBNORMAL for s in states)
        x = x * SUBNORMAL
        w_ih, w_hh = w_ih * np.float32(1e-3), w_hh * np.float32(1e-3)
        b_ih[:] = 0
        b_hh[:] = 0
    elif scenario == "weights":
        w_ih, w_hh = w_ih * SUBNORMAL, w_hh * SUBNORMAL
    elif scenario == "saturated":
        # sigmoid(-87.8 +- 0.5) = 1 / (1 + e^(87.3 .. 88.3)): 8e-39 .. 2e-38, subnormal
        # below 87.34; float32's exp is finite up to 88.38
        b_ih[:H] = -87.8
    return x, states, (w_ih, w_hh, b_ih, b_hh), dy, dstates


@pytest.mark.parametrize("scenario", ["x", "state", "weights", "saturated"])
@cell_cases
def test_float32_subnormals_give_the_reference_results(backend, cell, scenario):
    args = subnormal_case(cell, scenario)
    x, states, params = args[:3]
    tiny = np.finfo(np.float32).tiny
    inputs = (x,) + states + params
    assert any(np.any((a != 0) & (np.abs(a) < tiny)) for a in inputs) or scenario == "saturated"
    out, grads = compare_with_reference(backend, cell, np.float32, args, lengths=LENGTHS)
    for name, a in {**arrays_of(out), **arrays_of(grads)}.items():
        assert np.all(np.isfinite(a)), name


def test_float32_subnormal_state_decays_like_the_reference(backend):
    """An RNN whose state shrinks by ~1/40 per step passes through the whole
    subnormal range to zero; every step equals the reference's (70 steps, so
    that the float64 reference reaches 1e-115, far below float32)."""
    T_long = 70
    w_ih, w_hh, b_ih, b_hh = make_params("rnn_tanh", 1, 1, np.float32)
    w_hh = np.full((1, 1), 0.025, np.float32)
    x = np.zeros((T_long, 1, 1), np.float32)
    h0 = np.full((1, 1), 0.5, np.float32)
    zero = np.zeros(1, np.float32)
    out = run_forward("rnn_tanh", backend, x, (h0,), (w_ih, w_hh, zero, zero))
    ref = run_forward("rnn_tanh", "reference", x.astype(np.float64), (h0.astype(np.float64),),
                      cast((w_ih, w_hh, zero, zero), np.float64))
    assert_representable_close(out.y, ref.y, RTOL[np.dtype(np.float32)], "y")
    tiny = np.finfo(np.float32).tiny
    assert np.any((out.y != 0) & (np.abs(out.y) < tiny))      # went through subnormals
    assert out.h_n[0, 0] == 0
    assert_close(out.y[:20], ref.y[:20], RTOL[np.dtype(np.float32)], "normal range")


# ------------------------------------------------------------- huge sizes

def test_sizes_beyond_blas_32_bit_integers_are_refused_before_any_allocation(backend):
    """BLAS takes 32-bit sizes: a GEMM over T*B >= 2**31 rows would get a
    truncated size and compute garbage. Such calls raise a ValueError naming
    the argument, checked before anything is copied or allocated (the arrays
    here hold no data: I = 0, or a broadcast view)."""
    x = np.empty((2**16, 2**15, 0), np.float32)              # T*B = 2**31 rows
    w_ih, w_hh = np.zeros((5, 0), np.float32), np.zeros((5, 5), np.float32)
    with pytest.raises(ValueError, match=r"^x must have at most 2\*\*31 - 1 rows"):
        run_forward("rnn_tanh", backend, x, (None,), (w_ih, w_hh, None, None))
    H = 2**29                                                # G*H = 2**31 for the LSTM
    huge = np.broadcast_to(np.zeros((1, 1), np.float32), (4 * H, H))
    with pytest.raises(ValueError, match=r"^weight_hh must have at most 2\*\*31 - 1 rows"):
        run_forward("lstm", backend, np.zeros((2, 1, 0), np.float32), (None, None),
                    (np.zeros((4 * H, 0), np.float32), huge, None, None))
