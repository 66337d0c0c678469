"""Weight and model interchange with PyTorch, ONNX and Keras.

PyTorch (torch is imported only when these are called)
    :func:`from_torch` ``(module) -> layer`` and :func:`to_torch` ``(layer) -> module``;
    ``layer.state_dict()`` / ``layer.load_state_dict()`` use PyTorch's names.
ONNX (the ``LSTM``, ``GRU`` with ``linear_before_reset=1`` and ``RNN`` operators)
    :func:`onnx_weights` / :func:`load_onnx_weights` convert one layer's
    ``W``, ``R``, ``B``; :func:`to_onnx` exports a whole layer stack as a model
    (optionally with ``initial_h``/``initial_c`` and ``sequence_lens`` inputs);
    :func:`from_onnx` builds a layer from a model's recurrent nodes.
Keras (``LSTM``, ``GRU`` with ``reset_after=True``, ``SimpleRNN``, and ``Bidirectional``)
    :func:`keras_weights` / :func:`load_keras_weights`: the ``get_weights()``
    list ``[kernel, recurrent_kernel, bias]`` (forward then backward layer).

Gate orders: PyTorch LSTM i,f,g,o; ONNX i,o,f,c; Keras i,f,c,o.
PyTorch GRU r,z,n; ONNX and Keras z,r,h.
"""
from ._keras import keras_weights, load_keras_weights
from ._onnx import from_onnx, load_onnx_weights, onnx_weights, to_onnx
from ._torch import from_torch, to_torch

__all__ = ["from_torch", "to_torch", "onnx_weights", "load_onnx_weights", "to_onnx",
           "from_onnx", "keras_weights", "load_keras_weights"]
