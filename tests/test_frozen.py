"""layer.freeze(): inference with the weights checked and prepared once.

A frozen layer must give the layer's own bits on every path the kernels take
(packed panels, the unit split, the projections ahead of the loop, a split
batch, BLAS for float64), keep what it derived instead of deriving it on every
call, and not see later changes to the layer.
"""
import threading

import numpy as np
import pytest

import fastrnn
from fastrnn import frozen
from conftest import RTOL, assert_close, make_layer

CELLS = ("rnn_tanh", "rnn_relu", "lstm", "gru")

pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported")

# (B, T, I, H): odd sizes, one row, one step, and shapes that take each path
# of the native backends with two threads: a unit split (B = 1, H = 128: the
# LSTM's and GRU's W_hh^T of 192 KiB and more), the projections ahead of a
# one-core loop (the RNN there), a split batch (B = 16), BLAS (float64)
SHAPES = [(3, 7, 5, 9), (1, 1, 8, 16), (1, 9, 3, 7), (1, 40, 100, 128), (16, 12, 20, 32),
          (2, 30, 64, 64)]


def random_hx(layer, B, dtype, rng):
    LD = layer.num_layers * layer.num_directions
    sizes = [layer.output_size] + ([layer.hidden_size] if layer.mode == "lstm" else [])
    hx = tuple((0.5 * rng.standard_normal((LD, B, n))).astype(dtype) for n in sizes)
    return hx if layer.mode == "lstm" else hx[0]


def arrays(result):
    y, h = result
    return [y] + (list(h) if isinstance(h, tuple) else [h])


