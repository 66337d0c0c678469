"""fastrnn.RNN / LSTM / GRU: the layer API.

Parity with torch.nn.RNN/LSTM/GRU over a grid of every option (outputs, final
states and every gradient, weights loaded through load_state_dict), and, without
torch, the API's own contracts: names, shapes, initialisation, validation,
unbatched and batch-first layouts, streaming, independent training contexts,
omitted gradients, zero lengths, dropout placement and its gradient.
"""
import itertools
import threading
import warnings

import numpy as np
import pytest

import fastrnn
from conftest import (RTOL, as_hx, assert_close, finite_difference_gradient,  # noqa: E402
                      make_layer, states_of)

CELLS = ("rnn_tanh", "rnn_relu", "lstm", "gru")
DTYPES = (np.float32, np.float64)

pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported")


def random_hx(layer, B, dtype, rng, unbatched=False):
    LD = layer.num_layers * layer.num_directions
    sizes = [layer.output_size] + ([layer.hidden_size] if layer.mode == "lstm" else [])
    shape = (lambda n: (LD, n)) if unbatched else (lambda n: (LD, B, n))
    return tuple((0.5 * rng.standard_normal(shape(n))).astype(dtype) for n in sizes)


# ---------------------------------------------------------------- torch parity

T, B, I, H, P = 5, 3, 4, 6, 3
LENGTHS = np.array([3, 5, 1])             # unsorted, one full (torch rejects 0)


def torch_module(torch, cell, **kw):
    if cell.startswith("rnn_"):
        return torch.nn.RNN(nonlinearity=cell[4:], **kw)
    return {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](**kw)


def run_torch(torch, module, cell, x, states, lengths, batch_first, w_y, w_states):
    """Forward + backward of ``module`` on sum(y*w_y) + sum(state_n*w_state).

    Returns numpy ``(y, states_n, {"x", "h0", "c0", param names...})``.
    """
    pack = torch.nn.utils.rnn
    xt = torch.tensor(x, requires_grad=True)
    st = [torch.tensor(s, requires_grad=True) for s in states]
    inp = xt
    if lengths is not None:
        inp = pack.pack_padded_sequence(xt, torch.as_tensor(lengths), batch_first=batch_first,
                                        enforce_sorted=False)
    out, hn = module(inp, tuple(st) if cell == "lstm" else st[0])
    if lengths is not None:
        out, _ = pack.pad_packed_sequence(out, batch_first=batch_first,
                                          total_length=x.shape[1 if batch_first else 0])
    hn = states_of(hn, cell)
    loss = (out * torch.tensor(w_y)).sum() + sum((s * torch.tensor(w)).sum()
                                                 for s, w in zip(hn, w_states))
    loss.backward()
    grads = {"x": xt.grad.numpy()}
    grads.update((f"{n}0", s.grad.numpy()) for n, s in zip("hc", st))
    grads.update((n, p.grad.numpy()) for n, p in module.named_parameters())
    return out.detach().numpy(), [s.detach().numpy() for s in hn], grads


