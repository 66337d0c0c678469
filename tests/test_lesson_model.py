"""End to end: the lesson's model, embedding -> LSTM -> linear on the last state ->
softmax cross-entropy, trained a few SGD steps in fastrnn (NumPy, with the
embedding, linear layer and loss written here) and in PyTorch from the same
initial weights: the losses, and the weights they reach, agree.
"""
import numpy as np
import pytest

import fastrnn
from conftest import assert_close

torch = pytest.importorskip("torch")

V, E, H, C = 20, 8, 16, 5          # vocabulary, embedding, hidden, classes
B, T = 6, 7
LR, STEPS = 0.5, 6


def data(seed=0):
    rng = np.random.default_rng(seed)
    lengths = np.array([7, 3, 5, 1, 6, 7])                   # unsorted, padded batch
    tokens = rng.integers(1, V, (B, T))
    tokens[np.arange(T)[None, :] >= lengths[:, None]] = 0    # padding id 0
    labels = rng.integers(0, C, B)
    return tokens, lengths, labels


def initial_weights(dtype, seed=1):
    rng = np.random.default_rng(seed)
    lstm = fastrnn.LSTM(E, H, num_layers=2, batch_first=True, dtype=dtype, rng=rng)
    k = 1 / np.sqrt(H)
    emb = rng.standard_normal((V, E)).astype(dtype)
    lin_w = rng.uniform(-k, k, (C, H)).astype(dtype)
    lin_b = rng.uniform(-k, k, C).astype(dtype)
    return lstm, emb, lin_w, lin_b


def train_fastrnn(dtype):
    tokens, lengths, labels = data()
    lstm, emb, lin_w, lin_b = initial_weights(dtype)
    losses = []
    for _ in range(STEPS):
        x = emb[tokens]                                      # embedding
        _, (h_n, _), ctx = lstm(x, lengths=lengths, training=True)
        last = h_n[-1]                                       # top layer's final state
        logits = last @ lin_w.T + lin_b
        shifted = logits - logits.max(axis=1, keepdims=True)
        logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        losses.append(-logp[np.arange(B), labels].mean())
        dlogits = np.exp(logp)                               # softmax - onehot, / B
        dlogits[np.arange(B), labels] -= 1
        dlogits /= B
        dlast = dlogits @ lin_w
        dh_n = np.zeros_like(h_n)
        dh_n[-1] = dlast
        grads = lstm.backward(ctx, None, (dh_n, None))
        demb = np.zeros_like(emb)
        np.add.at(demb, tokens, grads.dx)
        lin_w -= LR * (dlogits.T @ last)
        lin_b -= LR * dlogits.sum(axis=0)
        emb -= LR * demb
        for name, p in lstm.named_parameters():
            p -= LR * grads.dparams[name]
    return np.array(losses), lstm.state_dict(), emb, lin_w, lin_b


def train_torch(dtype):
    tokens, lengths, labels = data()
    lstm, emb, lin_w, lin_b = initial_weights(dtype)
    tdtype = getattr(torch, np.dtype(dtype).name)
    model = torch.nn.ModuleDict({
        "emb": torch.nn.Embedding(V, E, dtype=tdtype),
        "lstm": lstm.to_torch(),
        "lin": torch.nn.Linear(H, C, dtype=tdtype),
    })
    with torch.no_grad():
        model["emb"].weight.copy_(torch.from_numpy(emb))
        model["lin"].weight.copy_(torch.from_numpy(lin_w))
        model["lin"].bias.copy_(torch.from_numpy(lin_b))
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    tok, lab = torch.from_numpy(tokens), torch.from_numpy(labels)
    losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            model["emb"](tok), torch.from_numpy(lengths), batch_first=True,
            enforce_sorted=False)
        _, (h_n, _) = model["lstm"](packed)
        loss = torch.nn.functional.cross_entropy(model["lin"](h_n[-1]), lab)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    lstm_weights = {k: v.detach().numpy() for k, v in model["lstm"].state_dict().items()}
    return (np.array(losses), lstm_weights, model["emb"].weight.detach().numpy(),
            model["lin"].weight.detach().numpy(), model["lin"].bias.detach().numpy())


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-10), (np.float32, 2e-5)],
                         ids=["float64", "float32"])
def test_lesson_model_trains_like_pytorch(dtype, rtol):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ours = train_fastrnn(dtype)
        theirs = train_torch(dtype)
    finally:
        torch.set_num_threads(n)
    losses, losses_t = ours[0], theirs[0]
    assert losses[-1] < losses[0]                           # it learns
    np.testing.assert_allclose(losses, losses_t, rtol=rtol)
    for name, a in ours[1].items():
        assert_close(a, theirs[1][name], rtol, name)
    for a, b, name in zip(ours[2:], theirs[2:], ("embedding", "linear weight", "linear bias")):
        assert_close(a, b, rtol, name)
