"""SequenceClassifier: gradients of the whole model against central finite
differences (float64), the pooling conventions, one training step against the
same model in PyTorch, learning a synthetic task, reproducibility, the
scikit-learn estimator API and the error messages.
"""
import numpy as np
import pytest

import fastrnn
from fastrnn.classifier import FitStep, NotFittedError, SequenceClassifier
from conftest import assert_close, finite_difference_gradient

# As in test_reference.py: float64 central differences have rounding error
# ~1e-16 * |loss| / EPS ~ 1e-10 here (the cross-entropy is ~1, while some gradients
# are ~1e-5) and truncation error ~1e-13; atol=1e-8 sits above that noise and
# rtol=1e-6 still catches any wrong term.
FD_EPS, FD_RTOL, FD_ATOL = 1e-6, 1e-6, 1e-8
V, E, I, C = 7, 3, 2, 3             # vocabulary, embedding, dense features, classes
LENGTHS = [5, 2, 4, 1, 5]           # unsorted, with the longest twice and a single step


def make_data(tokens, n=len(LENGTHS), lengths=LENGTHS, dtype=np.float64, seed=0):
    """A list of sequences ((T_i,) ids or (T_i, I) features) and labels using every class."""
    rng = np.random.default_rng(seed)
    X = [rng.integers(0, V, T) if tokens else rng.standard_normal((T, I)).astype(dtype)
         for T in lengths[:n]]
    y = np.arange(n) % C
    return X, y


def untrained(tokens, X, y, **kw):
    """A built but untrained float64 classifier (epochs=0 builds the model only)."""
    kw = dict(dtype=np.float64, hidden_size=3, random_state=0, **kw)
    if tokens:
        kw.update(vocab_size=V, embedding_dim=E)
    return SequenceClassifier(epochs=0, **kw).fit(X, y)


# --------------------------------------------------------------- gradients

GRAD_CASES = [
    # (cell, pooling, bidirectional, num_layers, token input)
    ("lstm", "last", True, 2, True),
    ("lstm", "mean", True, 2, False),
    ("lstm", "last", False, 1, False),
    ("gru", "last", True, 2, False),
    ("gru", "mean", False, 2, True),
    ("rnn_tanh", "last", False, 2, True),
    ("rnn_tanh", "mean", True, 1, False),
]


@pytest.mark.parametrize("cell, pooling, bidirectional, num_layers, tokens", GRAD_CASES,
                         ids=["-".join(map(str, c)) for c in GRAD_CASES])
def test_gradients_of_the_whole_model_match_finite_differences(cell, pooling, bidirectional,
                                                               num_layers, tokens):
    X, y = make_data(tokens)
    clf = untrained(tokens, X, y, cell=cell, pooling=pooling, bidirectional=bidirectional,
                    num_layers=num_layers)
    loss, grads = clf.loss_and_gradients(X, y)

    def inference_loss():
        # the loss again through the inference path (predict_log_proba), batch mean
        return -float(clf.predict_log_proba(X)[np.arange(len(y)), y].mean())

    assert loss == pytest.approx(inference_loss(), rel=1e-14)
    params = dict(clf.named_parameters())
    assert grads.keys() == params.keys()
    assert ("embedding.weight" in params) == tokens
    for name, p in params.items():
        expected = finite_difference_gradient(inference_loss, p, FD_EPS)
        np.testing.assert_allclose(grads[name], expected, rtol=FD_RTOL, atol=FD_ATOL,
                                   err_msg=name)


@pytest.mark.parametrize("cell, pooling", [("lstm", "mean"), ("rnn_tanh", "last")])
def test_input_gradient_matches_finite_differences(cell, pooling):
    X, y = make_data(tokens=False)
    padded, lengths = fastrnn.nn.pad_sequences(X)
    clf = untrained(False, X, y, cell=cell, pooling=pooling, bidirectional=True)
    _, _, dX = clf.loss_and_gradients(padded, y, lengths=lengths, input_gradient=True)
    rows = np.arange(len(y))
    expected = finite_difference_gradient(
        lambda: -float(clf.predict_log_proba(padded, lengths=lengths)[rows, y].mean()),
        padded, FD_EPS)
    np.testing.assert_allclose(dX, expected, rtol=FD_RTOL, atol=FD_ATOL)
    past = np.arange(padded.shape[1])[None, :] >= lengths[:, None]
    assert past.any() and not dX[past].any()                  # zero past each length