def assert_same_bits(a, b):
    for got, want in zip(arrays(a), arrays(b), strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("cell", CELLS)
def test_frozen_gives_the_layers_bits(two_threads, backend, cell, dtype, shape):
    B, T, I, H = shape
    rng = np.random.default_rng(sum(shape))
    layer = make_layer(cell, I, H, dtype=dtype, backend=backend, rng=0)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    hx = random_hx(layer, B, dtype, rng)
    lengths = rng.integers(0, T + 1, B)
    ice = layer.freeze()
    for _ in range(3):          # the first call derives, the others reuse
        assert_same_bits(ice(x), layer(x))
        assert_same_bits(ice(x, hx, lengths), layer(x, hx, lengths))
    # and the layer's bits are right
    ref = make_layer(cell, I, H, dtype=dtype, backend="reference", rng=0)
    expected = ref(x, hx, lengths)
    got = ice(x, hx, lengths)
    assert_close(got[0], expected[0], RTOL[np.dtype(dtype)], "y")


@pytest.mark.parametrize("shape", [(16, 12, 20, 32), (2, 30, 64, 64)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("cell", CELLS)
def test_frozen_projects_as_the_layer_past_the_panels_byte_limit(two_threads, monkeypatch,
                                                                 cell, shape):
    """Past ``PROJECT_PACKED_MAX_BYTES`` an inference call of enough rows still
    takes W_ih^T's panels, by a rule on the shape: the frozen layer, whose
    panels are packed once, and the layer, which packs them on every call,
    both take them, and give the same bits."""
    cb = pytest.importorskip("fastrnn._cython_backend")
    B, T, I, H = shape
    monkeypatch.setattr(cb, "PROJECT_PACKED_MAX_BYTES", 16)
    monkeypatch.setattr(cb, "PROJECT_PACKED_MIN_ROWS", 1)
    packs = []
    pack = cb._pack
    monkeypatch.setattr(cb, "_pack", lambda w, *a: (packs.append(w.shape), pack(w, *a))[1])
    rng = np.random.default_rng(sum(shape))
    layer = make_layer(cell, I, H, dtype=np.float32, backend="cython", rng=0)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    want = layer(x)
    assert layer.weight_ih_l0.shape in packs      # the layer's call packed W_ih^T
    ice = layer.freeze()
    for _ in range(2):
        assert_same_bits(ice(x), want)


@pytest.mark.parametrize("options", [
    dict(num_layers=2, bidirectional=True),
    dict(batch_first=True),
    dict(bias=False),
    dict(num_layers=3, dropout=0.5),        # dropout only applies in training
], ids=["stacked-bidirectional", "batch_first", "no-bias", "dropout"])
@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_frozen_options(two_threads, backend, cell, options):
    B, T, I, H = 4, 11, 6, 32
    rng = np.random.default_rng(5)
    layer = make_layer(cell, I, H, backend=backend, rng=1, **options)
    x = rng.standard_normal((B, T, I) if options.get("batch_first") else (T, B, I))
    x = x.astype(np.float32)
    lengths = np.array([11, 0, 5, 8])
    ice = layer.freeze()
    for _ in range(2):
        assert_same_bits(ice(x, None, lengths), layer(x, None, lengths))
    # one unbatched sequence, and streaming step by step
    assert_same_bits(ice(x[:, 0] if not options.get("batch_first") else x[0]),
                     layer(x[:, 0] if not options.get("batch_first") else x[0]))
    if not options.get("bidirectional"):
        step_x = x[0] if not options.get("batch_first") else x[:, 0]
        assert_same_bits(ice.step(step_x), layer.step(step_x))


@pytest.mark.parametrize("P", [5, 16])
def test_frozen_lstm_with_a_projection(two_threads, backend, P):
    layer = fastrnn.LSTM(7, 32, proj_size=P, num_layers=2, backend=backend, rng=3)
    ice = layer.freeze()
    x = np.random.default_rng(0).standard_normal((20, 3, 7)).astype(np.float32)
    for _ in range(2):
        assert_same_bits(ice(x), layer(x))


def counting(monkeypatch, module, name):
    calls = []
    original = getattr(module, name)

    def wrapped(*args, **kw):
        calls.append(args)
        return original(*args, **kw)
    monkeypatch.setattr(module, name, wrapped)
    return calls


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
@pytest.mark.parametrize("shape", [(1, 40, 100, 128), (16, 12, 20, 32), (2, 30, 64, 64)],
                         ids=lambda s: "x".join(map(str, s)))
def test_frozen_packs_once(two_threads, monkeypatch, cell, shape):
    """The layer packs its panels on every call; the frozen layer at its first
    call only, and its unit split's team packs nothing."""
    if "cython" not in fastrnn.available_backends():
        pytest.skip("the Cython backend is not available")
    from fastrnn import _cython_backend
    B, T, I, H = shape
    layer = make_layer(cell, I, H, backend="cython", rng=0)
    x = np.random.default_rng(1).standard_normal((T, B, I)).astype(np.float32)
    packs = counting(monkeypatch, _cython_backend, "_pack")
    rooms = counting(monkeypatch, _cython_backend, "_room_to_pack")
    ice = layer.freeze()
    ice(x)
    first = len(packs)
    assert first >= 1
    for _ in range(3):
        ice(x)
    assert len(packs) == first
    assert not rooms
    layer(x)
    layer(x)
    assert len(packs) + len(rooms) >= first + 2


def test_frozen_numba_derives_once(two_threads, monkeypatch):
    if "numba" not in fastrnn.available_backends():
        pytest.skip("the Numba backend is not available")
    from fastrnn import _numba_backend
    layer = fastrnn.GRU(24, 64, backend="numba", rng=0)
    x = np.random.default_rng(1).standard_normal((30, 2, 24)).astype(np.float32)
    packs = counting(monkeypatch, _numba_backend, "_pack")
    prepares = counting(monkeypatch, _numba_backend, "prepare_forward")
    ice = layer.freeze()
    ice(x)
    assert len(packs) == 1 and len(prepares) == 1
    ice(x)                  # the kept ForwardCall: nothing prepared again
    assert len(packs) == 1 and len(prepares) == 1
    layer(x)
    assert len(packs) == 2 and len(prepares) == 2


def test_memo_keeps_only_for_frozen_params():
    made = []

    def make():
        made.append(1)
        return np.ones(3)
    plain = (np.zeros(2),)
    frozen.memo(plain, "k", make)
    frozen.memo(plain, "k", make)
    assert len(made) == 2
    fp = frozen.FrozenParams(plain)
    a = frozen.memo(fp, "k", make)
    b = frozen.memo(fp, "k", make)
    assert a is b and len(made) == 3
    assert fp == plain and isinstance(fp, tuple)


def test_frozen_is_a_snapshot(backend):
    layer = fastrnn.LSTM(5, 16, backend=backend, rng=0)
    x = np.random.default_rng(1).standard_normal((6, 2, 5)).astype(np.float32)
    before = layer(x)
    ice = layer.freeze()
    layer.weight_hh_l0 *= 2                   # in place, as an optimizer would
    layer.bias_ih_l0 = np.zeros(64, np.float32)
    assert not np.array_equal(layer(x)[0], before[0])
    assert_same_bits(ice(x), before)
    # its own copies are read-only, and it takes no new attributes
    with pytest.raises(ValueError, match="read-only"):
        ice.weight_hh_l0[0, 0] = 1.0
    with pytest.raises(AttributeError, match="freeze it again"):
        ice.weight_hh_l0 = np.zeros((64, 16), np.float32)
    with pytest.raises(AttributeError, match="freeze it again"):
        ice.backend = "reference"
    # its weights load into a new layer that gives the same bits
    again = fastrnn.LSTM(5, 16, backend=backend)
    again.load_state_dict(ice.state_dict())
    assert_same_bits(again(x), before)
    assert [n for n, _ in ice.named_parameters()] == [n for n, _ in layer.named_parameters()]
    assert ice.hidden_size == 16 and ice.mode == "lstm" and ice.backend == backend
    assert repr(ice).startswith("Frozen(")


def test_frozen_checks_its_input():
    ice = fastrnn.GRU(5, 8).freeze()
    with pytest.raises(TypeError, match="x has dtype float64"):
        ice(np.zeros((3, 2, 5)))
    with pytest.raises(ValueError, match="input_size=5"):
        ice(np.zeros((3, 2, 4), np.float32))
    with pytest.raises(ValueError, match=r"hx must have shape"):
        ice(np.zeros((3, 2, 5), np.float32), np.zeros((1, 3, 8), np.float32))
    with pytest.raises(TypeError, match="training"):
        ice(np.zeros((3, 2, 5), np.float32), training=True)
    with pytest.raises(TypeError, match="fastrnn.RNN, LSTM or GRU"):
        fastrnn.frozen.Frozen(np.zeros(3))
    with pytest.raises(AttributeError):
        ice.no_such_thing


def test_frozen_from_two_threads(backend):
    """Calls from several Python threads at once share what the first derived."""
    layer = fastrnn.LSTM(16, 128, backend=backend, rng=0)
    ice = layer.freeze()
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal((25, 1 + k, 16)).astype(np.float32) for k in range(4)]
    expected = [layer(x) for x in xs]
    results = [None] * len(xs)

    def run(k):
        for _ in range(5):
            results[k] = ice(xs[k])
    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, expected):
        assert_same_bits(got, want)


NATIVE = [b for b in fastrnn.available_backends() if b != "reference"]


@pytest.mark.parametrize("backend", NATIVE)
@pytest.mark.parametrize("cell,shape", [
    ("lstm", (1, 40, 16, 128)),     # a unit split on two threads (x86-64-v4)
    ("rnn_tanh", (1, 100, 128, 128)),   # the projections ahead of the loop
    ("gru", (16, 12, 20, 32)),      # a split batch
    ("rnn_tanh", (2, 1, 8, 16)),    # one step
], ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else v)
def test_frozen_decides_once_per_shape_and_threads(monkeypatch, backend, cell, shape):
    """A frozen layer makes an inference call's decisions (split, team,
    kernel and operands) at its first call of each shape and thread count,
    and keeps them; each thread count's calls give the layer's bits."""
    from fastrnn import _parallel
    decided = counting(monkeypatch, _parallel.SplitBackend, "_whole")
    B, T, I, H = shape
    layer = make_layer(cell, I, H, backend=backend, rng=0)
    ice = layer.freeze()
    rng = np.random.default_rng(3)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    x2 = rng.standard_normal((T + 1, B, I)).astype(np.float32)
    saved = fastrnn.get_num_threads()
    try:
        made = []
        for threads in (2, 1, 2, 1):
            fastrnn.set_num_threads(threads)
            expected = layer(x)
            n = len(decided)
            for _ in range(2):
                assert_same_bits(ice(x), expected)
            made.append(len(decided) - n)
        assert made == [1, 1, 0, 0]
        n = len(decided)
        assert_same_bits(ice(x2), layer(x2))        # another shape: its own decisions
        assert len(decided) == n + 2                # the layer's call and the frozen one's
    finally:
        fastrnn.set_num_threads(saved)


def test_frozen_keeps_decisions_for_a_bounded_number_of_shapes(monkeypatch):
    """A stream of ever new shapes does not grow a frozen layer's plans without bound."""
    from fastrnn import _parallel
    monkeypatch.setattr(_parallel, "MAX_PLANS", 4)
    layer = fastrnn.GRU(3, 8, backend=NATIVE[0] if NATIVE else pytest.skip("no native backend"))
    ice = layer.freeze()
    x = np.ones((12, 2, 3), np.float32)
    for T in range(1, 11):
        assert_same_bits(ice(x[:T]), layer(x[:T]))
    params = ice._layer._params_cache[0]
    assert 1 <= len(params.plans) <= 4


def test_frozen_pickles_after_its_calls(backend):
    """A frozen layer that has run (and keeps panels and planned calls, which
    hold compiled kernels) pickles as its snapshot; the copy gives the same
    bits and cannot change either."""
    import pickle
    layer = fastrnn.GRU(6, 32, num_layers=2, backend=backend, rng=0)
    ice = layer.freeze()
    x = np.random.default_rng(1).standard_normal((5, 3, 6)).astype(np.float32)
    expected = ice(x)
    copy_ = pickle.loads(pickle.dumps(ice))
    assert_same_bits(copy_(x), expected)
    assert_same_bits(copy_(x), expected)        # its own derived operands, kept
    with pytest.raises(AttributeError):
        copy_.weight_hh_l0 = np.zeros((96, 32), np.float32)
    with pytest.raises(ValueError):
        copy_.weight_hh_l0[0, 0] = 1.0          # read-only, as the original's
