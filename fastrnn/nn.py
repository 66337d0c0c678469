"""A small training kit around fastrnn's layers, in NumPy.

Everything a recurrent model needs besides the recurrent layer itself, and no
more: an embedding, a linear layer, the softmax cross-entropy loss with its
gradient, Adam, gradient-norm clipping, and a mini-batcher that pads
variable-length sequences and returns their lengths.

The modules follow the layers' explicit style: nothing is stored between a
forward and its backward. The caller keeps the forward's input and passes it to
``backward``, which returns :class:`Grads` ``(dx, dparams)``; ``dparams`` maps
parameter names (those of ``named_parameters()``) to gradients, and
:class:`Adam` updates the parameter arrays in place from such a dict::

    emb, lstm, head = Embedding(V, E, rng=0), fastrnn.LSTM(E, H, rng=0), Linear(H, C, rng=0)
    params = {**prefixed("emb", emb), **prefixed("lstm", lstm), **prefixed("head", head)}
    opt = Adam(params, lr=1e-3)
    for batch in minibatches(sequences, labels, batch_size=32, shuffle=True, rng=0):
        e = emb(batch.x)                                   # (T, B) -> (T, B, E)
        _, (h_n, _), ctx = lstm(e, lengths=batch.lengths, training=True)
        logits = head(h_n[-1])                             # (B, C)
        loss, dlogits = cross_entropy(logits, batch.y)
        g_head = head.backward(h_n[-1], dlogits)
        dh_n = np.zeros_like(h_n)
        dh_n[-1] = g_head.dx
        g_lstm = lstm.backward(ctx, None, (dh_n, None))
        g_emb = emb.backward(batch.x, g_lstm.dx)
        grads = {**prefixed("emb", g_emb.dparams), **prefixed("lstm", g_lstm.dparams),
                 **prefixed("head", g_head.dparams)}
        clip_grad_norm(grads, max_norm=1.0)
        opt.step(grads)

Initialisation and update rules are PyTorch's (``nn.Embedding``,
``nn.Linear``, ``optim.Adam``, ``nn.utils.clip_grad_norm_``), so a model
built here trains like its PyTorch twin from the same weights.
"""
import math
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from . import _validate as v
from .layers import GRU, LSTM, RNN, _dtype_of, _positive_int

__all__ = ["Grads", "Embedding", "Linear", "log_softmax", "cross_entropy", "Adam",
           "clip_grad_norm", "Batch", "pad_sequences", "minibatches", "recurrent",
           "prefixed", "CELLS"]

#: cell names accepted by :func:`recurrent` (those of the kernels)
CELLS = ("rnn_tanh", "rnn_relu", "lstm", "gru")


class Grads(NamedTuple):
    """Result of a module's ``backward``."""
    dx: object        #: gradient of the input, shaped like it (None for Embedding's integers)
    dparams: dict     #: parameter name -> gradient, shaped like the parameter


def prefixed(prefix, named):
    """``{prefix + "." + name: value}`` from a module (its ``named_parameters()``) or a dict.

    Joins the parameters (or gradients) of several modules into the one flat
    dict that :class:`Adam` and :func:`clip_grad_norm` take.
    """
    items = named.items() if isinstance(named, Mapping) else named.named_parameters()
    return {f"{prefix}.{name}": value for name, value in items}


def recurrent(cell, input_size, hidden_size, **kw):
    """``fastrnn.RNN``/``LSTM``/``GRU`` for a cell name of :data:`CELLS`.

    ``kw`` goes to the layer (``num_layers``, ``bidirectional``, ``dtype``,
    ``backend``, ``rng``, ...).
    """
    if cell not in CELLS:
        raise ValueError(f"cell must be one of {CELLS}, got {cell!r}")
    if cell.startswith("rnn_"):
        return RNN(input_size, hidden_size, nonlinearity=cell[len("rnn_"):], **kw)
    return {"lstm": LSTM, "gru": GRU}[cell](input_size, hidden_size, **kw)


