"""The registry of kernel backends.

A backend is a module with two functions over validated, C-contiguous arrays:

``forward(cell, x, state0, params, lengths, reverse, training)``
    -> ``(y, state_n, data)``; ``data`` is whatever its ``backward`` needs
    (None unless ``training``).
``backward(cell, data, dy, dstate_n)``
    -> ``(dx, dstate0, dparams)``; ``dy`` and entries of ``dstate_n`` may be None
    (meaning zero).

The native backends are registered wrapped in ``_parallel.SplitBackend``,
which runs large batches in parts on several cores. Their ``forward`` also
takes ``y=``, the (T, B, H) array to write the output into (a part writes
its rows of the whole batch's output), and their ``backward`` accepts a
``dy`` whose steps are further apart than B*H (a part's rows of the whole
batch's dy, read in place; each step's rows contiguous). They also have
``ForwardCall(cell, dtype, T, B, params, reverse, training, **options)``,
``forward`` with its decisions and operands made once, which a frozen layer
keeps for each shape (``_cython_backend.ForwardCall``).

``cell`` is one of ``"rnn_tanh"``, ``"rnn_relu"``, ``"lstm"``, ``"gru"``; ``params`` is
``(weight_ih, weight_hh, bias_ih, bias_hh)`` in PyTorch's layout.
"""
import importlib

from ._parallel import SplitBackend

# fastest first: "auto" takes the first one that loads
#: backends whose calls split large batches over threads (see _parallel)
_SPLIT = ("cython", "numba")
_MODULES = {
    "cython": "fastrnn._cython_backend",
    "numba": "fastrnn._numba_backend",
    "reference": "fastrnn._reference_backend",
}
_loaded = {}
_errors = {}
_auto = None


def _load(name):
    if name in _loaded:
        return _loaded[name]
    if name in _errors:
        return None
    try:
        module = importlib.import_module(_MODULES[name])
        if name in _SPLIT:
            module = SplitBackend(module)
    except Exception as exc:  # a missing compiler, numba or build product
        _errors[name] = f"{type(exc).__name__}: {exc}"
        return None
    _loaded[name] = module
    return module


def available_backends():
    """The names of the backends that work on this machine, fastest first."""
    return [name for name in _MODULES if _load(name) is not None]


def get(name):
    """The backend module called ``name`` (``"auto"``: the fastest available)."""
    if not isinstance(name, str):
        raise TypeError(f"backend must be a str, got {type(name).__name__}")
    if name == "auto":
        global _auto
        if _auto is None:           # loading is tried once per backend: the choice is final
            _auto = _loaded[available_backends()[0]]
        return _auto
    if name not in _MODULES:
        raise ValueError(f"backend must be 'auto' or one of {sorted(_MODULES)}, got {name!r}")
    module = _load(name)
    if module is None:
        raise RuntimeError(f"backend {name!r} is not available on this machine: {_errors[name]}")
    return module


def name_of(module):
    return next(n for n, m in _loaded.items() if m is module)