def check_parity(torch, cell, num_layers, bidirectional, batch_first, packed, with_hx,
                 proj_size, dtype, backend="auto", unbatched=False):
    torch.manual_seed(num_layers * 7 + bidirectional)
    extra = {"proj_size": proj_size} if proj_size else {}
    module = torch_module(torch, cell, input_size=I, hidden_size=H, num_layers=num_layers,
                          bidirectional=bidirectional, batch_first=batch_first,
                          dtype=getattr(torch, np.dtype(dtype).name), **extra)
    layer = make_layer(cell, I, H, num_layers, bidirectional=bidirectional,
                       batch_first=batch_first, dtype=dtype, backend=backend, **extra)
    layer.load_state_dict(module.state_dict())

    rng = np.random.default_rng(11)
    D = 2 if bidirectional else 1
    Hout = proj_size or H
    if unbatched:
        x_shape, y_shape = (T, I), (T, D * Hout)
    else:
        x_shape = (B, T, I) if batch_first else (T, B, I)
        y_shape = x_shape[:2] + (D * Hout,)
    x = rng.standard_normal(x_shape).astype(dtype)
    states = random_hx(layer, B, dtype, rng, unbatched)
    # without hx, torch still gets (zero) tensors, to compare the gradient of hx
    torch_states = states if with_hx else [np.zeros_like(s) for s in states]
    w_y = rng.standard_normal(y_shape).astype(dtype)
    w_states = [rng.standard_normal(s.shape).astype(dtype) for s in states]
    lengths = LENGTHS if packed else None

    out, states_n, grads = run_torch(torch, module, cell, x, torch_states, lengths,
                                     batch_first, w_y, w_states)

    y, h_n, ctx = layer(x, as_hx(states, cell) if with_hx else None, lengths, training=True)
    g = layer.backward(ctx, w_y, as_hx(w_states, cell))
    rtol = RTOL[np.dtype(dtype)] * (5 if dtype == np.float32 else 1)
    assert y.dtype == dtype and y.shape == out.shape
    assert_close(y, out, rtol, "y")
    for name, a, e in zip("hc", states_of(h_n, cell), states_n):
        assert_close(a, e, rtol, f"{name}_n")
    assert_close(g.dx, grads["x"], rtol, "dx")
    for name, a in zip("hc", states_of(g.dhx, cell)):
        assert_close(a, grads[f"{name}0"], rtol, f"d{name}0")
    assert list(g.dparams) == [n for n, _ in module.named_parameters()]
    for name, a in g.dparams.items():
        assert a.dtype == dtype
        assert_close(a, grads[name], rtol, f"d{name}")


GRID = list(itertools.product((1, 2, 3), (False, True), (False, True), (False, True),
                              (False, True)))
GRID_IDS = [f"L{n}-{'bi' if b else 'uni'}-{'bf' if f else 'tm'}-{'packed' if p else 'padded'}-"
            f"{'hx' if h else 'nohx'}" for n, b, f, p, h in GRID]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("num_layers,bidirectional,batch_first,packed,with_hx", GRID, ids=GRID_IDS)
