"""``python -m fastrnn demo``: train the lesson's sequence models on real data.

Two tasks, on data that needs no download:

- ``digits``: scikit-learn's 8x8 handwritten digits read as sequences, one
  pixel per step (T=64). A vanilla RNN, an LSTM and a GRU train with the same
  budget; the first pixels lie ~60 steps before the decision, which is where
  the vanilla RNN's gradient vanishes and the gated cells' does not.
- ``charlm``: a character-level language model on the standard library's own
  source, trained by truncated BPTT; it reports the test perplexity and writes
  a sample.

The table at the end gives each model's test result, training time and
throughput, and the speed-up of a training step over the ``reference``
backend, measured in the same run on a few batches. Progress bars go to
standard error, results to standard output.
"""
import argparse
import contextlib
import dataclasses
import os
import sys
import time
from typing import NamedTuple

import numpy as np

from . import _backends, _parallel
from ._progress import Progress
from .classifier import SequenceClassifier
from .nn import (CELLS, Adam, Embedding, Linear, clip_grad_norm, cross_entropy, log_softmax,
                 prefixed, recurrent)

TASKS = ("digits", "charlm")


# ---------------------------------------------------------------- settings

@dataclasses.dataclass(frozen=True)
class DigitsConfig:
    cells: tuple = ("rnn_tanh", "lstm", "gru")
    hidden: int = 64
    epochs: int = 50
    batch_size: int = 32
    lr: float = 1e-2
    test_fraction: float = 0.2
    max_train: int = None          # cap on training sequences (the quick configuration)


@dataclasses.dataclass(frozen=True)
class CharLMConfig:
    cells: tuple = ("lstm",)
    hidden: int = 256
    epochs: int = 5
    embedding: int = 32
    batch_size: int = 32           # parallel streams of text
    bptt: int = 100                # steps per window of truncated backpropagation
    lr: float = 5e-3
    max_grad_norm: float = 1.0
    text_chars: int = 400_000      # of standard-library source; the last 10 % is the test set
    sample_chars: int = 400
    temperature: float = 0.7


#: --quick: every step of the demo, in a few seconds (the test runs it)
QUICK = (DigitsConfig(hidden=16, epochs=1, max_train=256),
         CharLMConfig(hidden=32, epochs=1, bptt=32, batch_size=16, text_chars=20_000,
                      sample_chars=80))

#: training steps timed per backend for the speed-up column (plus one warm-up each)
SPEED_REPEATS = 3


class Row(NamedTuple):
    """One line of the results table."""
    task: str
    model: str
    metric: str
    value: float
    train_seconds: float
    throughput: float
    unit: str
    speedup: float                 # reference step time / chosen backend's; None if not measured
    reach: float = None            # mean |dloss/dx| at the first step / at the last (digits)


# -------------------------------------------------------------------- data

