"""Parity with PyTorch's torch.nn.RNN / LSTM / GRU (one layer), for every backend:
outputs, final states and the gradients of x, h0, c0 and all four parameters,
unidirectional and both directions of a bidirectional layer, padded and packed
(unsorted lengths) input, float32 and float64.
"""
import numpy as np
import pytest

from conftest import (CELLS, DTYPES, PARAM_NAMES, RTOL, STATE_NAMES, assert_close,
                      final_states, make_states, make_x, param_grads, run_backward,
                      run_forward, state0_grads)

torch = pytest.importorskip("torch")

T, B, I, H = 5, 4, 3, 7
LENGTHS = np.array([3, 5, 1, 4])        # unsorted, one full; torch rejects zero lengths

# Both sides compute in the same dtype from the same values, so their difference
# is at most the sum of two errors of the size discussed in test_backends.py:
# float64 ~1e-13 of the scale, float32 ~1e-6. RTOL (1e-10, 1e-5 of the max-abs
# scale) covers both with a wide margin.

MODULES = {
    "rnn_tanh": lambda **kw: torch.nn.RNN(nonlinearity="tanh", **kw),
    "rnn_relu": lambda **kw: torch.nn.RNN(nonlinearity="relu", **kw),
    "lstm": lambda **kw: torch.nn.LSTM(**kw),
    "gru": lambda **kw: torch.nn.GRU(**kw),
}


@pytest.fixture(autouse=True, scope="module")
def few_torch_threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def run_torch(cell, module, x, states, w_out, w_states, lengths):
    """Forward and backward of ``module``; returns numpy ``(out, states_n, grads)``
    with ``grads`` = ``{"x": ..., "h0": ..., "c0": ..., "weight_ih_l0": ...}``."""
    pack = torch.nn.utils.rnn
    xt = torch.tensor(x, requires_grad=True)
    st = [torch.tensor(s, requires_grad=True) for s in states]
    inp = xt if lengths is None else pack.pack_padded_sequence(
        xt, torch.as_tensor(lengths, dtype=torch.int64), enforce_sorted=False)
    out, state_n = module(inp, tuple(st) if cell == "lstm" else st[0])
    if lengths is not None:
        out, _ = pack.pad_packed_sequence(out, total_length=x.shape[0])
    state_n = state_n if cell == "lstm" else (state_n,)
    loss = (out * torch.tensor(w_out)).sum()
    loss = loss + sum((s * torch.tensor(w)).sum() for s, w in zip(state_n, w_states))
    loss.backward()
    grads = {"x": xt.grad.numpy()}
    grads.update((f"{n}0", s.grad.numpy()) for n, s in zip(STATE_NAMES[cell], st))
    grads.update((n, p.grad.numpy()) for n, p in module.named_parameters())
    return out.detach().numpy(), [s.detach().numpy() for s in state_n], grads


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("cell", CELLS)
def test_matches_torch(backend, cell, dtype, bidirectional, packed):
    torch.manual_seed(0)
    D = 2 if bidirectional else 1
    module = MODULES[cell](input_size=I, hidden_size=H, bidirectional=bidirectional,
                           dtype=getattr(torch, np.dtype(dtype).name))
    rng = np.random.default_rng(5)
    x = make_x(T, B, I, dtype)
    # torch states are (D, B, H): direction d's initial states
    states = [np.stack(s) for s in zip(*(make_states(cell, B, H, dtype, seed=d) for d in range(D)))]
    w_out = rng.standard_normal((T, B, D * H)).astype(dtype)
    w_states = [rng.standard_normal((D, B, H)).astype(dtype) for _ in states]
    lengths = LENGTHS if packed else None

    out, states_n, grads = run_torch(cell, module, x, states, w_out, w_states, lengths)

    rtol = RTOL[np.dtype(dtype)]
    dx = np.zeros_like(x)
    for d in range(D):                      # direction d = torch's l0 (d=0) or l0_reverse
        suffix = "_l0_reverse" if d else "_l0"
        params = tuple(getattr(module, n + suffix).detach().numpy() for n in PARAM_NAMES)
        half = slice(d * H, (d + 1) * H)
        res = run_forward(cell, backend, x, tuple(s[d] for s in states), params,
                          lengths=lengths, reverse=bool(d), training=True)
        g = run_backward(cell, res.workspace, w_out[..., half], tuple(w[d] for w in w_states))
        assert_close(res.y, out[..., half], rtol, f"y{suffix}")
        for name, a, e in zip(STATE_NAMES[cell], final_states(res), states_n):
            assert_close(a, e[d], rtol, f"{name}_n{suffix}")
        for name, a in zip(STATE_NAMES[cell], state0_grads(g)):
            assert_close(a, grads[f"{name}0"][d], rtol, f"d{name}0{suffix}")
        for name, a in zip(PARAM_NAMES, param_grads(g)):
            assert_close(a, grads[name + suffix], rtol, f"d{name}{suffix}")
        dx += g.dx                          # both directions read x
    assert_close(dx, grads["x"], rtol, "dx")