def _tokens(name, tokens, num_embeddings):
    """``tokens`` as an integer array with every value in [0, num_embeddings)."""
    a = v.as_array(name, tokens)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array of token ids, got dtype {a.dtype}")
    if a.size and (a.min() < 0 or a.max() >= num_embeddings):
        raise ValueError(f"{name} must hold token ids in [0, {num_embeddings}) "
                         f"(num_embeddings={num_embeddings}), got values in "
                         f"[{a.min()}, {a.max()}]")
    return a


def _features(name, x, n, dtype, what):
    """``x`` as a float array of ``dtype`` whose last axis has ``n`` features."""
    a = v.as_array(name, x)
    if a.dtype != dtype:
        raise TypeError(f"{name} must have the module's dtype {dtype}, got dtype {a.dtype}")
    if a.ndim < 1 or a.shape[-1] != n:
        raise ValueError(f"{name} must have shape (..., {what}={n}), got shape {a.shape}")
    return a


class Embedding:
    """A lookup table of vectors, ``y = weight[tokens]`` (``torch.nn.Embedding``).

    Parameters
    ----------
    num_embeddings, embedding_dim : int
        Vocabulary size V and vector size E; ``weight`` is ``(V, E)``, drawn
        from N(0, 1) as in PyTorch.
    padding_idx : int, optional
        A token whose vector stays zero: its row starts at zero and gets no
        gradient.
    dtype : np.float32 or np.float64
    rng : seed or numpy.random.Generator, optional
    """

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, *, dtype=np.float32,
                 rng=None):
        self.num_embeddings = _positive_int("num_embeddings", num_embeddings)
        self.embedding_dim = _positive_int("embedding_dim", embedding_dim)
        if padding_idx is not None and not 0 <= padding_idx < self.num_embeddings:
            raise ValueError(f"padding_idx must be None or in [0, {self.num_embeddings}), "
                             f"got {padding_idx!r}")
        self.padding_idx = padding_idx
        self.dtype = _dtype_of(dtype)
        gen = np.random.default_rng(rng)
        self.weight = gen.standard_normal((self.num_embeddings, self.embedding_dim)).astype(
            self.dtype)
        if padding_idx is not None:
            self.weight[padding_idx] = 0

    def named_parameters(self):
        return iter([("weight", self.weight)])

    def forward(self, tokens):
        """Look the tokens up.

        Parameters
        ----------
        tokens : (...) int array
            Ids in ``[0, num_embeddings)``, any shape, e.g. ``(T, B)``.

        Returns
        -------
        y : (..., E) array of the module's dtype
        """
        return self.weight[_tokens("tokens", tokens, self.num_embeddings)]

    __call__ = forward

    def backward(self, tokens, dy):
        """Gradient of ``weight``, given the tokens of the forward and ``dy`` (..., E).

        A token that occurs several times collects the sum of its rows of
        ``dy``; ``padding_idx`` gets none. ``dx`` is None: the input is integers.
        """
        tokens = _tokens("tokens", tokens, self.num_embeddings)
        dy = _features("dy", dy, self.embedding_dim, self.dtype, "embedding_dim")
        if dy.shape != tokens.shape + (self.embedding_dim,):
            raise ValueError(f"dy must have shape tokens.shape + (embedding_dim,) = "
                             f"{tokens.shape + (self.embedding_dim,)}, got shape {dy.shape}")
        dweight = np.zeros_like(self.weight)
        # add.at, not dweight[tokens] += dy: the latter keeps one row per repeated token
        np.add.at(dweight, tokens.ravel(), dy.reshape(-1, self.embedding_dim))
        if self.padding_idx is not None:
            dweight[self.padding_idx] = 0
        return Grads(None, {"weight": dweight})

    def __repr__(self):
        pad = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        return f"Embedding({self.num_embeddings}, {self.embedding_dim}{pad})"


