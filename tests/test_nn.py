"""The training kit (fastrnn.nn): gradients against central finite differences
in float64, Adam and clip_grad_norm against their formulas (and PyTorch when it
is installed), the mini-batcher, and the error messages.
"""
import math

import numpy as np
import pytest

import fastrnn
from fastrnn import nn
from conftest import assert_close, finite_difference_gradient

# float64 central differences with eps=1e-6: truncation error ~eps**2 * |f'''| / 6 ~ 1e-13,
# rounding error ~1e-16 * |f| / eps ~ 1e-10 * |f|. The losses here are weighted sums
# of the same order as their gradients, so 1e-7 of the gradient's scale is >= 100x the noise.
FD_EPS, FD_RTOL = 1e-6, 1e-7


def weighted_sum(y, seed=5):
    """A fixed random weighting of y's elements: the scalar loss whose gradient is it."""
    w = np.random.default_rng(seed).standard_normal(y.shape)
    return float((y * w).sum()), w


# ------------------------------------------------------------------ Embedding

@pytest.mark.parametrize("padding_idx", [None, 0])
def test_embedding_gradient_matches_finite_differences(padding_idx):
    emb = nn.Embedding(6, 3, padding_idx=padding_idx, dtype=np.float64, rng=0)
    # (T, B) with repeated tokens, and token 0 (the padding id) in several places
    tokens = np.array([[1, 0, 4], [4, 4, 0], [2, 1, 0], [5, 4, 3]])
    _, w = weighted_sum(emb(tokens))
    got = emb.backward(tokens, w)
    assert got.dx is None and list(got.dparams) == ["weight"]
    expected = finite_difference_gradient(lambda: float((emb(tokens) * w).sum()),
                                          emb.weight, FD_EPS)
    if padding_idx is not None:
        # as PyTorch: the padding row gets no gradient, although it is read
        assert np.abs(expected[padding_idx]).max() > 0
        expected[padding_idx] = 0
    assert_close(got.dparams["weight"], expected, FD_RTOL, "dweight")
    # a repeated token collects the sum of its rows; an unused one gets zero
    np.testing.assert_allclose(got.dparams["weight"][4], w[tokens == 4].sum(axis=0))
    np.testing.assert_array_equal(got.dparams["weight"][[1, 2, 3, 5]].any(axis=1), True)


def test_embedding_forward_is_a_lookup_and_padding_row_starts_at_zero():
    emb = nn.Embedding(5, 4, padding_idx=2, rng=1)
    assert emb.weight.dtype == np.float32 and emb.weight.shape == (5, 4)
    np.testing.assert_array_equal(emb.weight[2], 0)
    tokens = np.array([[0, 2], [4, 4]])
    np.testing.assert_array_equal(emb(tokens), emb.weight[tokens])


@pytest.mark.parametrize("tokens, error, match", [
    (np.array([0, 5]), ValueError, r"tokens must hold token ids in \[0, 5\).*\[0, 5\]"),
    (np.array([-1, 2]), ValueError, r"tokens must hold token ids in \[0, 5\).*\[-1, 2\]"),
    (np.array([0.0, 1.0]), TypeError, "tokens must be an integer array"),
])
def test_embedding_rejects_bad_tokens(tokens, error, match):
    with pytest.raises(error, match=match):
        nn.Embedding(5, 2, rng=0)(tokens)


def test_embedding_backward_checks_dy():
    emb = nn.Embedding(5, 2, rng=0)
    with pytest.raises(ValueError, match=r"dy must have shape tokens.shape \+ \(embedding_dim,\)"):
        emb.backward(np.array([1, 2, 3]), np.zeros((2, 2), np.float32))
    with pytest.raises(TypeError, match="dy must have the module's dtype float32"):
        emb.backward(np.array([1, 2]), np.zeros((2, 2)))


# --------------------------------------------------------------------- Linear

@pytest.mark.parametrize("bias", [True, False])
def test_linear_gradients_match_finite_differences(bias):
    lin = nn.Linear(4, 3, bias=bias, dtype=np.float64, rng=0)
    x = np.random.default_rng(1).standard_normal((5, 2, 4))      # (T, B, I): any leading axes
    _, w = weighted_sum(lin(x))
    got = lin.backward(x, w)
    loss = lambda: float((lin(x) * w).sum())                       # noqa: E731
    assert_close(got.dx, finite_difference_gradient(loss, x, FD_EPS), FD_RTOL, "dx")
    for name, p in lin.named_parameters():
        assert_close(got.dparams[name], finite_difference_gradient(loss, p, FD_EPS), FD_RTOL,
                     name)
    assert sorted(got.dparams) == (["bias", "weight"] if bias else ["weight"])


