"""A sequence classifier with scikit-learn's estimator API, on fastrnn's layers.

``SequenceClassifier``: (embedding or dense input) -> stacked, optionally
bidirectional RNN/LSTM/GRU encoder -> pooling (the last valid state, or the
mean over the valid steps) -> linear layer -> softmax cross-entropy; trained
with Adam and gradient-norm clipping (:mod:`fastrnn.nn`) through the layers'
training context and backward::

    clf = SequenceClassifier(vocab_size=1000, cell="gru", epochs=5, random_state=0)
    clf.fit(token_lists, labels)            # a list of (T_i,) int arrays, any lengths
    clf.predict(token_lists)                # labels; predict_proba, score as scikit-learn
    emb = clf.encode(token_lists)           # (N, D) sequence embeddings

    clf = SequenceClassifier(pooling="mean", bidirectional=True)
    clf.fit(X, y, lengths=lengths)          # padded (N, T, I) floats + valid steps

It follows scikit-learn's conventions (``get_params``/``set_params``,
hyper-parameters checked in ``fit``, fitted attributes ending in ``_``, so
``sklearn.base.clone`` and ``cross_val_score`` work) without importing
scikit-learn.
"""
import inspect
from typing import NamedTuple

import numpy as np

from . import _validate as v
from .layers import _dtype_of, _positive_int
from .nn import (CELLS, Adam, Embedding, Linear, clip_grad_norm, cross_entropy, log_softmax,
                 as_padded, minibatches, prefixed, recurrent)

__all__ = ["SequenceClassifier", "FitStep", "NotFittedError"]

POOLINGS = ("last", "mean")

#: sequences per forward call in predict/encode: larger than a training batch
#: (no workspace is kept), small enough to bound the memory of long sequences
_INFERENCE_BATCH = 256


class NotFittedError(ValueError, AttributeError):
    """Raised when a method needs a fitted model (as scikit-learn's ``NotFittedError``)."""


class FitStep(NamedTuple):
    """What ``fit`` passes to its ``callback`` after each mini-batch."""
    epoch: int           #: from 0
    batch: int           #: index within the epoch, from 0
    loss: float          #: mean loss of the batch, before the update
    n_samples: int       #: sequences in the batch