@pytest.mark.parametrize("cell", CELLS)
def test_matches_torch(torch, cell, num_layers, bidirectional, batch_first, packed, with_hx,
                       dtype):
    check_parity(torch, cell, num_layers, bidirectional, batch_first, packed, with_hx, 0, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("num_layers,bidirectional,batch_first,packed,with_hx", GRID, ids=GRID_IDS)
def test_projection_matches_torch(torch, num_layers, bidirectional, batch_first, packed, with_hx,
                                  dtype):
    check_parity(torch, "lstm", num_layers, bidirectional, batch_first, packed, with_hx, P, dtype)


@pytest.mark.parametrize("cell", CELLS + ("lstm_proj",))
def test_matches_torch_every_backend(torch, backend, cell):
    """A smaller cross-backend check: two bidirectional layers, everything on."""
    proj = P if cell == "lstm_proj" else 0
    for dtype in DTYPES:
        check_parity(torch, cell.replace("_proj", ""), 2, True, True, True, True, proj, dtype,
                     backend=backend)


#: every cell, and the LSTM with a projection
CELL_PROJ = [(c, 0) for c in CELLS] + [("lstm", P)]
CELL_PROJ_IDS = list(CELLS) + ["lstm_proj"]


@pytest.mark.parametrize("cell,proj_size", CELL_PROJ, ids=CELL_PROJ_IDS)
def test_unbatched_matches_torch(torch, cell, proj_size):
    check_parity(torch, cell, 2, True, False, False, True, proj_size, np.float64, unbatched=True)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("cell", CELLS)
def test_without_bias_matches_torch(torch, cell, bias):
    torch.manual_seed(3)
    module = torch_module(torch, cell, input_size=I, hidden_size=H, num_layers=2, bias=bias,
                          bidirectional=True, dtype=torch.float64)
    layer = make_layer(cell, I, H, 2, bias=bias, bidirectional=True, dtype=np.float64)
    layer.load_state_dict(module.state_dict())
    x = np.random.default_rng(0).standard_normal((T, B, I))
    y, _ = layer(x)
    assert_close(y, module(torch.tensor(x))[0].detach().numpy(), 1e-10, "y")


@pytest.mark.parametrize("cell", CELLS)
def test_parameter_names_and_shapes_match_torch(torch, cell):
    for num_layers, bidirectional, bias, proj in itertools.product(
            (1, 3), (False, True), (False, True), (0, 2)):
        if proj and cell != "lstm":
            continue
        extra = {"proj_size": proj} if proj else {}
        module = torch_module(torch, cell, input_size=5, hidden_size=4, num_layers=num_layers,
                              bias=bias, bidirectional=bidirectional, **extra)
        layer = make_layer(cell, 5, 4, num_layers, bias=bias, bidirectional=bidirectional,
                           **extra)
        expected = [(n, tuple(p.shape)) for n, p in module.named_parameters()]
        assert [(n, p.shape) for n, p in layer.named_parameters()] == expected
        for n, _ in expected:
            assert getattr(layer, n) is layer.state_dict()[n]


# ------------------------------------------------------------- construction

@pytest.mark.parametrize("cell", CELLS)
def test_initialisation(cell):
    layer = make_layer(cell, 7, 50, 2, bidirectional=True, rng=0)
    bound = 1 / np.sqrt(50)
    values = np.concatenate([p.ravel() for p in layer.parameters()])
    assert all(p.dtype == np.float32 for p in layer.parameters())
    assert np.abs(values).max() <= bound
    assert abs(values.std() - bound / np.sqrt(3)) < 0.02 * bound      # U(-k, k): std k/sqrt(3)
    assert abs(values.mean()) < 0.02 * bound
    again = make_layer(cell, 7, 50, 2, bidirectional=True, rng=np.random.default_rng(0))
    other = make_layer(cell, 7, 50, 2, bidirectional=True, rng=1)
    for (n, a), b, c in zip(layer.named_parameters(), again.parameters(), other.parameters()):
        np.testing.assert_array_equal(a, b, err_msg=n)
        assert not np.array_equal(a, c), n
    f64 = make_layer(cell, 7, 50, dtype=np.float64)
    assert all(p.dtype == np.float64 for p in f64.parameters())
    layer.reset_parameters(rng=1)
    for a, c in zip(layer.parameters(), other.parameters()):
        np.testing.assert_array_equal(a, c)


def test_constructor_arguments_as_torch():
    lstm = fastrnn.LSTM(10, 20, 2, False, True, 0.5, True, 5)
    assert (lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.bias, lstm.batch_first,
            lstm.dropout, lstm.bidirectional, lstm.proj_size) == (10, 20, 2, False, True, 0.5,
                                                                  True, 5)
    rnn = fastrnn.RNN(3, 4, 1, "relu")
    assert rnn.nonlinearity == "relu" and rnn.mode == "rnn_relu"
    assert repr(lstm) == ("LSTM(10, 20, num_layers=2, bias=False, batch_first=True, "
                          "dropout=0.5, bidirectional=True, proj_size=5)")
    assert repr(fastrnn.GRU(3, 4, dtype=np.float64)) == "GRU(3, 4, dtype=float64)"


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(hidden_size=0), ValueError, "hidden_size must be >= 1"),
    (dict(input_size=2.5), TypeError, "input_size must be an int"),
    (dict(num_layers=0), ValueError, "num_layers must be >= 1"),
    (dict(dropout=1.5), ValueError, r"dropout must be a number in \[0, 1\]"),
    (dict(dropout="0.1"), ValueError, "dropout"),
    (dict(proj_size=4), ValueError, "proj_size must be smaller than hidden_size"),
    (dict(proj_size=-1), ValueError, "proj_size must be >= 0"),
    (dict(dtype=np.float16), TypeError, "dtype must be np.float32 or np.float64"),
    (dict(dtype=np.int32), TypeError, "dtype must be"),
    (dict(backend="gpu"), ValueError, "backend must be 'auto' or one of"),
    (dict(bias="yes"), TypeError, "bias must be a bool"),
])
def test_constructor_validation(kwargs, error, match):
    args = dict(input_size=3, hidden_size=4)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        fastrnn.LSTM(**args)


