"""fastrnn layers to and from torch.nn.RNN / LSTM / GRU (torch imported lazily)."""
import warnings

import numpy as np

_TORCH_MODES = {"RNN_TANH": "rnn_tanh", "RNN_RELU": "rnn_relu", "LSTM": "lstm", "GRU": "gru"}


def _import_torch():
    try:
        import torch
    except ImportError as exc:
        raise ImportError("PyTorch interop needs torch; install the CPU wheel "
                          "(pip install torch --index-url https://download.pytorch.org/whl/cpu)"
                          ) from exc
    return torch


def from_torch(module, *, backend="auto", dtype=None):
    """A fastrnn layer with the options and a copy of the weights of ``module``.

    Parameters
    ----------
    module : torch.nn.RNN, torch.nn.LSTM or torch.nn.GRU
    backend : str
        The new layer's backend.
    dtype : np.float32 or np.float64, optional
        Default: the module's dtype, which must then be float32 or float64.
    """
    torch = _import_torch()
    from .. import layers
    if not isinstance(module, torch.nn.RNNBase) \
            or getattr(module, "mode", None) not in _TORCH_MODES:
        raise TypeError("module must be a torch.nn.RNN, LSTM or GRU, got "
                        f"{type(module).__name__}")
    mode = _TORCH_MODES[module.mode]
    if dtype is None:
        tdtype = next(module.parameters()).dtype
        if tdtype not in (torch.float32, torch.float64):
            raise TypeError(f"the module's parameters are {tdtype}; fastrnn computes in float32 "
                            "or float64: pass dtype=np.float32 to convert")
        dtype = np.float32 if tdtype == torch.float32 else np.float64
    kw = dict(num_layers=module.num_layers, bias=module.bias, batch_first=module.batch_first,
              dropout=float(module.dropout), bidirectional=module.bidirectional,
              dtype=dtype, backend=backend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # torch already warned about dropout, if at all
        if mode == "lstm":
            layer = layers.LSTM(module.input_size, module.hidden_size,
                                proj_size=module.proj_size, **kw)
        elif mode == "gru":
            layer = layers.GRU(module.input_size, module.hidden_size, **kw)
        else:
            layer = layers.RNN(module.input_size, module.hidden_size,
                               nonlinearity=mode[len("rnn_"):], **kw)
    layer.load_state_dict({k: t.detach().cpu().to(torch.float64).numpy()
                           for k, t in module.state_dict().items()})
    return layer


def to_torch(layer):
    """A ``torch.nn.RNN``/``LSTM``/``GRU`` with the options and a copy of the weights of ``layer``.

    The module is in training mode, as a new PyTorch module (it matters only
    for dropout); call ``.eval()`` for inference.
    """
    torch = _import_torch()
    kw = dict(num_layers=layer.num_layers, bias=layer.bias, batch_first=layer.batch_first,
              dropout=layer.dropout, bidirectional=layer.bidirectional,
              dtype=torch.float32 if layer.dtype == np.float32 else torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if layer.mode == "lstm":
            module = torch.nn.LSTM(layer.input_size, layer.hidden_size,
                                   proj_size=layer.proj_size, **kw)
        elif layer.mode == "gru":
            module = torch.nn.GRU(layer.input_size, layer.hidden_size, **kw)
        else:
            module = torch.nn.RNN(layer.input_size, layer.hidden_size,
                                  nonlinearity=layer.nonlinearity, **kw)
    module.load_state_dict({k: torch.from_numpy(np.array(a)) for k, a in layer.named_parameters()})
    return module