def test_input_gradient_of_token_input_is_that_of_the_embedded_tokens():
    X, y = make_data(tokens=True)
    clf = untrained(True, X, y)
    _, grads, dX = clf.loss_and_gradients(X, y, input_gradient=True)
    assert dX.shape == (len(X), max(LENGTHS), E)
    padded, _ = fastrnn.nn.pad_sequences(X)
    dweight = np.zeros((V, E))
    np.add.at(dweight, padded, dX)                            # what the embedding collects
    np.testing.assert_allclose(grads["embedding.weight"], dweight, rtol=1e-14, atol=1e-17)


def test_last_pooling_is_pytorchs_h_n_and_mean_pooling_averages_valid_steps():
    X, y = make_data(tokens=False)
    lengths = np.array(LENGTHS)
    H = 3
    for pooling in ("last", "mean"):
        clf = untrained(False, X, y, cell="gru", pooling=pooling, bidirectional=True)
        feats = clf.encode(X)
        assert feats.shape == (len(X), 2 * H)
        padded, _ = fastrnn.nn.pad_sequences(X)
        out, _ = clf.encoder_(np.ascontiguousarray(padded.swapaxes(0, 1)), lengths=lengths)
        for b, T in enumerate(lengths):
            if pooling == "last":
                # forward direction after its last valid step; reverse direction at t=0
                expected = np.concatenate([out[T - 1, b, :H], out[0, b, H:]])
            else:
                expected = out[:T, b].mean(axis=0)
            np.testing.assert_allclose(feats[b], expected, rtol=1e-13, atol=1e-15)


# ------------------------------------------------------- parity with PyTorch

@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_one_training_step_matches_pytorch(pooling):
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    X, y = make_data(tokens=True)
    clf = untrained(True, X, y, cell="lstm", pooling=pooling, bidirectional=True,
                    num_layers=2, lr=0.01, max_grad_norm=0.5, weight_decay=0.01)
    params = dict(clf.named_parameters())
    emb = torch.nn.Embedding(V, E).double()
    lstm = clf.encoder_.to_torch().double()
    head = torch.nn.Linear(6, C).double()
    with torch.no_grad():
        emb.weight.copy_(torch.tensor(params["embedding.weight"]))
        head.weight.copy_(torch.tensor(params["head.weight"]))
        head.bias.copy_(torch.tensor(params["head.bias"]))
    modules = {"embedding": emb, "encoder": lstm, "head": head}
    t_params = {f"{m}.{n}": p for m, mod in modules.items() for n, p in mod.named_parameters()}
    assert t_params.keys() == params.keys()

    # PyTorch: the same batch, packed; the same step (loss, backward, clip, Adam)
    padded, lengths = fastrnn.nn.pad_sequences(X)
    tokens = torch.tensor(padded.T)                                        # (T, B)
    packed = pack_padded_sequence(emb(tokens), torch.tensor(lengths), enforce_sorted=False)
    out, (h_n, _) = lstm(packed)
    if pooling == "last":
        feats = torch.cat([h_n[-2], h_n[-1]], dim=1)
    else:
        out, _ = pad_packed_sequence(out)
        feats = out.sum(0) / torch.tensor(lengths, dtype=torch.float64)[:, None]
    t_loss = torch.nn.functional.cross_entropy(head(feats), torch.tensor(y))
    t_loss.backward()
    t_grads = {k: p.grad.clone() for k, p in t_params.items()}
    torch.nn.utils.clip_grad_norm_(list(t_params.values()), 0.5)
    t_opt = torch.optim.Adam(list(t_params.values()), lr=0.01, weight_decay=0.01)
    t_opt.step()

    # fastrnn: the gradients, then one fit step from the same weights
    loss, grads = clf.loss_and_gradients(X, y)
    assert loss == pytest.approx(t_loss.item(), rel=1e-12)
    for name in params:
        assert_close(grads[name], t_grads[name].numpy(), 1e-10, name)
    stepped = clf.set_params(epochs=1, batch_size=len(X))
    stepped.fit(X, y)                    # same seed: same initial weights, one full batch
    for name, p in stepped.named_parameters():
        assert_close(p, t_params[name].detach().numpy(), 1e-10, name)


# ------------------------------------------------------------------ training

def contains_marker(n, rng, marker=1):
    """Token sequences of 3..19 ids from 2..9; label: does the marker id occur?"""
    X, y = [], []
    for _ in range(n):
        seq = rng.integers(2, 10, rng.integers(3, 20))
        label = rng.random() < 0.5
        if label:
            seq[rng.integers(len(seq))] = marker
        X.append(seq)
        y.append(int(label))
    return X, np.array(y)