def test_constructor_validation_per_cell():
    with pytest.raises(ValueError, match="nonlinearity must be 'tanh' or 'relu'"):
        fastrnn.RNN(3, 4, nonlinearity="sigmoid")
    with pytest.raises(TypeError):
        fastrnn.GRU(3, 4, proj_size=2)              # as torch: GRU has no proj_size
    with pytest.warns(UserWarning, match="num_layers=1 has no effect"):
        fastrnn.GRU(3, 4, dropout=0.2)


def test_parameter_assignment_is_checked():
    lstm = fastrnn.LSTM(3, 4)
    new = np.ones((16, 3), np.float64)
    lstm.weight_ih_l0 = new
    assert lstm.weight_ih_l0.dtype == np.float32 and np.all(lstm.weight_ih_l0 == 1)
    with pytest.raises(ValueError, match=r"weight_ih_l0 must have shape \(16, 3\)"):
        lstm.weight_ih_l0 = np.ones((16, 4))
    with pytest.raises(AttributeError, match="weight_ih_l1"):
        lstm.weight_ih_l1


@pytest.mark.parametrize("bias", [True, False])
def test_forward_sees_every_kind_of_parameter_change(bias):
    """The layer keeps its checked parameters between calls: changes in place,
    by assignment and by load_state_dict must all reach the next forward,
    which must equal the kernel function called with the current arrays."""
    rng = np.random.default_rng(5)
    gru = fastrnn.GRU(3, 4, bias=bias)
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)

    def expected():
        p = gru.state_dict()
        biases = (p["bias_ih_l0"], p["bias_hh_l0"]) if bias else (None, None)
        return fastrnn.gru_forward(x, None, p["weight_ih_l0"], p["weight_hh_l0"], *biases).y

    def changes():
        gru.weight_hh_l0 *= 2                                     # in place
        yield
        gru.weight_ih_l0 = rng.standard_normal((12, 3))           # assignment
        yield
        gru.load_state_dict({k: rng.standard_normal(a.shape)      # copied in
                             for k, a in gru.state_dict().items()})
        yield

    previous = gru(x)[0]
    np.testing.assert_array_equal(previous, expected())
    for _ in changes():
        y = gru(x)[0]
        assert not np.array_equal(y, previous)
        np.testing.assert_array_equal(y, expected())
        previous = y


# ----------------------------------------------------------- input checking

def test_input_validation_messages():
    lstm = fastrnn.LSTM(3, 4, num_layers=2)
    x = np.zeros((5, 2, 3), np.float32)
    with pytest.raises(TypeError, match="x has dtype float64 but the layer is float32"):
        lstm(x.astype(np.float64))
    with pytest.raises(TypeError, match="x must be a float array"):
        lstm(x.astype(np.int64))
    with pytest.raises(ValueError, match=r"x must be 3-D \(T, B, input_size\)"):
        lstm(x[0, 0])
    with pytest.raises(ValueError, match="input_size=3 features"):
        lstm(np.zeros((5, 2, 4), np.float32))
    with pytest.raises(TypeError, match=r"hx must be a tuple \(h_0, c_0\)"):
        lstm(x, np.zeros((2, 2, 4), np.float32))
    with pytest.raises(ValueError, match=r"hx\[0\] must have shape \(num_layers\*num_directions, "
                                         r"batch, hidden_size\) = \(2, 2, 4\)"):
        lstm(x, (np.zeros((1, 2, 4), np.float32), None))
    with pytest.raises(ValueError, match=r"hx\[1\] must have shape .* = \(2, 2, 4\)"):
        lstm(x, (None, np.zeros((2, 3, 4), np.float32)))
    with pytest.raises(TypeError, match="hx\\[0\\] must have the layer's dtype float32"):
        lstm(x, (np.zeros((2, 2, 4)), None))
    with pytest.raises(ValueError, match=r"2-D, because x is unbatched"):
        lstm(x[:, 0], (np.zeros((2, 2, 4), np.float32), None))
    with pytest.raises(ValueError, match="lengths needs batched 3-D input"):
        lstm(x[:, 0], lengths=[3])
    with pytest.raises(ValueError, match=r"lengths must have shape \(2,\)"):
        lstm(x, lengths=[1, 2, 3])
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, T=5\]"):
        lstm(x, lengths=[1, 6])
    with pytest.raises(TypeError, match="training must be a bool"):
        lstm(x, training="yes")
    gru = fastrnn.GRU(3, 4, batch_first=True, bidirectional=True)
    with pytest.raises(ValueError, match=r"x must be 3-D \(B, T, input_size\)"):
        gru(np.zeros((1, 1, 1, 3), np.float32))
    with pytest.raises(ValueError, match=r"hx must have shape .* = \(2, 5, 4\)"):
        gru(x, np.zeros((1, 5, 4), np.float32))
    proj = fastrnn.LSTM(3, 4, proj_size=2)
    with pytest.raises(ValueError, match=r"batch, proj_size\) = \(1, 2, 2\)"):
        proj(x, (np.zeros((1, 2, 4), np.float32), None))