class Linear:
    """An affine map of the last axis, ``y = x @ weight.T + bias`` (``torch.nn.Linear``).

    Parameters
    ----------
    in_features, out_features : int
        ``weight`` is ``(out_features, in_features)``, ``bias`` ``(out_features,)``,
        both drawn from U(-1/sqrt(in_features), 1/sqrt(in_features)) as in PyTorch.
    bias : bool
    dtype : np.float32 or np.float64
    rng : seed or numpy.random.Generator, optional
    """

    def __init__(self, in_features, out_features, bias=True, *, dtype=np.float32, rng=None):
        self.in_features = _positive_int("in_features", in_features)
        self.out_features = _positive_int("out_features", out_features)
        self.dtype = _dtype_of(dtype)
        gen = np.random.default_rng(rng)
        k = 1.0 / math.sqrt(self.in_features)
        self.weight = gen.uniform(-k, k, (self.out_features, self.in_features)).astype(self.dtype)
        self.bias = (gen.uniform(-k, k, self.out_features).astype(self.dtype)
                     if v.flag("bias", bias) else None)

    def named_parameters(self):
        params = [("weight", self.weight)]
        return iter(params + ([("bias", self.bias)] if self.bias is not None else []))

    def forward(self, x):
        """``x`` (..., in_features) -> ``y`` (..., out_features), the module's dtype."""
        x = _features("x", x, self.in_features, self.dtype, "in_features")
        y = x @ self.weight.T
        if self.bias is not None:
            y += self.bias
        return y

    __call__ = forward

    def backward(self, x, dy):
        """Gradients given the ``x`` (..., in_features) of the forward and ``dy`` (..., out_features).

        Returns
        -------
        Grads
            ``dx`` (..., in_features); ``dparams`` ``weight`` and ``bias``.
        """
        x = _features("x", x, self.in_features, self.dtype, "in_features")
        dy = _features("dy", dy, self.out_features, self.dtype, "out_features")
        if dy.shape[:-1] != x.shape[:-1]:
            raise ValueError(f"dy must have shape x.shape[:-1] + (out_features,) = "
                             f"{x.shape[:-1] + (self.out_features,)}, got shape {dy.shape}")
        x2 = x.reshape(-1, self.in_features)           # every leading axis is a batch axis
        dy2 = dy.reshape(-1, self.out_features)
        dparams = {"weight": dy2.T @ x2}
        if self.bias is not None:
            dparams["bias"] = dy2.sum(axis=0)
        return Grads((dy2 @ self.weight).reshape(x.shape), dparams)

    def __repr__(self):
        extra = "" if self.bias is not None else ", bias=False"
        return f"Linear({self.in_features}, {self.out_features}{extra})"


def log_softmax(logits, axis=-1):
    """``log(softmax(logits))`` along ``axis``, computed without overflow.

    Subtracting the maximum first keeps every ``exp`` in (0, 1], so logits of
    any size give finite results.
    """
    logits = np.asarray(logits)
    shifted = logits - logits.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def cross_entropy(logits, target):
    """Softmax cross-entropy, the mean over the batch, and its gradient.

    ``torch.nn.functional.cross_entropy(logits, target)`` with the default mean
    reduction.

    Parameters
    ----------
    logits : (N, C) float array
        Unnormalised scores of N samples over C classes.
    target : (N,) int array
        Class index per sample, in ``[0, C)``.

    Returns
    -------
    loss : float
        ``-mean_n log softmax(logits[n])[target[n]]``.
    dlogits : (N, C) array of the dtype of logits
        ``(softmax(logits) - onehot(target)) / N``.
    """
    logits = v.as_array("logits", logits)
    if logits.dtype not in v.FLOAT_DTYPES:
        raise TypeError(f"logits must be float32 or float64, got dtype {logits.dtype}")
    if logits.ndim != 2 or logits.shape[0] == 0:
        raise ValueError(f"logits must have shape (N, C) with N >= 1, got shape {logits.shape}")
    N, C = logits.shape
    target = _tokens("target", target, C)
    if target.shape != (N,):
        raise ValueError(f"target must have shape (N,) = ({N},), one class per row of logits, "
                         f"got shape {target.shape}")
    logp = log_softmax(logits, axis=1)
    rows = np.arange(N)
    # float64 mean: a float32 sum over many samples would lose digits of the loss
    loss = -float(logp[rows, target].mean(dtype=np.float64))
    dlogits = np.exp(logp)
    dlogits[rows, target] -= 1
    dlogits /= N
    return loss, dlogits


def _named_arrays(name, params):
    """``params`` (a mapping or an iterable of ``(name, array)``) as a dict of float arrays."""
    items = dict(params.items() if isinstance(params, Mapping) else params)
    for key, p in items.items():
        if not isinstance(p, np.ndarray) or p.dtype not in v.FLOAT_DTYPES:
            raise TypeError(f"{name}[{key!r}] must be a float32 or float64 ndarray, "
                            f"got {type(p).__name__}")
    return items


