"""Gate-block orders of the other formats, and the per-layer parameter access they share."""
import numpy as np

# For each format and cell family: which PyTorch gate block goes in each slot.
# PyTorch: LSTM i,f,g,o (0..3); GRU r,z,n (0..2).
ORDERS = {
    "onnx": {"lstm": (0, 3, 1, 2), "gru": (1, 0, 2), "rnn": (0,)},    # i,o,f,c; z,r,h
    "keras": {"lstm": (0, 1, 2, 3), "gru": (1, 0, 2), "rnn": (0,)},   # i,f,c,o; z,r,h
}


def family(layer):
    """``"lstm"``, ``"gru"`` or ``"rnn"``."""
    return "rnn" if layer.mode.startswith("rnn_") else layer.mode


def reorder(a, order, axis=0):
    """Blocks of ``a`` along ``axis`` rearranged so that slot ``j`` holds block ``order[j]``."""
    blocks = np.split(np.asarray(a), len(order), axis=axis)
    return np.concatenate([blocks[i] for i in order], axis=axis)


def inverse(order):
    return tuple(int(i) for i in np.argsort(order))


def names(layer, k, d):
    """The parameter names of layer ``k``, direction ``d``: ``{kind: name}``."""
    return layer._names[k * layer.num_directions + d]


def check_layer_index(layer, k):
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) \
            or not 0 <= k < layer.num_layers:
        raise ValueError(f"layer index must be an int in [0, {layer.num_layers}), got {k!r}")
    return int(k)


def no_projection(layer, fmt):
    if layer.proj_size:
        raise ValueError(f"{fmt} has no LSTM projection: a layer with proj_size="
                         f"{layer.proj_size} cannot be converted")


def check_array(name, value, shape, what=""):
    a = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)
    if a.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}{what}, got shape {a.shape}")
    if a.dtype.kind not in "fiu":
        raise TypeError(f"{name} must hold real numbers, got dtype {a.dtype}")
    return a