def test_linear_initialisation_follows_pytorch():
    lin = nn.Linear(16, 1000, rng=0)
    bound = 1 / math.sqrt(16)
    for p in (lin.weight, lin.bias):
        assert p.dtype == np.float32
        assert -bound <= p.min() and p.max() <= bound
        assert p.max() > 0.9 * bound and p.min() < -0.9 * bound   # spans U(-k, k)


def test_linear_rejects_bad_input():
    lin = nn.Linear(4, 3, rng=0)
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., in_features=4\)"):
        lin(np.zeros((2, 5), np.float32))
    with pytest.raises(TypeError, match="x must have the module's dtype float32, got dtype float64"):
        lin(np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"dy must have shape x.shape\[:-1\] \+ \(out_features,\)"):
        lin.backward(np.zeros((2, 4), np.float32), np.zeros((3, 3), np.float32))


# ----------------------------------------------------------------------- loss

def test_cross_entropy_value_and_gradient():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((5, 4))
    target = np.array([0, 3, 3, 1, 2])
    loss, dlogits = nn.cross_entropy(logits, target)
    # the definition, written directly: mean over the batch of -log softmax[target]
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert loss == pytest.approx(-np.log(p[np.arange(5), target]).mean(), rel=1e-14)
    expected = finite_difference_gradient(lambda: nn.cross_entropy(logits, target)[0],
                                          logits, FD_EPS)
    assert_close(dlogits, expected, FD_RTOL, "dlogits")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_is_stable_for_huge_logits(dtype):
    logits = np.array([[1e4, 0.0, -1e4], [3e4, 3e4, 3e4]], dtype)
    loss, dlogits = nn.cross_entropy(logits, np.array([1, 2]))
    assert dlogits.dtype == dtype and np.isfinite(dlogits).all()
    # row 0: log softmax of the target is -1e4 (exactly, in float64); row 1: uniform
    assert loss == pytest.approx((1e4 + np.log(3)) / 2, rel=1e-6)
    logp = nn.log_softmax(logits, axis=1)
    assert np.isfinite(logp).all()
    np.testing.assert_allclose(np.exp(logp).sum(axis=1), 1, rtol=1e-6)


def test_cross_entropy_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((7, 5)) * 3
    target = rng.integers(0, 5, 7)
    t_logits = torch.tensor(logits, requires_grad=True)
    t_loss = torch.nn.functional.cross_entropy(t_logits, torch.tensor(target))
    t_loss.backward()
    loss, dlogits = nn.cross_entropy(logits, target)
    assert loss == pytest.approx(t_loss.item(), rel=1e-13)
    assert_close(dlogits, t_logits.grad.numpy(), 1e-13, "dlogits")


@pytest.mark.parametrize("logits, target, error, match", [
    (np.zeros((3, 4)), np.array([0, 1]), ValueError, r"target must have shape \(N,\) = \(3,\)"),
    (np.zeros((2, 4)), np.array([0, 4]), ValueError, r"target must hold token ids in \[0, 4\)"),
    (np.zeros((2, 4)), np.array([0.0, 1.0]), TypeError, "target must be an integer array"),
    (np.zeros(4), np.array([0]), ValueError, r"logits must have shape \(N, C\)"),
    (np.zeros((2, 4), int), np.array([0, 1]), TypeError, "logits must be float32 or float64"),
])
def test_cross_entropy_rejects_bad_input(logits, target, error, match):
    with pytest.raises(error, match=match):
        nn.cross_entropy(logits, target)


# ---------------------------------------------------------------------- Adam