def digits_sequences(seed, test_fraction, max_train=None):
    """The 1797 digits as ``(N, 64, 1)`` float32 pixel sequences in [0, 1], split by ``seed``.

    Returns ``X_train, X_test, y_train, y_test`` (a stratified split).
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise SystemExit("the digits task needs scikit-learn, which bundles the data: "
                         "pip install \"fastrnn[demo]\" (or run --task charlm)") from None
    digits = load_digits()
    X = (digits.data / 16.0).astype(np.float32).reshape(-1, 64, 1)   # pixels are 0..16
    X_train, X_test, y_train, y_test = train_test_split(
        X, digits.target, test_size=test_fraction, random_state=seed, stratify=digits.target)
    if max_train is not None:
        X_train, y_train = X_train[:max_train], y_train[:max_train]
    return X_train, X_test, y_train, y_test


def stdlib_text(n_chars):
    """``n_chars`` characters of the standard library's source code.

    The public top-level modules (``*.py`` not starting with ``_``) of the
    directory that holds ``os.py``, in sorted order: the same text on every run
    of one Python installation.
    """
    root = os.path.dirname(os.__file__)
    parts, total = [], 0
    for name in sorted(os.listdir(root)):
        if name.endswith(".py") and not name.startswith("_"):
            with open(os.path.join(root, name), encoding="utf-8", errors="replace") as f:
                parts.append(f.read())
            total += len(parts[-1])
            if total >= n_chars:
                break
    return "".join(parts)[:n_chars]


def streams(ids, n_streams):
    """A 1-D id sequence cut into ``n_streams`` contiguous streams: ``(L, n_streams)``.

    Column b continues where column b-1 ends, so a window of rows is a batch of
    independent text pieces whose state carries over to the next window.
    """
    L = len(ids) // n_streams
    return np.ascontiguousarray(ids[:L * n_streams].reshape(n_streams, L).T)


# ------------------------------------------------------ progress and timing

class _EpochLoss:
    """The mean loss of the current epoch so far, for the progress bar."""

    def __init__(self):
        self.epoch, self.total, self.count = -1, 0.0, 0

    def add(self, epoch, loss, n):
        if epoch != self.epoch:
            self.epoch, self.total, self.count = epoch, 0.0, 0
        self.total += loss * n
        self.count += n
        return self.total / self.count


def speedup_over_reference(step, layers, backend, repeats=SPEED_REPEATS):
    """How many times faster ``step()`` runs with ``layers`` on ``backend`` than on "reference".

    The two backends alternate (A B A B ...), so load on the machine slows both
    alike; the ratio of the median times is returned. The layers' backend is
    restored afterwards. None when ``backend`` is the reference itself.
    """
    if _backends.name_of(_backends.get(backend)) == "reference":
        return None
    saved = [layer.backend for layer in layers]
    times = {backend: [], "reference": []}
    try:
        for i in range(repeats + 1):
            for name in times:
                for layer in layers:
                    layer.backend = name
                start = time.perf_counter()
                step()
                if i:                        # the first round warms up (JIT, caches)
                    times[name].append(time.perf_counter() - start)
    finally:
        for layer, b in zip(layers, saved):
            layer.backend = b
    return float(np.median(times["reference"]) / np.median(times[backend]))


# ------------------------------------------------------------------ digits

def run_digits(cfg, backend, seed, quiet=False, out=None):
    """Train each cell of ``cfg.cells`` on the digits; one :class:`Row` per cell.

    ``out``: a stream for a line about the data (None: silent).
    """
    X_train, X_test, y_train, y_test = digits_sequences(seed, cfg.test_fraction, cfg.max_train)
    _say(out, f"\ndigits: {len(X_train)} training and {len(X_test)} test sequences of 64 "
              f"pixels; {_count(cfg.epochs, 'epoch')} of batch {cfg.batch_size}, Adam lr {cfg.lr}")
    rows = []
    for cell in cfg.cells:
        clf = SequenceClassifier(cell=cell, hidden_size=cfg.hidden, epochs=cfg.epochs,
                                 batch_size=cfg.batch_size, lr=cfg.lr, backend=backend,
                                 random_state=seed)
        meter = _EpochLoss()
        with Progress(cfg.epochs * len(X_train), f"digits {cell:8s}", unit="seq",
                      enabled=not quiet) as bar:
            def show(s):
                bar.update(s.n_samples, epoch=f"{s.epoch + 1}/{cfg.epochs}",
                           loss=meter.add(s.epoch, s.loss, s.n_samples))
            start = time.perf_counter()
            clf.fit(X_train, y_train, callback=show)
            seconds = time.perf_counter() - start
        batch = slice(0, cfg.batch_size)
        speedup = speedup_over_reference(
            lambda: clf.loss_and_gradients(X_train[batch], y_train[batch]), [clf.encoder_],
            backend)
        rows.append(Row("digits (T=64)", f"{cell} H={cfg.hidden}", "accuracy",
                        clf.score(X_test, y_test), seconds,
                        cfg.epochs * len(X_train) / seconds, "seq/s", speedup,
                        gradient_reach(clf, X_test, y_test)))
    return rows


def gradient_reach(clf, X, y):
    """How much of the loss's gradient reaches the first step, relative to the last.

    The mean |d loss / d x_t| over the sequences at t = 0 divided by that at
    t = T-1. A gradient that vanishes on its way back through the steps makes
    this tiny, and the early pixels then barely affect the training.
    """
    _, _, dX = clf.loss_and_gradients(X, y, input_gradient=True)
    size = np.abs(dX).mean(axis=(0, 2))                  # (T,)
    return float(size[0] / size[-1])


# -------------------------------------------------------------- char LM

class CharLM:
    """A character-level language model: embedding -> recurrent layer -> linear at every step.

    Parameters
    ----------
    vocab_size : int
    cell : str
        One of :data:`fastrnn.nn.CELLS`.
    hidden_size, embedding_dim : int
    backend : str
    rng : numpy.random.Generator
    """

    def __init__(self, vocab_size, cell, hidden_size, embedding_dim, backend, rng):
        self.embedding = Embedding(vocab_size, embedding_dim, rng=rng)
        self.rnn = recurrent(cell, embedding_dim, hidden_size, backend=backend, rng=rng)
        self.head = Linear(hidden_size, vocab_size, rng=rng)

    def named_parameters(self):
        return iter({**prefixed("embedding", self.embedding), **prefixed("rnn", self.rnn),
                     **prefixed("head", self.head)}.items())

    def _logits(self, y):
        """Next-character logits ``(T*B, V)`` of the layer's output ``y`` (T, B, H)."""
        return self.head(y.reshape(-1, y.shape[-1]))

    def loss_and_grads(self, x, target, state=None):
        """Mean cross-entropy of predicting ``target`` from ``x``, its gradients, the final state.

        Parameters
        ----------
        x, target : (T, B) int arrays
            Characters and the characters that follow them.
        state : the layer's hx, optional
            Carried in from the previous window. The gradient stops there:
            that is the truncation of truncated BPTT.

        Returns
        -------
        loss : float
        grads : dict
            ``{name: gradient}`` with the names of :meth:`named_parameters`.
        state : the layer's h_n, to carry into the next window
        """
        y, state, ctx = self.rnn(self.embedding(x), state, training=True)
        flat = y.reshape(-1, y.shape[-1])
        loss, dlogits = cross_entropy(self.head(flat), target.ravel())
        g_head = self.head.backward(flat, dlogits)
        g_rnn = self.rnn.backward(ctx, g_head.dx.reshape(y.shape))
        g_emb = self.embedding.backward(x, g_rnn.dx)
        grads = {**prefixed("embedding", g_emb.dparams), **prefixed("rnn", g_rnn.dparams),
                 **prefixed("head", g_head.dparams)}
        return loss, grads, state

    def mean_nll(self, data):
        """Mean negative log-likelihood (nats per character) of the text ``data`` (L, B).

        Each column is read from a zero state in one inference call.
        """
        y, _ = self.rnn(self.embedding(data[:-1]))
        return cross_entropy(self._logits(y), data[1:].ravel())[0]

    def sample(self, prompt, n, temperature, rng):
        """``n`` ids drawn one at a time after the ids ``prompt``, at ``temperature``."""
        y, state = self.rnn(self.embedding(np.asarray(prompt)[:, None]))
        out = []
        for _ in range(n):
            p = np.exp(log_softmax(self._logits(y[-1:])[0].astype(np.float64) / temperature))
            out.append(int(rng.choice(len(p), p=p / p.sum())))
            y, state = self.rnn(self.embedding(np.array([[out[-1]]])), state)
        return out