class Adam:
    """Adam with PyTorch's update rule (``torch.optim.Adam``, ``amsgrad=False``).

    For each parameter ``p`` with gradient ``g``, at step ``t`` (from 1)::

        g = g + weight_decay * p                  (L2 penalty, as PyTorch's Adam)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g**2
        p -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    Parameters
    ----------
    params : dict or iterable of (name, array)
        The arrays to train; they are updated in place.
    lr : float
    betas : (float, float)
    eps : float
    weight_decay : float
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        self.params = _named_arrays("params", params)
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
        if not eps >= 0 or not weight_decay >= 0:
            raise ValueError(f"eps and weight_decay must be >= 0, got {eps!r} and "
                             f"{weight_decay!r}")
        self.lr, self.betas, self.eps, self.weight_decay = lr, tuple(betas), eps, weight_decay
        self.t = 0
        self.m = {k: np.zeros_like(p) for k, p in self.params.items()}
        self.v = {k: np.zeros_like(p) for k, p in self.params.items()}

    def step(self, grads):
        """Update every parameter in place from ``grads`` ``{name: gradient}``."""
        grads = _named_arrays("grads", grads)
        if grads.keys() != self.params.keys():
            missing = sorted(set(self.params) - set(grads))
            extra = sorted(set(grads) - set(self.params))
            raise ValueError(f"grads must have one entry per parameter; missing {missing}, "
                             f"unknown {extra}")
        self.t += 1
        b1, b2 = self.betas
        step_size = self.lr / (1 - b1 ** self.t)
        sqrt_bc2 = math.sqrt(1 - b2 ** self.t)
        for name, p in self.params.items():
            g = grads[name]
            if g.shape != p.shape:
                raise ValueError(f"grads[{name!r}] must have the parameter's shape {p.shape}, "
                                 f"got shape {g.shape}")
            if self.weight_decay:
                g = g + self.weight_decay * p
            m, v2 = self.m[name], self.v[name]
            m *= b1
            m += (1 - b1) * g
            v2 *= b2
            v2 += (1 - b2) * np.square(g)
            p -= step_size * m / (np.sqrt(v2) / sqrt_bc2 + self.eps)


def clip_grad_norm(grads, max_norm):
    """Scale the gradients in place so that their total L2 norm is at most ``max_norm``.

    ``torch.nn.utils.clip_grad_norm_``: the norm is taken over all gradients as
    one vector; if it exceeds ``max_norm``, every gradient is multiplied by
    ``max_norm / (norm + 1e-6)``.

    Parameters
    ----------
    grads : dict of arrays, or iterable of arrays
    max_norm : float

    Returns
    -------
    float
        The total norm before clipping.
    """
    arrays = list(grads.values()) if isinstance(grads, Mapping) else list(grads)
    if not max_norm > 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm!r}")
    # float64 sum of squares: float32 would lose the small terms next to large ones
    total = math.sqrt(sum(float(np.square(g, dtype=np.float64).sum()) for g in arrays))
    coef = max_norm / (total + 1e-6)
    if coef < 1:
        for g in arrays:
            g *= coef
    return total


class Batch(NamedTuple):
    """One mini-batch from :func:`minibatches`, time-major for fastrnn's layers."""
    x: np.ndarray          #: (T, B) tokens or (T, B, I) features; T the longest in the batch
    lengths: np.ndarray    #: (B,) valid steps per sequence; x is zero past them
    y: object              #: (B,) targets, or None
    index: np.ndarray      #: (B,) positions of the sequences in the data set


def as_padded(sequences, lengths=None, name="sequences"):
    """``(padded, lengths)`` from an array already padded or a list of sequences.

    A padded array is taken as it is (the caller checks its rank), with
    ``lengths`` checked or, when None, all T; a list is padded here and
    carries its own lengths, so passing ``lengths`` with it is an error.
    """
    if isinstance(sequences, np.ndarray):
        N, T = sequences.shape[:2]
        return sequences, (np.full(N, T, np.intp) if lengths is None
                           else v.lengths_array(lengths, T, N))
    if lengths is not None:
        raise ValueError(f"lengths is for a padded array {name}; a list of sequences "
                         "carries its own lengths")
    return pad_sequences(sequences, name=name)