def test_backward_validation_messages():
    lstm = fastrnn.LSTM(3, 4, batch_first=True)
    x = np.zeros((2, 5, 3), np.float32)
    _, _, ctx = lstm(x, training=True)
    with pytest.raises(ValueError, match=r"dy must have the shape of y, \(2, 5, 4\)"):
        lstm.backward(ctx, np.zeros((5, 2, 4), np.float32))
    with pytest.raises(TypeError, match="dy must have the layer's dtype"):
        lstm.backward(ctx, np.zeros((2, 5, 4)))
    with pytest.raises(TypeError, match=r"dhx must be a tuple \(dh_n, dc_n\)"):
        lstm.backward(ctx, None, np.zeros((1, 2, 4), np.float32))
    with pytest.raises(ValueError, match=r"dhx\[1\] must have shape"):
        lstm.backward(ctx, None, (None, np.zeros((1, 3, 4), np.float32)))
    with pytest.raises(ValueError, match="ctx comes from a forward of another layer"):
        fastrnn.LSTM(3, 4, batch_first=True).backward(ctx)
    with pytest.raises(TypeError, match="ctx must be the Context"):
        lstm.backward(ctx.workspaces[0])


# ------------------------------------------------------------------ layouts

@pytest.mark.parametrize("cell", CELLS)
def test_layouts_agree(cell):
    """batch_first and unbatched input give the time-major results, transposed or squeezed."""
    rng = np.random.default_rng(0)
    tm = make_layer(cell, 3, 5, 2, bidirectional=True, dtype=np.float64, rng=0)
    bf = make_layer(cell, 3, 5, 2, bidirectional=True, batch_first=True, dtype=np.float64, rng=0)
    x = rng.standard_normal((6, 4, 3))
    hx = random_hx(tm, 4, np.float64, rng)
    lengths = np.array([2, 6, 0, 5])
    y, h = tm(x, as_hx(hx, cell), lengths)
    y_bf, h_bf = bf(x.transpose(1, 0, 2), as_hx(hx, cell), lengths)
    np.testing.assert_array_equal(y_bf, y.transpose(1, 0, 2))
    assert y_bf.flags.c_contiguous
    for a, b in zip(states_of(h_bf, cell), states_of(h, cell)):
        np.testing.assert_array_equal(a, b)
    for b in range(4):                              # each sequence alone, unbatched
        n = lengths[b]
        y1, h1 = tm(x[:n, b], as_hx(tuple(s[:, b] for s in hx), cell))
        assert_close(y1, y[:n, b], 1e-12, "y")
        for a, e in zip(states_of(h1, cell), states_of(h, cell)):
            assert_close(a, e[:, b], 1e-12, "h_n")


@pytest.mark.parametrize("cell", CELLS)
def test_zero_lengths_and_padding(cell):
    """Length 0: zero outputs, final states = initial states, in every layer and direction."""
    rng = np.random.default_rng(1)
    layer = make_layer(cell, 3, 5, 3, bidirectional=True, dtype=np.float64, rng=0)
    x = rng.standard_normal((4, 3, 3))
    hx = random_hx(layer, 3, np.float64, rng)
    lengths = np.array([4, 0, 2])
    y, h = layer(x, as_hx(hx, cell), lengths)
    assert np.all(y[:, 1] == 0) and np.all(y[2:, 2] == 0)
    for a, s in zip(states_of(h, cell), hx):
        np.testing.assert_array_equal(a[:, 1], s[:, 1])
    x2 = x.copy()
    x2[2:, 2] = np.nan                              # padding is never read
    y2, _ = layer(x2, as_hx(hx, cell), lengths)
    np.testing.assert_array_equal(y2, y)


