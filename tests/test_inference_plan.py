"""A frozen layer's planned inference calls (fastrnn/_inference_plan.py).

A call whose arrays are exactly what its shape's plan expects runs the planned
backend calls directly; everything else goes through the layer's forward. Both
must give the layer's bits, the plan must be what plain arrays take, and every
other input must still be converted or refused as the layer does.
"""
import numpy as np
import pytest

import fastrnn
from fastrnn import _inference_plan, _parallel, kernels
from conftest import make_layer

pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported")

CELLS = ("rnn_tanh", "rnn_relu", "lstm", "gru")
NATIVE = [b for b in fastrnn.available_backends() if b != "reference"]


def arrays(result):
    y, h = result
    return [y] + (list(h) if isinstance(h, tuple) else [h])


def assert_same_bits(a, b):
    for got, want in zip(arrays(a), arrays(b), strict=True):
        assert type(got) is np.ndarray
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


@pytest.fixture
def general_calls(monkeypatch):
    """The calls that went through the layer's forward (``kernels._run``)."""
    calls = []
    original = kernels._run

    def counted(*args, **kw):
        calls.append(args[0])
        return original(*args, **kw)
    monkeypatch.setattr(kernels, "_run", counted)
    return calls


def through_plan(general_calls, call, *args):
    """``call(*args)`` and whether it ran without the layer's forward."""
    del general_calls[:]
    out = call(*args)
    return out, not general_calls


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    saved = fastrnn.get_num_threads()
    fastrnn.set_num_threads(request.param)
    yield request.param
    fastrnn.set_num_threads(saved)


def random_hx(layer, B, dtype, rng, unbatched=False, drop=None):
    """Initial states for ``layer`` (``drop``: the index of an LSTM state left None)."""
    LD = layer.num_layers * layer.num_directions
    sizes = [layer.output_size] + ([layer.hidden_size] if layer.mode == "lstm" else [])
    hx = [(0.5 * rng.standard_normal((LD, n) if unbatched else (LD, B, n))).astype(dtype)
          for n in sizes]
    if drop is not None:
        hx[drop] = None
    return tuple(hx) if layer.mode == "lstm" else hx[0]