class SequenceClassifier:
    """Classify variable-length sequences with a recurrent encoder.

    Parameters
    ----------
    cell : {"lstm", "gru", "rnn_tanh", "rnn_relu"}
    hidden_size : int
        H, per direction.
    num_layers : int
        Stacked recurrent layers.
    bidirectional : bool
        The encoder's output has D*H features, D = 2 if bidirectional else 1.
    pooling : {"last", "mean"}
        ``"last"``: the top layer's final states ``h_n``, as PyTorch returns them
        for packed sequences: the forward direction's state after the last
        valid step, and the reverse direction's state at t = 0.
        ``"mean"``: the mean of the top layer's outputs over the valid steps.
    vocab_size : int, optional
        Set it for token input: X holds integer ids in ``[0, vocab_size)``,
        embedded into ``embedding_dim`` features. Without it, X holds features.
    embedding_dim : int
    dropout : float
        Between stacked layers, in training only.
    epochs : int
        Passes over the training data; 0 only builds the model.
    batch_size : int
    lr : float
        Adam's learning rate.
    max_grad_norm : float or None
        Clip the total gradient norm of each step to this; None: no clipping.
    weight_decay : float
        L2 penalty, as Adam's ``weight_decay``.
    dtype : np.float32 or np.float64
    backend : str
        The kernel backend of the encoder (``"auto"``, ``"cython"``, ...).
    random_state : int, numpy.random.Generator or None
        Seeds the weights, the batch order and dropout: the same seed and data
        give the same model.

    Attributes
    ----------
    classes_ : (C,) array
        The labels seen by fit, sorted; predictions are among them.
    n_features_in_ : int
        Features per step of dense input (not set for token input).
    embedding_ : fastrnn.nn.Embedding or None
    encoder_ : fastrnn.RNN, LSTM or GRU
        Time-major.
    head_ : fastrnn.nn.Linear
        ``(D*H) -> C``.
    loss_curve_ : list of float
        Mean training loss of each epoch.
    n_iter_ : int
        Epochs run.
    """

    # scikit-learn < 1.6 reads this; later versions call __sklearn_tags__
    _estimator_type = "classifier"

    def __init__(self, cell="lstm", hidden_size=64, num_layers=1, bidirectional=False,
                 pooling="last", vocab_size=None, embedding_dim=32, dropout=0.0, epochs=10,
                 batch_size=32, lr=3e-3, max_grad_norm=1.0, weight_decay=0.0,
                 dtype=np.float32, backend="auto", random_state=None):
        # store only: scikit-learn's clone() needs the arguments back unchanged
        self.cell = cell
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bidirectional = bidirectional
        self.pooling = pooling
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.dropout = dropout
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.max_grad_norm = max_grad_norm
        self.weight_decay = weight_decay
        self.dtype = dtype
        self.backend = backend
        self.random_state = random_state

    # ------------------------------------------------------------ parameters

    @classmethod
    def _param_names(cls):
        return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]

    def get_params(self, deep=True):
        """The constructor's arguments, ``{name: value}``."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params):
        """Set constructor arguments; they take effect at the next ``fit``. Returns self."""
        valid = self._param_names()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(f"Invalid parameter {name!r} for SequenceClassifier; valid "
                                 f"parameters are {valid}")
            setattr(self, name, value)
        return self

    def __sklearn_tags__(self):
        # only scikit-learn calls this, so importing it here keeps it optional
        from sklearn.utils import ClassifierTags, Tags, TargetTags
        return Tags(estimator_type="classifier", target_tags=TargetTags(required=True),
                    classifier_tags=ClassifierTags())

    def __repr__(self):
        defaults = inspect.signature(type(self).__init__).parameters
        changed = [f"{k}={val!r}" for k, val in self.get_params().items()
                   if not _same(val, defaults[k].default)]
        return f"SequenceClassifier({', '.join(changed)})"

    def _check_params(self):
        """Check the hyper-parameters (in fit, as scikit-learn does); returns the dtype."""
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {CELLS}, got {self.cell!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        for name in ("hidden_size", "num_layers", "embedding_dim", "batch_size"):
            _positive_int(name, getattr(self, name))
        _positive_int("epochs", self.epochs, minimum=0)
        if self.vocab_size is not None:
            _positive_int("vocab_size", self.vocab_size)
        v.flag("bidirectional", self.bidirectional)
        for name, value, ok, rule in [
                ("lr", self.lr, lambda a: a > 0, "> 0"),
                ("weight_decay", self.weight_decay, lambda a: a >= 0, ">= 0"),
                ("dropout", self.dropout, lambda a: 0 <= a < 1, "in [0, 1)"),
                ("max_grad_norm", self.max_grad_norm, lambda a: a is None or a > 0,
                 "> 0 or None")]:
            if not (value is None and name == "max_grad_norm") and not _is_number(value):
                raise TypeError(f"{name} must be a number, got {type(value).__name__}")
            if not ok(value):
                raise ValueError(f"{name} must be {rule}, got {value!r}")
        return _dtype_of(self.dtype)

    # ------------------------------------------------------------------ input

    def _check_X(self, X, lengths, dtype):
        """X as a padded batch-major array (token ids or features) and its lengths.

        Returns ``(padded, lengths)``: ``(N, T)`` intp ids or ``(N, T, I)``
        floats of ``dtype``, zero past each length; ``(N,)`` lengths >= 1.
        """
        tokens = self.vocab_size is not None
        want = "(T_i,) integer token ids" if tokens else "(T_i, input_size) features"
        if isinstance(X, np.ndarray) and X.ndim != (2 if tokens else 3):
            raise ValueError(
                f"X must be a list of {want} or a padded array of shape "
                + ("(N, T) (vocab_size is set)" if tokens else
                   "(N, T, input_size) (for one feature per step, use X[..., None]; "
                   "for token ids, set vocab_size)")
                + f"; got shape {X.shape}")
        padded, lengths = as_padded(X, lengths, name="X")
        if not isinstance(X, np.ndarray):
            if padded.ndim != (2 if tokens else 3):
                got = "(T_i,)" if padded.ndim == 2 else f"(T_i, {padded.shape[2]})"
                raise ValueError(f"X must be a list of {want}, got sequences of shape {got}; "
                                 + ("for features, leave vocab_size None" if tokens else
                                    "for one feature per step pass each sequence as "
                                    "s[:, None]; for token ids, set vocab_size"))
        if len(padded) == 0:
            raise ValueError("X must hold at least one sequence")
        if lengths.min() < 1:
            i = int(np.argmin(lengths))
            raise ValueError(f"X[{i}] is empty: every sequence needs at least one step")
        valid = np.arange(padded.shape[1])[None, :] < lengths[:, None]       # (N, T)
        if tokens:
            if padded.dtype.kind not in "iu":
                raise TypeError("X must hold integer token ids (vocab_size is set), got dtype "
                                f"{padded.dtype}")
            ids = padded[valid]
            if ids.min() < 0 or ids.max() >= self.vocab_size:
                raise ValueError(f"X must hold token ids in [0, vocab_size={self.vocab_size}), "
                                 f"got values in [{ids.min()}, {ids.max()}]")
            return np.where(valid, padded, 0).astype(np.intp), lengths
        if padded.dtype.kind not in "fiub":
            raise TypeError(f"X must hold real numbers, got dtype {padded.dtype}")
        if not np.isfinite(padded[valid]).all():
            raise ValueError("X holds NaN or infinity within the sequences' lengths")
        n_features = getattr(self, "n_features_in_", None)
        if n_features is not None and padded.shape[2] != n_features:
            raise ValueError(f"X has {padded.shape[2]} features per step, but the classifier "
                             f"was fitted with input_size={n_features}")
        return np.where(valid[:, :, None], padded, 0).astype(dtype), lengths

    def _check_y(self, y, N):
        y = np.asarray(y)
        if y.shape != (N,):
            raise ValueError(f"y must have shape (N,) = ({N},), one label per sequence of X, "
                             f"got shape {y.shape}")
        return y

    # ------------------------------------------------------------------ model

    def _build(self, n_features, n_classes, dtype, rng):
        if self.vocab_size is None:
            self.embedding_ = None
            input_size = n_features
        else:
            self.embedding_ = Embedding(self.vocab_size, self.embedding_dim, dtype=dtype, rng=rng)
            input_size = self.embedding_dim
        self.encoder_ = recurrent(self.cell, input_size, self.hidden_size,
                                  num_layers=self.num_layers,
                                  bidirectional=bool(self.bidirectional), dropout=self.dropout,
                                  dtype=dtype, backend=self.backend, rng=rng)
        D = self.encoder_.num_directions
        self.head_ = Linear(D * self.hidden_size, n_classes, dtype=dtype, rng=rng)

    def named_parameters(self):
        """``(name, array)`` pairs: ``embedding.weight``, ``encoder.<PyTorch name>``,
        ``head.weight``, ``head.bias``. Updating the arrays updates the model."""
        self._check_fitted()
        return iter(self._parameters().items())

    def _parameters(self):
        # without the fitted check: fit needs them before classes_ is set
        params = {} if self.embedding_ is None else prefixed("embedding", self.embedding_)
        params.update(prefixed("encoder", self.encoder_))
        params.update(prefixed("head", self.head_))
        return params

    def _check_fitted(self):
        if not hasattr(self, "classes_"):
            raise NotFittedError("this SequenceClassifier is not fitted yet; call fit(X, y) "
                                 "first")

    # ------------------------------------------------------------ the network

    def _encode_batch(self, x, lengths, training):
        """Pooled features ``(B, D*H)`` of a time-major batch, and the encoder's context."""
        inputs = x if self.embedding_ is None else self.embedding_(x)
        out = self.encoder_(inputs, None, lengths, training=training)
        y, h_n = out[0], out[1]
        if self.pooling == "mean":
            feats = y.sum(axis=0) / lengths[:, None].astype(y.dtype)   # y is zero past lengths
        else:
            h = h_n[0] if self.cell == "lstm" else h_n                  # (L*D, B, H)
            D = self.encoder_.num_directions
            feats = np.concatenate(list(h[-D:]), axis=1)                 # top layer's directions
        return feats, (out[2] if training else None)

    def _pooling_backward(self, dfeats, lengths, T):
        """``(dy, dhx)`` for the encoder's backward, given the gradient of the pooled features."""
        B = len(lengths)
        if self.pooling == "mean":
            valid = np.arange(T)[:, None] < lengths[None, :]                 # (T, B)
            per_step = dfeats / lengths[:, None].astype(dfeats.dtype)         # (B, D*H)
            return np.where(valid[:, :, None], per_step[None], 0).astype(dfeats.dtype), None
        L, D, H = self.encoder_.num_layers, self.encoder_.num_directions, self.hidden_size
        dh_n = np.zeros((L * D, B, H), dfeats.dtype)
        dh_n[-D:] = dfeats.reshape(B, D, H).transpose(1, 0, 2)
        return None, ((dh_n, None) if self.cell == "lstm" else dh_n)

    def _loss_and_grads(self, x, lengths, target):
        """Mean loss of a time-major batch, ``{parameter name: gradient}``, and the
        gradient of the encoder's input (T, B, features)."""
        feats, ctx = self._encode_batch(x, lengths, training=True)
        loss, dlogits = cross_entropy(self.head_(feats), target)
        g_head = self.head_.backward(feats, dlogits)
        dy, dhx = self._pooling_backward(g_head.dx, lengths, x.shape[0])
        g_enc = self.encoder_.backward(ctx, dy, dhx)
        grads = ({} if self.embedding_ is None
                 else prefixed("embedding", self.embedding_.backward(x, g_enc.dx).dparams))
        grads.update(prefixed("encoder", g_enc.dparams))
        grads.update(prefixed("head", g_head.dparams))
        return loss, grads, g_enc.dx

    # -------------------------------------------------------------- training

    def fit(self, X, y, *, lengths=None, callback=None):
        """Train from scratch on sequences ``X`` with labels ``y``.

        Parameters
        ----------
        X : list of arrays, or array
            N sequences: ``(T_i,)`` int token ids (with ``vocab_size``) or
            ``(T_i, I)`` features; or one padded array ``(N, T)`` /
            ``(N, T, I)`` with ``lengths``. Every sequence needs T_i >= 1.
        y : (N,) array
            Labels of any sortable kind (ints, strings, ...).
        lengths : (N,) int array, optional
            Valid steps of a padded X (default: all T).
        callback : callable, optional
            Called with a :class:`FitStep` after every mini-batch (progress bars).

        Returns
        -------
        self
        """
        dtype = self._check_params()
        for attr in ("classes_", "n_features_in_"):   # a refit starts over
            self.__dict__.pop(attr, None)
        padded, lengths = self._check_X(X, lengths, dtype)
        y = self._check_y(y, len(padded))
        classes, target = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(f"y must hold at least 2 classes, got only {classes!r}")
        rng = np.random.default_rng(self.random_state)
        self._build(None if self.vocab_size else padded.shape[2], len(classes), dtype, rng)
        optimizer = Adam(self._parameters(), lr=self.lr, weight_decay=self.weight_decay)
        self.loss_curve_ = []
        for epoch in range(self.epochs):
            total = 0.0
            batches = minibatches(padded, target, lengths=lengths, batch_size=self.batch_size,
                                  shuffle=True, rng=rng)
            for i, batch in enumerate(batches):
                loss, grads, _ = self._loss_and_grads(batch.x, batch.lengths, batch.y)
                if self.max_grad_norm is not None:
                    clip_grad_norm(grads, self.max_grad_norm)
                optimizer.step(grads)
                total += loss * len(batch.y)
                if callback is not None:
                    callback(FitStep(epoch, i, loss, len(batch.y)))
            self.loss_curve_.append(total / len(padded))
        self.n_iter_ = self.epochs
        self.classes_ = classes
        if self.vocab_size is None:
            self.n_features_in_ = padded.shape[2]
        return self

    def loss_and_gradients(self, X, y, *, lengths=None, input_gradient=False):
        """The mean training loss over (X, y), as one batch, and its gradients.

        What one step of ``fit`` computes before clipping and the update (the
        encoder runs in training mode: dropout applies). For checking
        gradients, timing training steps, and seeing how far back in a
        sequence the loss still reaches (``input_gradient``).

        Returns
        -------
        loss : float
        grads : dict
            ``{name: gradient}`` with the names of :meth:`named_parameters`.
        dX : (N, T, F) array, only with ``input_gradient=True``
            The gradient of the loss with respect to the encoder's input at
            every step: the features of dense X (F = input_size), or the
            embedded tokens (F = embedding_dim). Zero past each length.
        """
        self._check_fitted()
        padded, lengths = self._check_X(X, lengths, _dtype_of(self.dtype))
        y = self._check_y(y, len(padded))
        target = np.searchsorted(self.classes_, y)
        known = target < len(self.classes_)
        known[known] = self.classes_[target[known]] == y[known]
        if not known.all():
            raise ValueError(f"y holds labels not seen in fit: {np.unique(y[~known])!r}")
        x = np.ascontiguousarray(padded.swapaxes(0, 1))
        loss, grads, dx = self._loss_and_grads(x, lengths, target)
        return (loss, grads, dx.swapaxes(0, 1)) if input_gradient else (loss, grads)

    # ------------------------------------------------------------- inference

    def encode(self, X, *, lengths=None):
        """Sequence embeddings: the pooled encoder features the head classifies.

        Parameters
        ----------
        X, lengths : as in :meth:`fit`

        Returns
        -------
        (N, D*H) array of the model's dtype
        """
        self._check_fitted()
        padded, lengths = self._check_X(X, lengths, _dtype_of(self.dtype))
        parts = [self._encode_batch(b.x, b.lengths, training=False)[0]
                 for b in minibatches(padded, lengths=lengths, batch_size=_INFERENCE_BATCH)]
        return np.concatenate(parts)

    def _logits(self, X, lengths):
        feats = self.encode(X, lengths=lengths)          # checks that the model is fitted
        return self.head_(feats)

    def predict_log_proba(self, X, *, lengths=None):
        """``(N, C)`` log-probabilities of the classes, in the order of ``classes_``."""
        return log_softmax(self._logits(X, lengths), axis=1)

    def predict_proba(self, X, *, lengths=None):
        """``(N, C)`` probabilities of the classes, in the order of ``classes_``."""
        return np.exp(self.predict_log_proba(X, lengths=lengths))

    def predict(self, X, *, lengths=None):
        """``(N,)`` the most probable label of each sequence."""
        logits = self._logits(X, lengths)
        return self.classes_[np.argmax(logits, axis=1)]

    def score(self, X, y, *, lengths=None):
        """Accuracy: the fraction of sequences whose predicted label is ``y``."""
        pred = self.predict(X, lengths=lengths)
        return float(np.mean(pred == self._check_y(y, len(pred))))


def _is_number(value):
    return isinstance(value, (int, float, np.number)) and not isinstance(value, (bool, np.bool_))


def _same(a, b):
    """Equality for repr's defaults check, safe for arrays and dtypes."""
    try:
        return bool(a is b or a == b)
    except (TypeError, ValueError):
        return False
