"""fastrnn: fused LSTM, GRU and vanilla RNN kernels (forward and BPTT) for NumPy."""
from ._backends import available_backends
from ._buffers import empty_cache, set_cache_limit
from ._parallel import get_num_threads, set_num_threads
from .interop import from_onnx, from_torch, to_onnx, to_torch
from .kernels import (
    LSTMGrads,
    LSTMOutput,
    RNNGrads,
    RNNOutput,
    Workspace,
    gru_backward,
    gru_forward,
    lstm_backward,
    lstm_forward,
    rnn_backward,
    rnn_forward,
)
from .classifier import SequenceClassifier
from .layers import GRU, LSTM, RNN
from .frozen import Frozen

__version__ = "0.1.0"

__all__ = [
    "available_backends", "get_num_threads", "set_num_threads",
    "empty_cache", "set_cache_limit",
    "rnn_forward", "rnn_backward",
    "lstm_forward", "lstm_backward",
    "gru_forward", "gru_backward",
    "RNNOutput", "LSTMOutput", "RNNGrads", "LSTMGrads", "Workspace",
    "RNN", "LSTM", "GRU", "Frozen",
    "SequenceClassifier",
    "from_torch", "to_torch", "to_onnx", "from_onnx",
]