def test_empty_batch_and_sequence():
    lstm = fastrnn.LSTM(3, 4, num_layers=2, bidirectional=True)
    y, (h, c) = lstm(np.zeros((0, 2, 3), np.float32))
    assert y.shape == (0, 2, 8) and h.shape == (4, 2, 4) and np.all(h == 0)
    y, (h, c) = lstm(np.zeros((5, 0, 3), np.float32))
    assert y.shape == (5, 0, 8) and h.shape == (4, 0, 4)


# --------------------------------------------------------------- streaming

@pytest.mark.parametrize("cell,proj_size", CELL_PROJ, ids=CELL_PROJ_IDS)
def test_streaming_equals_whole_sequence(backend, cell, proj_size):
    """Stepping with carried state gives the whole-sequence results.

    Bit for bit on the reference backend. The native kernels project the input
    of all steps with one GEMM, whose summation order differs from a single
    row's, so there the results agree to the last bits (a few ulp) instead.
    """
    extra = {"proj_size": proj_size} if proj_size else {}
    for dtype, Bn in itertools.product(DTYPES, (1, 3)):
        layer = make_layer(cell, 4, 8, 2, dtype=dtype, backend=backend, rng=0, **extra)
        rng = np.random.default_rng(2)
        x = rng.standard_normal((12, Bn, 4)).astype(dtype)
        hx = as_hx(random_hx(layer, Bn, dtype, rng), cell)
        y, h = layer(x, hx)
        ys, state = [], hx
        for t in range(12):
            if t % 2:
                yt, state = layer.step(x[t], state)
            else:
                yt, state = layer(x[t:t + 1], state)
                yt = yt[0]
            ys.append(yt)
        ys = np.stack(ys)
        if backend == "reference":
            np.testing.assert_array_equal(ys, y)
            for a, b in zip(states_of(state, cell), states_of(h, cell)):
                np.testing.assert_array_equal(a, b)
        else:
            tol = 4 * np.finfo(dtype).eps
            assert_close(ys, y, tol, "y")
            for a, b in zip(states_of(state, cell), states_of(h, cell)):
                assert_close(a, b, tol, "state")


def test_step_layouts():
    lstm = fastrnn.LSTM(3, 4, batch_first=True, rng=0)
    x = np.random.default_rng(0).standard_normal((2, 1, 3)).astype(np.float32)
    y, (h, c) = lstm(x)
    y1, (h1, c1) = lstm.step(x[:, 0])
    np.testing.assert_array_equal(y1, y[:, 0])
    y2, (h2, _) = lstm.step(x[0, 0])                 # unbatched: (input_size,)
    np.testing.assert_array_equal(y2, y[0, 0])
    assert h2.shape == (1, 4)
    with pytest.raises(ValueError, match="step\\(\\) needs a unidirectional layer"):
        fastrnn.GRU(3, 4, bidirectional=True).step(x[:, 0])
    with pytest.raises(ValueError, match="step\\(\\) takes one time step"):
        lstm.step(x)


# ------------------------------------------------------- training contexts

@pytest.mark.parametrize("cell", CELLS)
def test_contexts_are_independent(cell):
    """Nothing is stored on the layer: interleaved and concurrent calls do not interfere."""
    layer = make_layer(cell, 3, 5, 2, bidirectional=True, dtype=np.float64, rng=0)
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((6, 2, 3)) for _ in range(4)]
    dys = [rng.standard_normal((6, 2, 10)) for _ in range(4)]
    expected = []
    for x, dy in zip(xs, dys):
        _, _, ctx = layer(x, training=True)
        expected.append(layer.backward(ctx, dy))
    ctxs = [layer(x, training=True)[2] for x in xs]
    for i in (2, 0, 3, 1):                          # backward in another order
        g = layer.backward(ctxs[i], dys[i])
        np.testing.assert_array_equal(g.dx, expected[i].dx)
        for n in g.dparams:
            np.testing.assert_array_equal(g.dparams[n], expected[i].dparams[n])
    results = [None] * 4

    def work(i):
        for _ in range(5):
            _, _, ctx = layer(xs[i], training=True)
            results[i] = layer.backward(ctx, dys[i])
    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for g, e in zip(results, expected):
        np.testing.assert_array_equal(g.dx, e.dx)
        for n in g.dparams:
            np.testing.assert_array_equal(g.dparams[n], e.dparams[n])