class CharLMResult(NamedTuple):
    row: Row
    losses: list       #: training loss of every window, in order
    sample: str


def run_charlm(cfg, cell, backend, seed, quiet=False, out=None):
    """Train a character-level language model on the standard library's source.

    ``out``: a stream for a line about the data (None: silent).
    """
    text = stdlib_text(cfg.text_chars)
    chars = sorted(set(text))
    ids = _encode(text, chars)
    split = int(0.9 * len(ids))
    _say(out, f"\ncharlm: {len(text):,} characters of {os.path.dirname(os.__file__)}/*.py, "
              f"{len(chars)} distinct; the last 10 % is the test set; {_count(cfg.epochs, 'epoch')} of "
              f"{cfg.batch_size} streams x {cfg.bptt} steps, Adam lr {cfg.lr}")
    train = streams(ids[:split], cfg.batch_size)
    test = streams(ids[split:], cfg.batch_size)
    rng = np.random.default_rng(seed)
    lm = CharLM(len(chars), cell, cfg.hidden, cfg.embedding, backend, rng)
    opt = Adam(dict(lm.named_parameters()), lr=cfg.lr)
    windows = range(0, len(train) - 1, cfg.bptt)
    chars_seen = cfg.epochs * (len(train) - 1) * cfg.batch_size     # every row but the last
    losses = []
    meter = _EpochLoss()
    with Progress(chars_seen, f"charlm {cell:8s}", unit="char", enabled=not quiet) as bar:
        start = time.perf_counter()
        for epoch in range(cfg.epochs):
            state = None                                 # each epoch reads the text anew
            for i in windows:
                x, target = train[i:i + cfg.bptt], train[i + 1:i + 1 + cfg.bptt]
                x = x[:len(target)]
                loss, grads, state = lm.loss_and_grads(x, target, state)
                clip_grad_norm(grads, cfg.max_grad_norm)
                opt.step(grads)
                losses.append(loss)
                bar.update(x.size, epoch=f"{epoch + 1}/{cfg.epochs}",
                           loss=meter.add(epoch, loss, x.size))
        seconds = time.perf_counter() - start
    x0, t0 = train[:cfg.bptt], train[1:cfg.bptt + 1]
    speedup = speedup_over_reference(lambda: lm.loss_and_grads(x0, t0), [lm.rnn], backend)
    perplexity = float(np.exp(lm.mean_nll(test)))
    sample_rng = np.random.default_rng([seed, 1])       # apart from the training stream
    prompt = _encode("def ", chars) if set("def ") <= set(chars) else ids[:1]
    sample = "".join(chars[i] for i in np.concatenate(
        [prompt, lm.sample(prompt, cfg.sample_chars, cfg.temperature, sample_rng)]))
    row = Row(f"charlm ({len(text) // 1000} kB)", f"{cell} H={cfg.hidden}", "perplexity",
              perplexity, seconds, chars_seen / seconds, "char/s", speedup)
    return CharLMResult(row, losses, sample)