def test_learns_a_synthetic_task_to_high_accuracy():
    rng = np.random.default_rng(0)
    X_train, y_train = contains_marker(600, rng)
    X_test, y_test = contains_marker(300, rng)
    steps = []
    clf = SequenceClassifier(vocab_size=10, embedding_dim=8, hidden_size=16, epochs=8,
                             lr=1e-2, random_state=0)
    clf.fit(X_train, y_train, callback=steps.append)
    assert clf.score(X_test, y_test) >= 0.95
    assert clf.loss_curve_[-1] < 0.1 * clf.loss_curve_[0]
    assert clf.n_iter_ == 8 and len(clf.loss_curve_) == 8
    # the callback saw every batch: 19 per epoch (600 / 32, rounded up)
    assert len(steps) == 8 * 19 and isinstance(steps[0], FitStep)
    assert sum(s.n_samples for s in steps if s.epoch == 0) == 600
    proba = clf.predict_proba(X_test)
    assert proba.shape == (300, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-6)
    np.testing.assert_array_equal(clf.predict(X_test), clf.classes_[proba.argmax(axis=1)])


def test_same_seed_gives_identical_training_and_another_seed_does_not():
    X, y = contains_marker(96, np.random.default_rng(1))
    fit = lambda seed: SequenceClassifier(             # noqa: E731
        vocab_size=10, hidden_size=8, embedding_dim=4, epochs=2, random_state=seed,
        cell="gru", dropout=0.3, num_layers=2).fit(X, y)
    a, b, c = fit(3), fit(3), fit(4)
    assert a.loss_curve_ == b.loss_curve_            # bitwise: same weights, order, dropout
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_array_equal(p, q, err_msg=name)
    assert a.loss_curve_ != c.loss_curve_


def test_dense_input_as_list_or_padded_array_trains_the_same():
    X, y = make_data(tokens=False, dtype=np.float32)
    padded, lengths = fastrnn.nn.pad_sequences(X)
    kw = dict(hidden_size=4, epochs=3, batch_size=2, random_state=0, pooling="mean")
    from_list = SequenceClassifier(**kw).fit(X, y)
    from_padded = SequenceClassifier(**kw).fit(padded, y, lengths=lengths)
    assert from_list.loss_curve_ == from_padded.loss_curve_
    assert from_list.n_features_in_ == I
    np.testing.assert_array_equal(from_list.encode(X), from_padded.encode(padded, lengths=lengths))
    # string labels come back as labels
    labels = np.array(["cat", "dog", "emu"])[y]
    clf = SequenceClassifier(**kw).fit(X, labels)
    assert list(clf.classes_) == ["cat", "dog", "emu"]
    assert set(clf.predict(X)) <= set(labels)


# ------------------------------------------------------------ scikit-learn API

def test_get_params_set_params_and_repr():
    clf = SequenceClassifier(cell="gru", hidden_size=8)
    params = clf.get_params()
    assert params["cell"] == "gru" and params["hidden_size"] == 8 and params["epochs"] == 10
    assert SequenceClassifier(**params).get_params() == params
    assert clf.set_params(epochs=3, pooling="mean") is clf
    assert clf.epochs == 3 and clf.pooling == "mean"
    assert repr(clf) == "SequenceClassifier(cell='gru', hidden_size=8, pooling='mean', epochs=3)"
    with pytest.raises(ValueError, match="Invalid parameter 'hiden_size'"):
        clf.set_params(hiden_size=4)


def test_works_with_scikit_learn_clone_and_cross_val_score():
    pytest.importorskip("sklearn")
    from sklearn.base import clone, is_classifier
    from sklearn.model_selection import KFold, cross_val_score

    X, y = contains_marker(80, np.random.default_rng(2))
    clf = SequenceClassifier(vocab_size=10, hidden_size=8, epochs=2, random_state=0)
    assert is_classifier(clf)
    copy = clone(clf)
    assert copy.get_params() == clf.get_params() and not hasattr(copy, "classes_")
    folds = KFold(2)
    scores = cross_val_score(clf, X, y, cv=folds)
    # the same as fitting and scoring each fold by hand
    by_hand = []
    for train, test in folds.split(X):
        model = clone(clf).fit([X[i] for i in train], y[train])
        by_hand.append(model.score([X[i] for i in test], y[test]))
    np.testing.assert_array_equal(scores, by_hand)


