"""Shared fixtures and helpers for the fastrnn test suite.

Every backend runs through the same tests: the ``backend`` fixture is
parametrised over ``fastrnn.available_backends()``, so a backend that loads is
tested with no change here. A backend that fails to load is *not* tested; the
report header says why, and ``FASTRNN_REQUIRE_BACKENDS=cython,numba`` turns a
missing backend into a test failure (see ``test_backends.py``).

The helpers are imported by the test modules (``from conftest import ...``).
"""
import numpy as np
import pytest

import fastrnn
from fastrnn import _backends

CELLS = ("rnn_tanh", "rnn_relu", "lstm", "gru")
N_GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}
STATE_NAMES = {"rnn_tanh": ("h",), "rnn_relu": ("h",), "lstm": ("h", "c"), "gru": ("h",)}
PARAM_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
DTYPES = (np.float32, np.float64)

# Comparison tolerance relative to the max-abs scale of the expected array
# (see assert_close). Justified where used (test_backends.py).
RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-10}


def pytest_report_header(config):
    lines = [f"fastrnn backends under test: {', '.join(fastrnn.available_backends())}"]
    lines += [f"fastrnn backend {n!r} not available: {e}" for n, e in _backends._errors.items()]
    return lines


@pytest.fixture(params=fastrnn.available_backends(), ids=str)
def backend(request):
    """The name of a backend that loads on this machine."""
    return request.param


@pytest.fixture
def two_threads():
    """fastrnn at two threads for the test; the count restored after."""
    saved = fastrnn.get_num_threads()
    fastrnn.set_num_threads(2)
    yield
    fastrnn.set_num_threads(saved)


@pytest.fixture
def torch():
    """torch at one thread (skips the test without torch); its setting restored after."""
    torch = pytest.importorskip("torch")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(n)


# ----------------------------------------------------------------- generators

def make_params(cell, I, H, dtype=np.float64, seed=0):
    """Random ``(weight_ih, weight_hh, bias_ih, bias_hh)`` in PyTorch's layout.

    Drawn from U(-1/sqrt(H), 1/sqrt(H)), PyTorch's default initialisation.
    """
    rng = np.random.default_rng(seed)
    G = N_GATES[cell]
    k = 1.0 / np.sqrt(H)
    shapes = [(G * H, I), (G * H, H), (G * H,), (G * H,)]
    return tuple(rng.uniform(-k, k, s).astype(dtype) for s in shapes)


def make_states(cell, B, H, dtype=np.float64, seed=1, scale=0.5):
    """Random initial states: ``(h0,)`` or ``(h0, c0)``."""
    rng = np.random.default_rng(seed)
    return tuple((scale * rng.standard_normal((B, H))).astype(dtype)
                 for _ in STATE_NAMES[cell])


def make_x(T, B, I, dtype=np.float64, seed=2):
    return np.random.default_rng(seed).standard_normal((T, B, I)).astype(dtype)