def pad_sequences(sequences, *, dtype=None, name="sequences"):
    """Stack variable-length sequences into one zero-padded, batch-major array.

    Parameters
    ----------
    sequences : list of arrays
        N arrays ``(T_i,)`` (tokens) or ``(T_i, I)`` (features), T_i >= 0, all
        with the same trailing shape.
    dtype : dtype, optional
        Of the result; default: that of the first sequence.
    name : str
        Used in error messages.

    Returns
    -------
    padded : (N, T_max) or (N, T_max, I) array
        ``padded[n, :T_n]`` is ``sequences[n]``; the rest is zero.
    lengths : (N,) intp array
    """
    if isinstance(sequences, np.ndarray) or not hasattr(sequences, "__len__"):
        raise TypeError(f"{name} must be a list of arrays, got {type(sequences).__name__}")
    seqs = [v.as_array(f"{name}[{i}]", s) for i, s in enumerate(sequences)]
    if not seqs:
        raise ValueError(f"{name} must hold at least one sequence")
    trailing = seqs[0].shape[1:]
    for i, s in enumerate(seqs):
        if s.ndim not in (1, 2) or s.shape[1:] != trailing:
            raise ValueError(f"{name}[{i}] must have shape (T_i,) or (T_i, I), with the same "
                             f"trailing shape as {name}[0] {trailing}; got shape {s.shape}")
    lengths = np.array([len(s) for s in seqs], dtype=np.intp)
    dtype = seqs[0].dtype if dtype is None else np.dtype(dtype)
    padded = np.zeros((len(seqs), int(lengths.max())) + trailing, dtype)
    for i, s in enumerate(seqs):
        padded[i, :len(s)] = s
    return padded, lengths


def minibatches(sequences, y=None, *, lengths=None, batch_size=32, shuffle=False, rng=None):
    """Iterate over mini-batches of padded sequences, with their lengths.

    Parameters
    ----------
    sequences : list of arrays, or array
        N sequences ``(T_i,)``/``(T_i, I)`` (padded here), or an array already
        padded, batch-major ``(N, T)``/``(N, T, I)``.
    y : (N,) array, optional
        Targets, sliced along with the sequences.
    lengths : (N,) int array, optional
        Valid steps of a padded ``sequences`` (default: all T).
    batch_size : int
        The last batch holds the remainder.
    shuffle : bool
        Random order; otherwise the data set's order.
    rng : seed or numpy.random.Generator, optional
        Draws the order. Pass one Generator to every epoch's call to get a
        new order each epoch (a seed gives the same order every call).

    Yields
    ------
    Batch
        ``x`` time-major ``(T_b, B)``/``(T_b, B, I)``, cut to the longest
        sequence of the batch, zero past each length.
    """
    if isinstance(sequences, np.ndarray) and sequences.ndim not in (2, 3):
        raise ValueError("sequences must be padded (N, T) or (N, T, I), or a list of "
                         f"arrays; got shape {sequences.shape}")
    padded, lengths = as_padded(sequences, lengths)
    N = len(padded)
    if y is not None:
        y = np.asarray(y)
        if y.shape[:1] != (N,):
            raise ValueError(f"y must have one entry per sequence, ({N},), got shape {y.shape}")
    batch_size = _positive_int("batch_size", batch_size)
    order = np.random.default_rng(rng).permutation(N) if shuffle else np.arange(N)
    for start in range(0, N, batch_size):
        idx = order[start:start + batch_size]
        lb = lengths[idx]
        x = padded[idx, :int(lb.max(initial=0))]
        # zero past the lengths, whatever the caller's padding held (np.where copies)
        valid = np.arange(x.shape[1])[None, :] < lb[:, None]
        x = np.where(valid.reshape(valid.shape + (1,) * (x.ndim - 2)), x, x.dtype.type(0))
        yield Batch(np.ascontiguousarray(x.swapaxes(0, 1)), lb,
                    None if y is None else y[idx], idx)