def test_importing_fastrnn_does_not_import_scikit_learn():
    import subprocess
    import sys
    code = ("import sys, fastrnn; fastrnn.SequenceClassifier; "
            "assert not any(m.split('.')[0] == 'sklearn' for m in sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------- errors

TOKENS = [np.array([1, 2]), np.array([3])]
DENSE = [np.zeros((2, I)), np.zeros((3, I))]


@pytest.mark.parametrize("kw, X, y, fit_kw, error, match", [
    ({}, DENSE, [0, 1, 0], {}, ValueError, r"y must have shape \(N,\) = \(2,\)"),
    ({}, DENSE, [0, 0], {}, ValueError, "y must hold at least 2 classes"),
    ({"vocab_size": 4}, [np.array([1, 4]), np.array([0])], [0, 1], {}, ValueError,
     r"X must hold token ids in \[0, vocab_size=4\), got values in \[0, 4\]"),
    ({"vocab_size": 4}, [np.array([1, -1]), np.array([0])], [0, 1], {}, ValueError,
     r"X must hold token ids in \[0, vocab_size=4\), got values in \[-1, 1\]"),
    ({"vocab_size": 4}, [np.array([1.0]), np.array([0.0])], [0, 1], {}, TypeError,
     r"X must hold integer token ids \(vocab_size is set\)"),
    ({"vocab_size": 4}, DENSE, [0, 1], {}, ValueError,
     r"X must be a list of \(T_i,\) integer token ids, got sequences of shape \(T_i, 2\)"),
    ({}, TOKENS, [0, 1], {}, ValueError,
     r"X must be a list of \(T_i, input_size\) features, got sequences of shape \(T_i,\).*"
     r"set vocab_size"),
    ({}, np.zeros((2, 5)), [0, 1], {}, ValueError,
     r"padded array of shape \(N, T, input_size\).*got shape \(2, 5\)"),
    ({}, [np.zeros((2, I)), np.zeros((0, I))], [0, 1], {}, ValueError,
     r"X\[1\] is empty: every sequence needs at least one step"),
    ({}, np.zeros((2, 3, I)), [0, 1], {"lengths": [3, 4]}, ValueError,
     r"lengths must lie in \[0, T=3\]"),
    ({}, DENSE, [0, 1], {"lengths": [2, 3]}, ValueError, "lengths is for a padded array X"),
    ({}, [np.array([[np.nan, 0]]), np.zeros((1, I))], [0, 1], {}, ValueError,
     "X holds NaN or infinity"),
    ({"cell": "lstn"}, DENSE, [0, 1], {}, ValueError, "cell must be one of"),
    ({"pooling": "max"}, DENSE, [0, 1], {}, ValueError,
     r"pooling must be one of \('last', 'mean'\), got 'max'"),
    ({"hidden_size": 0}, DENSE, [0, 1], {}, ValueError, "hidden_size must be >= 1, got 0"),
    ({"lr": -1.0}, DENSE, [0, 1], {}, ValueError, "lr must be > 0, got -1.0"),
    ({"max_grad_norm": "1"}, DENSE, [0, 1], {}, TypeError, "max_grad_norm must be a number"),
    ({"dtype": np.int32}, DENSE, [0, 1], {}, TypeError, "dtype must be np.float32 or np.float64"),
])
def test_fit_rejects_bad_input_with_clear_messages(kw, X, y, fit_kw, error, match):
    with pytest.raises(error, match=match):
        SequenceClassifier(epochs=0, **kw).fit(X, y, **fit_kw)


def test_methods_of_an_unfitted_or_mismatched_model_fail_clearly():
    with pytest.raises(NotFittedError, match="not fitted yet; call fit"):
        SequenceClassifier().predict(DENSE)
    clf = SequenceClassifier(epochs=0, hidden_size=2).fit(DENSE, [0, 1])
    with pytest.raises(ValueError, match="X has 3 features per step, but the classifier was "
                                         "fitted with input_size=2"):
        clf.predict([np.zeros((2, 3))])
    with pytest.raises(ValueError, match=r"y holds labels not seen in fit: array\(\[7\]\)"):
        clf.loss_and_gradients(DENSE, [0, 7])
    # a refit starts over: a new input size is fine
    assert clf.fit([np.zeros((2, 3)), np.ones((1, 3))], [0, 1]).n_features_in_ == 3