def make_lengths(kind, T, B, seed=3):
    """``None``, ``"full"`` (all T) or ``"mixed"``: unsorted, with a 0 and a T once B >= 3."""
    if kind is None:
        return None
    if kind == "full":
        return np.full(B, T, dtype=np.int64)
    assert kind == "mixed"
    extra = np.random.default_rng(seed).integers(0, T + 1, max(B - 3, 0))
    return np.array([T // 2, 0, T] + list(extra), dtype=np.int64)[:B]


def cast(arrays, dtype):
    """Cast a tuple of arrays (None entries kept) to ``dtype``."""
    return tuple(None if a is None else np.asarray(a).astype(dtype) for a in arrays)


# ------------------------------------------------------- uniform public calls

def run_forward(cell, backend, x, states, params, **kw):
    """Call the public forward for ``cell``; returns its NamedTuple result.

    ``states`` is ``(h0,)`` or ``(h0, c0)``; ``params`` is
    ``(weight_ih, weight_hh, bias_ih, bias_hh)``; ``kw`` goes through
    (``lengths=``, ``reverse=``, ``training=``).
    """
    if cell == "lstm":
        return fastrnn.lstm_forward(x, *states, *params, backend=backend, **kw)
    if cell == "gru":
        return fastrnn.gru_forward(x, *states, *params, backend=backend, **kw)
    return fastrnn.rnn_forward(x, *states, *params, backend=backend,
                               nonlinearity=cell[len("rnn_"):], **kw)


def run_backward(cell, ws, dy, dstates=None):
    """Call the public backward for ``cell``; ``dstates`` is ``(dh_n,)``/``(dh_n, dc_n)`` or None."""
    if dstates is None:
        dstates = (None,) * len(STATE_NAMES[cell])
    fn = {"lstm": fastrnn.lstm_backward, "gru": fastrnn.gru_backward}.get(cell, fastrnn.rnn_backward)
    return fn(ws, dy, *dstates)


def run_on_threads(cell, backend, x, states, params, lengths, reverse, training, threads, dy,
                   **kw):
    """``[forward's result]`` on ``threads`` of fastrnn's threads, and in
    training the backward's gradients after it (the thread count stays set)."""
    from fastrnn import _parallel
    _parallel.set_num_threads(threads)
    out = run_forward(cell, backend, x, states, params, lengths=lengths, reverse=reverse,
                      training=training, **kw)
    return [out, run_backward(cell, out.workspace, dy)] if training else [out]


def assert_runs_equal(a, b, **kw):
    """Two ``run_on_threads`` results: equal bit for bit, or close with
    ``exact=False`` (keywords of ``assert_results_equal``)."""
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert_results_equal(ra, rb, **kw)


def assert_two_threads_match(cell, x, states, params, lengths, reverse, training, dy, dtype,
                             **kw):
    """The Cython backend on two of fastrnn's threads against one, bit for
    bit, and against the reference (``RTOL``), with the arrays (float64)
    cast to ``dtype`` for the Cython calls; ``kw``: more forward arrays
    (``weight_hr``)."""
    def cast(a):
        return None if a is None else a.astype(dtype)
    args = (cast(x), tuple(map(cast, states)), tuple(map(cast, params)), lengths, reverse,
            training)
    kw_cast = {k: cast(v) for k, v in kw.items()}
    two = run_on_threads(cell, "cython", *args, 2, cast(dy), **kw_cast)
    assert_runs_equal(two, run_on_threads(cell, "cython", *args, 1, cast(dy), **kw_cast))
    expected = run_on_threads(cell, "reference", x, states, params, lengths, reverse, training,
                              2, dy, **kw)
    assert_runs_equal(two, expected, exact=False, rtol=RTOL[np.dtype(dtype)])


def final_states(out):
    """``(h_n,)`` or ``(h_n, c_n)`` of a forward result."""
    return tuple(out)[1:-1]


def state0_grads(grads):
    """``(dh0,)`` or ``(dh0, dc0)`` of a backward result."""
    return tuple(v for k, v in grads._asdict().items() if k in ("dh0", "dc0"))


def param_grads(grads):
    """``(dweight_ih, dweight_hh, dbias_ih, dbias_hh)`` of a backward result
    (an LSTM's ``dweight_hr`` is not among them)."""
    return tuple(getattr(grads, "d" + name) for name in PARAM_NAMES)


def arrays_of(result):
    """A forward or backward result as ``{field: array}``, without the workspace,
    and without an LSTM's ``dweight_hr`` when there is no projection (None)."""
    return {k: v for k, v in result._asdict().items()
            if k != "workspace" and not (k == "dweight_hr" and v is None)}


# ------------------------------------------------------------------ compare

def assert_close(actual, expected, rtol, name=""):
    """``|actual - expected| <= rtol * max|expected|`` elementwise; same shape, NaNs in the same places.

    Scaling by the array's max-abs value (not elementwise) is the right test for
    sums of products, whose absolute error grows with the magnitude of the
    terms, not of the (possibly cancelled) result. An all-zero ``expected``
    uses scale 1.
    """
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    finite = expected[np.isfinite(expected)]
    scale = float(np.max(np.abs(finite))) if finite.size else 0.0
    scale = scale if scale > 0 else 1.0
    np.testing.assert_allclose(actual.astype(np.float64), expected.astype(np.float64),
                               rtol=0, atol=rtol * scale, err_msg=name)


def assert_results_equal(a, b, exact=True, rtol=0.0):
    """Two forward or two backward results: the same fields, arrays equal (or close)."""
    a, b = arrays_of(a), arrays_of(b)
    assert a.keys() == b.keys()
    for k in a:
        if a[k] is None or b[k] is None:
            assert a[k] is None and b[k] is None, k
        elif exact:
            assert a[k].dtype == b[k].dtype, k
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        else:
            assert_close(a[k], b[k], rtol, k)


# ------------------------------------------- LSTM with a projection (proj_size)
# params are (weight_ih, weight_hh, bias_ih, bias_hh, weight_hr); h is (B, P), c (B, H).

def make_projected_params(I, H, P, dtype=np.float64, seed=0):
    """Random parameters of an LSTM with PyTorch's ``proj_size=P``:
    weight_hh is (4H, P) and weight_hr (P, H); all from U(-1/sqrt(H), 1/sqrt(H))."""
    rng = np.random.default_rng(seed)
    k = 1.0 / np.sqrt(H)
    shapes = [(4 * H, I), (4 * H, P), (4 * H,), (4 * H,), (P, H)]
    return tuple(rng.uniform(-k, k, s).astype(dtype) for s in shapes)


def make_projected_states(B, H, P, dtype=np.float64, seed=1, scale=0.5):
    """Random ``(h0 (B, P), c0 (B, H))``."""
    rng = np.random.default_rng(seed)
    return tuple((scale * rng.standard_normal(s)).astype(dtype) for s in ((B, P), (B, H)))


def projected_case(T=5, B=3, I=11, H=24, P=7):
    """A small projected LSTM call with odd sizes and mixed lengths: ``(arrays,
    lengths)``, ``arrays = (x, h0, c0, *params, dy)`` in float64."""
    arrays = (make_x(T, B, I), *make_projected_states(B, H, P), *make_projected_params(I, H, P),
              make_x(T, B, P, seed=7))
    return arrays, make_lengths("mixed", T, B)


def run_projected_forward(backend, x, states, params, **kw):
    """``lstm_forward`` with ``params = (weight_ih, weight_hh, bias_ih, bias_hh, weight_hr)``."""
    return run_forward("lstm", backend, x, states, params[:4], weight_hr=params[4], **kw)


def record_keyword(monkeypatch, module, function, keyword, default):
    """Wrap ``module.function`` so that each call appends the value of its
    ``keyword`` argument (``default`` when not passed) to the list returned:
    which way a backend was asked to run a call (parts, unit split)."""
    calls = []
    real = getattr(module, function)

    def spy(*args, **kw):
        calls.append(kw.get(keyword, default))
        return real(*args, **kw)
    monkeypatch.setattr(module, function, spy)
    return calls


def finite_difference_gradient(f, a, eps):
    """Central-difference gradient of the scalar ``f()`` with respect to the array
    ``a``, which is moved in place one element at a time and restored."""
    grad = np.zeros_like(a)
    for idx in np.ndindex(a.shape):
        old = a[idx]
        a[idx] = old + eps
        up = f()
        a[idx] = old - eps
        down = f()
        a[idx] = old
        grad[idx] = (up - down) / (2 * eps)
    return grad


# ------------------------------------------------------------------ layers

def make_layer(cell, *args, **kw):
    """``fastrnn.RNN``/``LSTM``/``GRU`` for a cell name of conftest's CELLS."""
    if cell.startswith("rnn_"):
        return fastrnn.RNN(*args, nonlinearity=cell[4:], **kw)
    return {"lstm": fastrnn.LSTM, "gru": fastrnn.GRU}[cell](*args, **kw)


def states_of(h, cell):
    """``h_n``/``hx``-like value as a tuple of arrays."""
    return tuple(h) if cell == "lstm" else (h,)


def as_hx(states, cell):
    return tuple(states) if cell == "lstm" else states[0]


# ----------------------------------------------- results at the dtype's limits

def assert_representable_close(actual, expected, rtol, name=""):
    """assert_close against the float64 ``expected`` rounded to the dtype of
    ``actual``: the best a result in that dtype can be.

    In float32's normal range rounding moves a value by half an ulp (6e-8
    relative), nothing at RTOL. Below it a result can only be subnormal or
    zero (a state that decays for 70 steps reaches 1e-115 in float64), where
    the spacing of float32 is absolute, 1.4e-45: 64 of those units of
    difference are allowed on top of the tolerance (5e-322 in float64).
    Overflow is kept: a float64 value beyond float32's range must be inf.
    """
    actual = np.asarray(actual)
    dtype = actual.dtype
    floor = 64 * float(np.finfo(dtype).smallest_subnormal)
    with np.errstate(over="ignore"):
        expected = np.asarray(expected).astype(dtype)
    finite = expected[np.isfinite(expected)]
    scale = float(np.max(np.abs(finite), initial=0.0)) or 1.0
    assert_close(actual, expected, rtol + floor / scale, name)


def expected_panels(w, trans, panel):
    """What packing op(W) (K, N) into column panels must give, from NumPy:
    ``packed[p, k, j] = op(W)[k, p * panel + j]``, zero past column N, flat;
    op(W) = w.T when ``trans`` (w (N, K), PyTorch's layout), else w (K, N)."""
    op_w = w.T if trans else w
    K, N = op_w.shape
    n_panels = -(-N // panel)
    padded = np.zeros((K, n_panels * panel), w.dtype)
    padded[:, :N] = op_w
    return padded.reshape(K, n_panels, panel).transpose(1, 0, 2).ravel()


def run_script_alone(tmp_path, name, script, args=(), timeout=180):
    """stdout of ``script`` (Python source) run as ``name`` in a fresh
    interpreter with the fastrnn these tests import, installed or in place;
    the test fails if it does not finish in ``timeout`` seconds or exits
    non-zero. It runs in a session of its own, so that a hung process and
    any child of it, which would spin on a core for the rest of the run, die
    with it."""
    import os
    import signal
    import subprocess
    import sys
    path = tmp_path / name
    path.write_text(script)
    root = os.path.dirname(os.path.dirname(os.path.abspath(fastrnn.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [root, os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen([sys.executable, str(path), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"{name} did not finish in {timeout} s (hung)")
    assert proc.returncode == 0, stderr[-3000:]
    return stdout