@pytest.mark.parametrize("cell", CELLS)
def test_omitted_gradients_are_zero(cell):
    layer = make_layer(cell, 3, 5, 2, bidirectional=True, dtype=np.float64, rng=0)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 2, 3))
    y, h, ctx = layer(x, training=True)
    g = layer.backward(ctx)
    assert g.dx.shape == x.shape and not g.dx.any()
    assert all(not d.any() for d in g.dparams.values())
    assert all(not d.any() for d in states_of(g.dhx, cell))
    dy = rng.standard_normal(y.shape)
    zeros = tuple(np.zeros_like(s) for s in states_of(h, cell))
    g1 = layer.backward(ctx, dy)
    g2 = layer.backward(ctx, dy, as_hx(zeros, cell))
    np.testing.assert_array_equal(g1.dx, g2.dx)
    if cell == "lstm":                              # one of (dh_n, dc_n) omitted
        dc = rng.standard_normal(h[1].shape)
        g3 = layer.backward(ctx, None, (None, dc))
        g4 = layer.backward(ctx, np.zeros_like(y), (np.zeros_like(h[0]), dc))
        np.testing.assert_array_equal(g3.dx, g4.dx)


# ------------------------------------------------------------------ dropout

def test_dropout_only_in_training_and_seeded():
    lstm = fastrnn.LSTM(3, 5, num_layers=3, dropout=0.5, dtype=np.float64, rng=0)
    x = np.random.default_rng(0).standard_normal((6, 2, 3))
    y_eval, _ = lstm(x)
    y_again, _ = lstm(x)
    np.testing.assert_array_equal(y_eval, y_again)
    y1, _, ctx1 = lstm(x, training=True, rng=7)
    y2, _, ctx2 = lstm(x, training=True, rng=np.random.default_rng(7))
    y3, _, _ = lstm(x, training=True, rng=8)
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(y1, y3) and not np.array_equal(y1, y_eval)
    assert len(ctx1.dropout_masks) == 2             # between layers, not after the last
    masks = np.concatenate([m.ravel() for m in ctx1.dropout_masks])
    assert set(np.unique(masks)) == {0.0, 2.0}
    assert abs((masks == 0).mean() - 0.5) < 0.1
    no_drop = fastrnn.LSTM(3, 5, num_layers=3, dtype=np.float64, rng=0)
    _, _, ctx = no_drop(x, training=True)
    assert ctx.dropout_masks == []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        all_dropped = fastrnn.GRU(3, 5, num_layers=2, dropout=1.0, dtype=np.float64, rng=0)
    _, h, ctx = all_dropped(x, training=True)
    assert not ctx.dropout_masks[0].any()


