"""Keras weight layout: ``get_weights()`` / ``set_weights()`` lists.

Per direction: ``kernel`` (I, G*H), ``recurrent_kernel`` (H, G*H) and, with
``use_bias``, ``bias``:

- ``LSTM``: gate order i, f, c, o (PyTorch's); ``bias`` (4H,) = b_ih + b_hh.
- ``GRU(reset_after=True)``: gate order z, r, h; ``bias`` (2, 3H) = [input bias,
  recurrent bias] (the recurrent one sits inside ``r * (.)``, as PyTorch's b_hn).
- ``SimpleRNN``: ``bias`` (H,) = b_ih + b_hh.
- ``Bidirectional(..., merge_mode="concat")``: the forward layer's list, then
  the backward layer's.

Keras adds the two LSTM/RNN biases into one, so importing puts it all in
``bias_ih`` and zeroes ``bias_hh`` (the same function).
"""
import numpy as np

from ._gates import ORDERS, check_array, check_layer_index, family, inverse, names, \
    no_projection, reorder


def keras_weights(layer, k=0):
    """Layer ``k``'s weights as Keras ``get_weights()``: ``[kernel, recurrent_kernel, bias]``
    (without ``bias`` if ``layer.bias`` is False), forward then backward direction."""
    no_projection(layer, "Keras")
    k = check_layer_index(layer, k)
    fam = family(layer)
    order = ORDERS["keras"][fam]
    out = []
    for d in range(layer.num_directions):
        n = names(layer, k, d)
        p = layer._params
        out.append(reorder(p[n["weight_ih"]], order).T.copy())
        out.append(reorder(p[n["weight_hh"]], order).T.copy())
        if layer.bias:
            b_ih, b_hh = reorder(p[n["bias_ih"]], order), reorder(p[n["bias_hh"]], order)
            out.append(np.stack([b_ih, b_hh]) if fam == "gru" else b_ih + b_hh)
    return out


def load_keras_weights(layer, weights, k=0):
    """Set layer ``k`` from a Keras ``get_weights()`` list (see :func:`keras_weights`).

    A GRU must come from ``reset_after=True`` (bias of shape (2, 3H)); Keras's
    ``reset_after=False`` GRU computes a different function.
    """
    no_projection(layer, "Keras")
    k = check_layer_index(layer, k)
    fam = family(layer)
    inv = inverse(ORDERS["keras"][fam])
    weights = list(weights)
    per_dir = 3 if layer.bias else 2
    D = layer.num_directions
    if len(weights) != per_dir * D:
        raise ValueError(f"expected {per_dir * D} arrays ([kernel, recurrent_kernel"
                         + (", bias" if layer.bias else "") + "]"
                         + (" for the forward then the backward layer" if D == 2 else "")
                         + f"), got {len(weights)}")
    G, H = layer._cell.n_gates, layer.hidden_size
    I = layer.input_size if k == 0 else layer.output_size * D
    values = {}
    for d in range(D):
        n = names(layer, k, d)
        w = weights[d * per_dir:(d + 1) * per_dir]
        which = " (backward layer)" if d else ""
        kernel = check_array("kernel" + which, w[0], (I, G * H))
        recurrent = check_array("recurrent_kernel" + which, w[1], (H, G * H))
        values[n["weight_ih"]] = reorder(kernel.T, inv)
        values[n["weight_hh"]] = reorder(recurrent.T, inv)
        if layer.bias:
            if fam == "gru":
                if np.shape(w[2]) == (G * H,):
                    raise ValueError("this GRU bias has shape (3H,): it comes from Keras "
                                     "reset_after=False, a different function; only "
                                     "reset_after=True (bias (2, 3H)) matches PyTorch's GRU")
                bias = check_array("bias" + which, w[2], (2, G * H))
                values[n["bias_ih"]] = reorder(bias[0], inv)
                values[n["bias_hh"]] = reorder(bias[1], inv)
            else:
                bias = check_array("bias" + which, w[2], (G * H,))
                values[n["bias_ih"]] = reorder(bias, inv)
                values[n["bias_hh"]] = np.zeros(G * H)
    layer.load_state_dict(values, strict=False)