def _count(n, noun):
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _say(out, line):
    if out is not None:
        print(line, file=out, flush=True)


def _encode(text, chars):
    """Ids of the characters of ``text`` in the sorted alphabet ``chars``."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    return np.searchsorted(np.array([ord(c) for c in chars], dtype=np.uint32), codes)


# ------------------------------------------------------------------- output

def format_table(rows):
    """The results as a Markdown table."""
    lines = ["| task | model | test result | gradient reach | train time | throughput | "
             "training step vs reference |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        speed = "-" if r.speedup is None else f"{r.speedup:.1f}x"
        reach = "-" if r.reach is None else f"{r.reach:.2g}"
        value = f"{r.value:.1%}" if r.metric == "accuracy" else f"{r.value:.2f}"
        lines.append(f"| {r.task} | {r.model} | {r.metric} {value} | {reach} | "
                     f"{r.train_seconds:.3g} s | {r.throughput:,.0f} {r.unit} | {speed} |")
    return "\n".join(lines)


def _positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m fastrnn demo", description=__doc__.split("\n")[0].strip("`: "),
        epilog="Defaults: digits 50 epochs H=64 (rnn_tanh, lstm, gru); charlm 5 epochs "
               "H=256 (lstm).")
    parser.add_argument("--task", choices=TASKS + ("all",), default="all")
    parser.add_argument("--epochs", type=_positive, help="epochs of every model")
    parser.add_argument("--cell", nargs="+", choices=CELLS,
                        help="cells to train (each one is a row of the table)")
    parser.add_argument("--hidden", type=_positive, help="hidden size of every model")
    parser.add_argument("--backend", default="auto",
                        choices=["auto"] + list(_backends._MODULES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=_positive, default=_parallel.get_num_threads(),
                        help="threads fastrnn runs the halves of a batch on (default: the "
                             "cores; results are the same for any count). BLAS stays at one "
                             "thread: the demo's matrices are small, and idle BLAS workers "
                             "spinning on the same cores slow it down")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny configuration that runs every step in seconds")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def configs(args):
    """The two task configurations, with the command line's overrides."""
    digits, charlm = QUICK if args.quick else (DigitsConfig(), CharLMConfig())
    overrides = {k: v for k, v in [("epochs", args.epochs), ("hidden", args.hidden),
                                   ("cells", tuple(args.cell) if args.cell else None)]
                 if v is not None}
    return dataclasses.replace(digits, **overrides), dataclasses.replace(charlm, **overrides)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    digits_cfg, charlm_cfg = configs(args)
    chosen = _backends.name_of(_backends.get(args.backend))
    print(f"fastrnn demo: backend {chosen}"
          + (" (auto)" if args.backend == "auto" else "")
          + f", seed {args.seed}, {args.threads} thread(s)"
          + (", quick configuration" if args.quick else ""), flush=True)
    start = time.perf_counter()
    rows = []
    _parallel.set_num_threads(args.threads)
    with _parallel.limit_threads(1) or contextlib.nullcontext():
        if args.task in ("digits", "all"):
            rows += run_digits(digits_cfg, args.backend, args.seed, args.quiet, out=sys.stdout)
        if args.task in ("charlm", "all"):
            for cell in charlm_cfg.cells:
                result = run_charlm(charlm_cfg, cell, args.backend, args.seed, args.quiet,
                                    out=sys.stdout)
                rows.append(result.row)
                print(f"\ncharlm {result.row.model}, sample at temperature "
                      f"{charlm_cfg.temperature}:\n{'-' * 60}\n{result.sample}\n{'-' * 60}")
    print()
    print(format_table(rows))
    print(f"\ntotal {time.perf_counter() - start:.0f} s.\n"
          "Gradient reach: mean |d loss / d x| at the first step over that at the last, on "
          "the test set\n(near 0: the gradient vanishes before it reaches the early steps).\n"
          "Training step vs reference: the time of one step (forward, loss, backward) with the "
          f"recurrent layer\non 'reference' over the time on '{chosen}', median of "
          f"{SPEED_REPEATS}, same batch.")
    return 0