def adam_by_hand(p, grads, lr, b1, b2, eps, wd):
    """Adam as in the paper (bias-corrected moments), with PyTorch's L2 weight decay."""
    p = p.copy()
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1 ** t)
        v_hat = v / (1 - b2 ** t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adam_matches_the_formula(weight_decay):
    rng = np.random.default_rng(0)
    p0 = {"a": rng.standard_normal((3, 2)), "b": rng.standard_normal(4)}
    grads = [{k: rng.standard_normal(p.shape) for k, p in p0.items()} for _ in range(4)]
    params = {k: p.copy() for k, p in p0.items()}
    opt = nn.Adam(params, lr=0.05, betas=(0.8, 0.95), eps=1e-6, weight_decay=weight_decay)
    for g in grads:
        opt.step(g)
    assert opt.t == 4
    for k in p0:
        expected = adam_by_hand(p0[k], [g[k] for g in grads], 0.05, 0.8, 0.95, 1e-6, weight_decay)
        np.testing.assert_allclose(params[k], expected, rtol=1e-13, atol=1e-15, err_msg=k)


def test_adam_first_step_moves_each_weight_by_lr():
    # with bias correction, step 1 is lr * g / (|g| + eps'): a sign step of size ~lr
    p = {"w": np.zeros(3)}
    nn.Adam(p, lr=0.01).step({"w": np.array([1e-3, -5.0, 2.0])})
    np.testing.assert_allclose(p["w"], [-0.01, 0.01, -0.01], rtol=1e-4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_matches_torch(dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    p0 = rng.standard_normal((4, 3)).astype(dtype)
    grads = [rng.standard_normal((4, 3)).astype(dtype) for _ in range(5)]
    params = {"w": p0.copy()}
    opt = nn.Adam(params, lr=0.01, weight_decay=0.01)
    t_p = torch.tensor(p0.copy(), requires_grad=True)
    t_opt = torch.optim.Adam([t_p], lr=0.01, weight_decay=0.01)
    for g in grads:
        opt.step({"w": g})
        t_p.grad = torch.tensor(g)
        t_opt.step()
    # float32: a few roundings per step in each implementation, on weights of size ~1
    rtol = 1e-6 if dtype == np.float32 else 1e-14
    assert_close(params["w"], t_p.detach().numpy(), rtol, "w")


def test_adam_rejects_mismatched_grads():
    opt = nn.Adam({"a": np.zeros(2), "b": np.zeros(3)})
    with pytest.raises(ValueError, match=r"missing \['b'\], unknown \['c'\]"):
        opt.step({"a": np.zeros(2), "c": np.zeros(3)})
    with pytest.raises(ValueError, match=r"grads\['b'\] must have the parameter's shape \(3,\)"):
        opt.step({"a": np.zeros(2), "b": np.zeros(2)})
    with pytest.raises(ValueError, match="lr must be > 0"):
        nn.Adam({"a": np.zeros(2)}, lr=0)
    with pytest.raises(TypeError, match=r"params\['a'\] must be a float32 or float64 ndarray"):
        nn.Adam({"a": [0.0, 1.0]})


# -------------------------------------------------------------- clip_grad_norm

def test_clip_grad_norm_scales_only_above_max_norm():
    grads = {"a": np.array([3.0, 0.0]), "b": np.array([[4.0]])}     # total norm 5
    assert nn.clip_grad_norm(grads, 10.0) == pytest.approx(5.0)
    np.testing.assert_array_equal(grads["a"], [3.0, 0.0])              # untouched
    assert nn.clip_grad_norm(grads, 1.0) == pytest.approx(5.0)
    scale = 1.0 / (5.0 + 1e-6)
    np.testing.assert_allclose(grads["a"], [3.0 * scale, 0.0], rtol=1e-15)
    np.testing.assert_allclose(grads["b"], [[4.0 * scale]], rtol=1e-15)
    # a list of arrays works too, and is scaled in place
    arrays = [np.full(4, 2.0, np.float32)]
    assert nn.clip_grad_norm(arrays, 2.0) == pytest.approx(4.0)
    np.testing.assert_allclose(arrays[0], 2.0 * 2.0 / (4.0 + 1e-6), rtol=1e-6)
    with pytest.raises(ValueError, match="max_norm must be > 0"):
        nn.clip_grad_norm(grads, 0.0)


def test_clip_grad_norm_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    grads = {k: rng.standard_normal(s) for k, s in [("a", (3, 4)), ("b", (5,))]}
    tensors = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True)
               for g in grads.values()]
    for t, g in zip(tensors, grads.values()):
        t.grad = torch.tensor(g)
    t_norm = torch.nn.utils.clip_grad_norm_(tensors, max_norm=0.5)
    norm = nn.clip_grad_norm(grads, 0.5)
    assert norm == pytest.approx(t_norm.item(), rel=1e-14)
    for t, g in zip(tensors, grads.values()):
        assert_close(g, t.grad.numpy(), 1e-14)


# --------------------------------------------------------------- mini-batches

def variable_sequences(n, features=None, seed=0):
    rng = np.random.default_rng(seed)
    shape = (lambda T: (T,)) if features is None else (lambda T: (T, features))
    return [rng.integers(1, 9, shape(T)) if features is None
            else rng.standard_normal(shape(T)).astype(np.float32)
            for T in rng.integers(1, 12, n)]


@pytest.mark.parametrize("features", [None, 3])
def test_minibatches_pad_time_major_and_cover_every_sequence_once(features):
    seqs = variable_sequences(23, features)
    y = np.arange(23) * 10
    seen = []
    for b in nn.minibatches(seqs, y, batch_size=5, shuffle=True, rng=0):
        B = len(b.index)
        assert b.x.shape[:2] == (b.lengths.max(), B) and b.x.flags.c_contiguous
        np.testing.assert_array_equal(b.y, y[b.index])
        for j, i in enumerate(b.index):
            assert b.lengths[j] == len(seqs[i])
            np.testing.assert_array_equal(b.x[:len(seqs[i]), j], seqs[i])
            np.testing.assert_array_equal(b.x[len(seqs[i]):, j], 0)
        seen.extend(b.index)
    assert sorted(seen) == list(range(23))
    assert seen != list(range(23))                      # shuffled


def test_minibatches_order_is_reproducible_and_new_each_epoch_with_a_generator():
    seqs = variable_sequences(30)
    order = lambda rng: np.concatenate(                  # noqa: E731
        [b.index for b in nn.minibatches(seqs, batch_size=7, shuffle=True, rng=rng)])
    np.testing.assert_array_equal(order(4), order(4))
    gen = np.random.default_rng(4)
    first, second = order(gen), order(gen)
    np.testing.assert_array_equal(first, order(4))
    assert not np.array_equal(first, second)
    unshuffled = np.concatenate([b.index for b in nn.minibatches(seqs, batch_size=7)])
    np.testing.assert_array_equal(unshuffled, np.arange(30))


def test_minibatches_of_a_padded_array_zero_what_lies_past_the_lengths():
    padded = np.full((4, 6, 2), np.nan, np.float32)       # the caller's padding is NaN
    lengths = np.array([6, 2, 3, 1])
    for i, T in enumerate(lengths):
        padded[i, :T] = i + 1
    (b,) = nn.minibatches(padded, lengths=lengths, batch_size=4)
    assert b.x.shape == (6, 4, 2)
    for j, T in enumerate(lengths):
        np.testing.assert_array_equal(b.x[:T, j], j + 1)
        np.testing.assert_array_equal(b.x[T:, j], 0)
    (b,) = nn.minibatches(padded[1:3], lengths=lengths[1:3], batch_size=8)
    assert b.x.shape == (3, 2, 2)                          # cut to the batch's longest


def test_pad_sequences_and_its_errors():
    padded, lengths = nn.pad_sequences([np.array([1, 2, 3]), np.array([4])])
    np.testing.assert_array_equal(padded, [[1, 2, 3], [4, 0, 0]])
    np.testing.assert_array_equal(lengths, [3, 1])
    with pytest.raises(ValueError, match=r"sequences\[1\] must have shape \(T_i,\) or \(T_i, I\)"):
        nn.pad_sequences([np.zeros((3, 2)), np.zeros((3, 4))])
    with pytest.raises(TypeError, match="sequences must be a list of arrays"):
        nn.pad_sequences(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="lengths is for a padded array sequences"):
        list(nn.minibatches([np.zeros(2)], lengths=[2]))
    with pytest.raises(ValueError, match=r"y must have one entry per sequence, \(2,\)"):
        list(nn.minibatches([np.zeros(2), np.zeros(1)], np.zeros(3)))


# -------------------------------------------------------------------- helpers

def test_recurrent_builds_every_cell_and_prefixed_joins_names():
    for cell, cls in [("rnn_tanh", fastrnn.RNN), ("rnn_relu", fastrnn.RNN),
                      ("lstm", fastrnn.LSTM), ("gru", fastrnn.GRU)]:
        layer = nn.recurrent(cell, 3, 4, num_layers=2, rng=0)
        assert type(layer) is cls and layer.mode == cell and layer.num_layers == 2
    with pytest.raises(ValueError, match="cell must be one of"):
        nn.recurrent("lstmm", 3, 4)
    lin = nn.Linear(2, 3, rng=0)
    assert list(nn.prefixed("head", lin)) == ["head.weight", "head.bias"]
    assert nn.prefixed("head", {"weight": 1}) == {"head.weight": 1}