@pytest.mark.parametrize("cell", CELLS)
def test_dropout_placement_matches_a_stack_of_layers(cell):
    """Dropout between layers = single-layer layers with the masks applied between them,
    forward and backward (PyTorch's placement: on every layer's output but the last)."""
    rng = np.random.default_rng(5)
    stack = make_layer(cell, 3, 4, 3, bidirectional=True, dropout=0.3, dtype=np.float64, rng=0)
    singles = [make_layer(cell, 3 if k == 0 else 8, 4, bidirectional=True, dtype=np.float64)
               for k in range(3)]
    for k, single in enumerate(singles):
        single.load_state_dict({n: stack.state_dict()[n.replace("_l0", f"_l{k}")]
                                for n in single.state_dict()})
    x = rng.standard_normal((5, 2, 3))
    lengths = np.array([5, 3])
    y, h, ctx = stack(x, lengths=lengths, training=True, rng=1)
    dy = rng.standard_normal(y.shape)
    dh = tuple(rng.standard_normal(s.shape) for s in states_of(h, cell))
    g = stack.backward(ctx, dy, as_hx(dh, cell))
    inp, ctxs, finals = x, [], []
    for k, single in enumerate(singles):
        out, hk, c = single(inp, lengths=lengths, training=True)
        ctxs.append(c)
        finals.append(states_of(hk, cell))
        inp = out * ctx.dropout_masks[k] if k < 2 else out
    np.testing.assert_array_equal(inp, y)
    d = dy
    for k in reversed(range(3)):
        gk = singles[k].backward(ctxs[k], d, as_hx(tuple(s[2 * k:2 * k + 2] for s in dh), cell))
        for n, a in gk.dparams.items():
            np.testing.assert_array_equal(g.dparams[n.replace("_l0", f"_l{k}")], a)
        d = gk.dx * ctx.dropout_masks[k - 1] if k else gk.dx
    np.testing.assert_array_equal(g.dx, d)


def test_gradient_with_dropout_by_finite_differences():
    """float64 central differences through a 2-layer bidirectional GRU with dropout and lengths."""
    layer = fastrnn.GRU(2, 3, 2, bidirectional=True, dropout=0.4, dtype=np.float64,
                        backend="reference", rng=0)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 2, 2))
    lengths = np.array([4, 2])
    w_y = rng.standard_normal((4, 2, 6))
    w_h = rng.standard_normal((4, 2, 3))

    def loss():
        y, h, _ = layer(x, lengths=lengths, training=True, rng=3)
        return (y * w_y).sum() + (h * w_h).sum()
    _, _, ctx = layer(x, lengths=lengths, training=True, rng=3)
    g = layer.backward(ctx, w_y, w_h)
    eps = 1e-6
    for name in ("weight_ih_l1", "weight_hh_l0_reverse", "bias_hh_l0"):
        num = finite_difference_gradient(loss, getattr(layer, name), eps)
        assert_close(g.dparams[name], num, 1e-7, name)
    assert_close(g.dx, finite_difference_gradient(loss, x, eps), 1e-7, "dx")


def test_options_after_construction():
    gru = fastrnn.GRU(3, 4, num_layers=2)
    for name, value in [("hidden_size", 5), ("num_layers", 3), ("bidirectional", True),
                        ("dtype", np.float64), ("bias", False)]:
        with pytest.raises(AttributeError, match=f"{name} is fixed when the layer is built"):
            setattr(gru, name, value)
    gru.dropout = 0.25
    gru.batch_first = True
    gru.backend = "reference"
    assert (gru.dropout, gru.batch_first, gru.backend) == (0.25, True, "reference")
    with pytest.raises(ValueError, match="dropout must be a number"):
        gru.dropout = 2
    with pytest.raises(ValueError, match="backend must be"):
        gru.backend = "fortran"
    y, _ = gru(np.zeros((2, 5, 3), np.float32))
    assert y.shape == (2, 5, 4)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("unbatched", [False, True])
def test_one_layer_inference_returns_its_own_states(cell, unbatched):
    """A one-layer, one-direction inference returns its final states without
    the stacked layers' bookkeeping: still new arrays of the documented shape,
    shared with nothing that a later call reads or writes."""
    layer = make_layer(cell, 5, 7, rng=0)
    x = np.random.default_rng(0).standard_normal((6, 5) if unbatched else (6, 3, 5))
    x = x.astype(np.float32)
    y1, h1 = layer(x)
    first = [s.copy() for s in states_of(h1, cell)]
    for s in states_of(h1, cell):
        assert s.shape == ((1, 7) if unbatched else (1, 3, 7)) and s.flags.writeable
        assert not np.shares_memory(s, y1)
        s[...] = 99.0                   # the caller's to change
    y2, h2 = layer(x)
    np.testing.assert_array_equal(y2, y1)
    for s, want in zip(states_of(h2, cell), first):
        np.testing.assert_array_equal(s, want)
    assert y2.shape == ((6, 7) if unbatched else (6, 3, 7))