OPTIONS = [
    dict(),
    dict(num_layers=2),
    dict(bidirectional=True),
    dict(num_layers=3, bidirectional=True, dropout=0.3),   # dropout: training only
    dict(batch_first=True),
    dict(bias=False),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("options", OPTIONS,
                         ids=lambda o: "-".join(map(str, o.items())) or "plain")
@pytest.mark.parametrize("cell", CELLS)
def test_plain_arrays_take_the_plan_and_get_the_layers_bits(general_calls, threads, backend,
                                                            cell, options, dtype):
    # (B, T): one step of one row, one step of a batch, a sequence of one row,
    # and a batch long enough to split (B = 8) or pipeline on two threads
    rng = np.random.default_rng(7)
    layer = make_layer(cell, 6, 24, backend=backend, rng=2, dtype=dtype, **options)
    ice = layer.freeze()
    batch_first = options.get("batch_first", False)
    for B, T in [(1, 1), (5, 1), (1, 9), (8, 13)]:
        x = rng.standard_normal((B, T, 6) if batch_first else (T, B, 6)).astype(dtype)
        hx = random_hx(layer, B, dtype, rng)
        plain = not batch_first or B == 1 or T == 1    # else x's time-major view is strided
        for args in [(x,), (x, hx)]:
            for _ in range(2):             # the first call makes the plan, the second reuses it
                got, taken = through_plan(general_calls, ice, *args)
                assert_same_bits(got, layer(*args))
                assert taken == (plain and backend != "reference"), (B, T, len(args))


@pytest.mark.parametrize("cell", CELLS)
def test_unbatched_input_and_steps_take_the_plan(general_calls, backend, cell):
    rng = np.random.default_rng(3)
    layer = make_layer(cell, 5, 16, num_layers=2, backend=backend, rng=4)
    ice = layer.freeze()
    x = rng.standard_normal((7, 5)).astype(np.float32)
    hx = random_hx(layer, 1, np.float32, rng, unbatched=True)
    for args in [(x,), (x, hx)]:
        got, taken = through_plan(general_calls, ice, *args)
        assert_same_bits(got, layer(*args))
        assert taken == (backend != "reference")
    # streaming: a step's state fed back as the next one's
    state, state_ref = None, None
    for t in range(4):
        (y, state), taken = through_plan(general_calls, ice.step, x[t], state)
        y_ref, state_ref = layer.step(x[t], state_ref)
        assert taken == (backend != "reference")
        assert_same_bits((y, state), (y_ref, state_ref))


@pytest.mark.parametrize("drop", [0, 1], ids=["no-h0", "no-c0"])
def test_lstm_with_one_initial_state_left_out(general_calls, backend, drop):
    rng = np.random.default_rng(1)
    layer = fastrnn.LSTM(4, 16, num_layers=2, backend=backend, rng=0)
    ice = layer.freeze()
    x = rng.standard_normal((3, 2, 4)).astype(np.float32)
    hx = random_hx(layer, 2, np.float32, rng, drop=drop)
    got, taken = through_plan(general_calls, ice, x, hx)
    assert_same_bits(got, layer(x, hx))
    assert taken == (backend != "reference")


@pytest.mark.parametrize("P", [3, 8])
def test_lstm_with_a_projection(general_calls, backend, P):
    rng = np.random.default_rng(2)
    layer = fastrnn.LSTM(5, 16, proj_size=P, num_layers=2, bidirectional=True,
                         backend=backend, rng=1)
    ice = layer.freeze()
    x = rng.standard_normal((6, 3, 5)).astype(np.float32)
    hx = random_hx(layer, 3, np.float32, rng)
    for args in [(x,), (x, hx)]:
        got, taken = through_plan(general_calls, ice, *args)
        assert_same_bits(got, layer(*args))
        assert taken == (backend != "reference")


def test_other_inputs_take_the_layers_forward(general_calls):
    """Anything but plain arrays of the plan's shapes and dtype is converted
    or refused by the layer's forward, as without a plan."""
    rng = np.random.default_rng(5)
    layer = fastrnn.LSTM(4, 8, num_layers=2, rng=0)
    ice = layer.freeze()
    x = rng.standard_normal((5, 3, 4)).astype(np.float32)
    h0, c0 = random_hx(layer, 3, np.float32, rng)
    ice(x, (h0, c0))                            # the shape's plan exists from here
    wide = rng.standard_normal((5, 3, 8)).astype(np.float32)
    lengths = np.array([5, 2, 0])
    cases = {
        "lengths": ((x, (h0, c0), lengths), (x, (h0, c0), lengths)),
        "x strided": ((wide[:, :, ::2], (h0, c0)), (np.ascontiguousarray(wide[:, :, ::2]),
                                                    (h0, c0))),
        "x byte-swapped": ((x.astype(">f4"), (h0, c0)), (x, (h0, c0))),
        "x a subclass": ((x.view(np.recarray), (h0, c0)), (x, (h0, c0))),
        "hx a list": ((x, [h0, c0]), (x, (h0, c0))),
        "h0 strided": ((x, (np.asfortranarray(h0), c0)), (x, (h0, c0))),
        "c0 byte-swapped": ((x, (h0, c0.astype(">f4"))), (x, (h0, c0))),
    }
    try:
        import torch
        cases["x a tensor"] = ((torch.from_numpy(x), (h0, c0)), (x, (h0, c0)))
    except ImportError:
        pass
    for name, (args, same_as) in cases.items():
        got, taken = through_plan(general_calls, ice, *args)
        assert not taken, name
        assert_same_bits(got[:2], layer(*same_as)[:2])


def test_bad_input_is_refused_as_by_the_layer():
    ice = fastrnn.GRU(5, 8).freeze()
    x = np.zeros((3, 2, 5), np.float32)
    ice(x)                                      # the shape's plan exists from here
    with pytest.raises(TypeError, match="x has dtype float64"):
        ice(x.astype(np.float64))
    with pytest.raises(ValueError, match="input_size=5"):
        ice(np.zeros((3, 2, 4), np.float32))
    with pytest.raises(ValueError, match=r"hx must have shape"):
        ice(x, np.zeros((1, 3, 8), np.float32))
    with pytest.raises(TypeError, match=r"hx must have the layer's dtype"):
        ice(x, np.zeros((1, 2, 8), np.float64))
    lstm = fastrnn.LSTM(5, 8).freeze()
    lstm(x)
    with pytest.raises(TypeError, match=r"hx must be a tuple \(h_0, c_0\)"):
        lstm(x, np.zeros((1, 2, 8), np.float32))
    with pytest.raises(ValueError, match=r"hx\[1\] must have shape"):
        lstm(x, (np.zeros((1, 2, 8), np.float32), np.zeros((2, 2, 8), np.float32)))


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_each_call_returns_its_own_arrays(backend, cell):
    """Outputs are fresh arrays: a later call, or a change to one output in
    place, changes no other output."""
    rng = np.random.default_rng(4)
    layer = make_layer(cell, 3, 8, backend=backend, rng=0)
    ice = layer.freeze()
    x1, x2 = (rng.standard_normal((1, 2, 3)).astype(np.float32) for _ in range(2))
    first = ice(x1)
    kept = [a.copy() for a in arrays(first)]
    ice(x2)
    for a, b in zip(arrays(first), kept):
        np.testing.assert_array_equal(a, b)
    out = arrays(first)
    for a in out[1:]:
        a[...] = 7.0
    np.testing.assert_array_equal(out[0], kept[0])
    for a, b in zip(out[1:], arrays(ice(x1))[1:]):
        assert not np.shares_memory(a, b)


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_training_final_states_are_copies(backend, cell):
    """In training h_n is a copy of the states the backward reads: changing
    it in place changes no gradient (an inference call hands over its slot)."""
    rng = np.random.default_rng(6)
    I, H, B, T = 3, 8, 2, 5
    fn = {"rnn_tanh": fastrnn.rnn_forward, "lstm": fastrnn.lstm_forward,
          "gru": fastrnn.gru_forward}[cell]
    back = {"rnn_tanh": fastrnn.rnn_backward, "lstm": fastrnn.lstm_backward,
            "gru": fastrnn.gru_backward}[cell]
    G = {"lstm": 4, "gru": 3}.get(cell, 1)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    states = [rng.standard_normal((B, H)).astype(np.float32)
              for _ in range(2 if cell == "lstm" else 1)]
    w = [rng.standard_normal(s).astype(np.float32) * 0.3 for s in [(G * H, I), (G * H, H)]]
    dy = rng.standard_normal((T, B, H)).astype(np.float32)
    grads = []
    for spoil in (False, True):
        out = fn(x, *states, *w, training=True, backend=backend)
        if spoil:
            out.h_n[...] = 1e3
            if cell == "lstm":
                out.c_n[...] = 1e3
        grads.append(back(out.workspace, dy))
    for a, b in zip(*grads):
        np.testing.assert_array_equal(a, b)


def test_directions_side_by_side_take_the_layers_forward(general_calls, monkeypatch):
    """A bidirectional call large enough to run its directions on their own
    threads has no plan: the layer's forward runs them side by side."""
    saved = fastrnn.get_num_threads()
    try:
        fastrnn.set_num_threads(2)
        layer = fastrnn.GRU(8, 16, bidirectional=True, rng=0)
        ice = layer.freeze()
        x = np.ones((20, 4, 8), np.float32)
        monkeypatch.setattr(_parallel, "INDEPENDENT_MIN_MACS", 1)
        assert _inference_plan.make(ice._layer, x.shape) is None
        got, taken = through_plan(general_calls, ice, x)
        assert_same_bits(got, layer(x))
        assert not taken
        fastrnn.set_num_threads(1)              # one thread: one after the other, planned
        assert isinstance(_inference_plan.make(ice._layer, x.shape), _inference_plan.Plan)
        got, taken = through_plan(general_calls, ice, x)
        assert_same_bits(got, layer(x))
        assert taken
    finally:
        fastrnn.set_num_threads(saved)


def test_no_plan_for_empty_calls_or_the_reference(general_calls):
    layer = fastrnn.RNN(3, 4, rng=0)
    ice = layer.freeze()
    for shape in [(0, 2, 3), (4, 0, 3), (4, 2, 5), (4, 2)]:
        assert _inference_plan.make(ice._layer, shape) is None
    for T, B in [(0, 2), (4, 0)]:
        x = np.ones((T, B, 3), np.float32)
        assert_same_bits(ice(x), layer(x))
    ref = fastrnn.RNN(3, 4, rng=0, backend="reference").freeze()
    assert _inference_plan.make(ref._layer, (4, 2, 3)) is None


def test_plans_by_shape_and_threads_are_bounded(monkeypatch):
    monkeypatch.setattr(_parallel, "MAX_PLANS", 4)
    layer = fastrnn.GRU(3, 8, rng=0)
    ice = layer.freeze()
    x = np.ones((12, 2, 3), np.float32)
    saved = fastrnn.get_num_threads()
    try:
        for threads in (1, 2):
            fastrnn.set_num_threads(threads)
            for T in range(1, 4):
                assert_same_bits(ice(x[:T]), layer(x[:T]))
        assert 1 <= len(ice._plans) <= 4
        keys = {key[1] for key in ice._plans}           # the thread count is in the key
        assert (2, True) in keys
    finally:
        fastrnn.set_num_threads(saved)
