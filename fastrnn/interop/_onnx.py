"""ONNX ``LSTM``, ``GRU`` and ``RNN`` operators: weights, model export and import.

One ONNX operator is one layer, both directions: ``W`` (D, G*H, I),
``R`` (D, G*H, H), ``B`` (D, 2*G*H) = [Wb, Rb]; gate orders LSTM i,o,f,c and
GRU z,r,h. The GRU must have ``linear_before_reset=1`` (PyTorch's GRU; the
ONNX default, 0, is a different function). Runtime inputs map one to one:
``X`` is ``x`` (time-major; ``layout=1`` is ``batch_first``), ``initial_h`` /
``initial_c`` are ``hx`` (the same (D, B, H) layout for a single layer with
``layout=0``; ``layout=1`` stores them (B, D, H): transpose axes 0 and 1), and
``sequence_lens`` is ``lengths`` (ONNX Runtime, like PyTorch, gives packed-sequence
results). ONNX has no LSTM projection.

The onnx package is imported only when these functions are called.
"""
import os

import numpy as np

from ._gates import ORDERS, check_array, check_layer_index, family, inverse, names, \
    no_projection, reorder

_OPS = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}
_DEFAULT_ACTIVATIONS = {"LSTM": ["sigmoid", "tanh", "tanh"], "GRU": ["sigmoid", "tanh"]}
#: ops a layer's output may pass through on its way to the next layer's input
_PASS_THROUGH = {"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Flatten"}
#: opset of the exported models (LSTM/GRU/RNN version 14) and a matching IR version
OPSET = 14
IR_VERSION = 8


def _import_onnx():
    try:
        import onnx
    except ImportError as exc:
        raise ImportError("ONNX interop needs the onnx package (pip install onnx)") from exc
    return onnx


def onnx_weights(layer, k=0):
    """Layer ``k`` as the ONNX operator's ``{"W", "R", "B"}`` inputs (no ``"B"`` without bias)."""
    no_projection(layer, "ONNX")
    k = check_layer_index(layer, k)
    order = ORDERS["onnx"][family(layer)]
    p = layer._params
    dirs = [names(layer, k, d) for d in range(layer.num_directions)]
    out = {"W": np.stack([reorder(p[n["weight_ih"]], order) for n in dirs]),
           "R": np.stack([reorder(p[n["weight_hh"]], order) for n in dirs])}
    if layer.bias:
        out["B"] = np.stack([np.concatenate([reorder(p[n["bias_ih"]], order),
                                             reorder(p[n["bias_hh"]], order)]) for n in dirs])
    return out


def load_onnx_weights(layer, W, R, B=None, k=0):
    """Set layer ``k`` from the ONNX operator's ``W``, ``R`` and (optional) ``B``.

    ``B=None`` means zero biases (the ONNX default); a layer with
    ``bias=False`` accepts only a zero (or absent) ``B``.
    """
    no_projection(layer, "ONNX")
    k = check_layer_index(layer, k)
    inv = inverse(ORDERS["onnx"][family(layer)])
    D, G, H = layer.num_directions, layer._cell.n_gates, layer.hidden_size
    I = layer.input_size if k == 0 else layer.output_size * D
    W = check_array("W", W, (D, G * H, I), " (num_directions, gates*hidden_size, input_size)")
    R = check_array("R", R, (D, G * H, H), " (num_directions, gates*hidden_size, hidden_size)")
    if B is not None:
        B = check_array("B", B, (D, 2 * G * H), " (num_directions, 2*gates*hidden_size)")
        if not layer.bias and np.any(B != 0):
            raise ValueError("B is not zero but the layer has bias=False")
    values = {}
    for d in range(D):
        n = names(layer, k, d)
        values[n["weight_ih"]] = reorder(W[d], inv)
        values[n["weight_hh"]] = reorder(R[d], inv)
        if layer.bias:
            b = np.zeros(2 * G * H) if B is None else B[d]
            values[n["bias_ih"]] = reorder(b[:G * H], inv)
            values[n["bias_hh"]] = reorder(b[G * H:], inv)
    layer.load_state_dict(values, strict=False)


# ------------------------------------------------------------------- export

def to_onnx(layer, *, initial_states=False, sequence_lens=False, path=None):
    """The whole layer stack as an ONNX model (opset 14).

    Inputs: ``X`` (``(seq, batch, input_size)``, or ``(batch, seq, ...)`` with
    ``batch_first``); with ``initial_states``, ``initial_h`` (and for the LSTM
    ``initial_c``) shaped like ``hx``; with ``sequence_lens``, ``sequence_lens``
    (batch,) int32, fastrnn's ``lengths``. Outputs ``Y``, ``Y_h`` (and ``Y_c``)
    shaped as the layer's ``y``, ``h_n`` (and ``c_n``). Layers are chained as
    PyTorch exports them: ``Y (T, D, B, H) -> Transpose -> Reshape (T, B, D*H)``.

    Returns the ``onnx.ModelProto`` (also saved to ``path`` if given).
    """
    onnx = _import_onnx()
    from onnx import TensorProto, helper, numpy_helper
    no_projection(layer, "ONNX")
    fam = family(layer)
    op = _OPS[fam]
    lstm = fam == "lstm"
    L, D, H, I = layer.num_layers, layer.num_directions, layer.hidden_size, layer.input_size
    elem = TensorProto.FLOAT if layer.dtype == np.float32 else TensorProto.DOUBLE
    nodes, inits = [], []

    def const(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    x_dims = ["batch", "seq", I] if layer.batch_first else ["seq", "batch", I]
    inputs = [helper.make_tensor_value_info("X", elem, x_dims)]
    state_names = ["initial_h", "initial_c"] if lstm else ["initial_h"]
    if initial_states:
        inputs += [helper.make_tensor_value_info(s, elem, [L * D, "batch", H])
                   for s in state_names]
    if sequence_lens:
        inputs.append(helper.make_tensor_value_info("sequence_lens", TensorProto.INT32,
                                                    ["batch"]))
    x = "X"
    if layer.batch_first:
        nodes.append(helper.make_node("Transpose", ["X"], ["X_time_major"], perm=[1, 0, 2]))
        x = "X_time_major"
    const("reshape_TB_", np.array([0, 0, -1], np.int64))
    const("axis0", np.array([0], np.int64))
    finals = {s: [] for s in ("Y_h", "Y_c")[:len(state_names)]}
    for k in range(L):
        w = {key: const(f"{key}_l{k}", a.astype(layer.dtype))
             for key, a in onnx_weights(layer, k).items()}
        node_inputs = [x, w["W"], w["R"], w.get("B", ""),
                       "sequence_lens" if sequence_lens else ""]
        if initial_states and L > 1:
            const(f"start_l{k}", np.array([k * D], np.int64))
            const(f"end_l{k}", np.array([(k + 1) * D], np.int64))
        for s in state_names:
            if not initial_states:
                node_inputs.append("")
            elif L == 1:
                node_inputs.append(s)
            else:
                nodes.append(helper.make_node("Slice", [s, f"start_l{k}", f"end_l{k}", "axis0"],
                                              [f"{s}_l{k}"]))
                node_inputs.append(f"{s}_l{k}")
        while node_inputs[-1] == "":
            node_inputs.pop()
        attrs = dict(hidden_size=H, direction="bidirectional" if D == 2 else "forward")
        if fam == "gru":
            attrs["linear_before_reset"] = 1
        if layer.mode == "rnn_relu":
            attrs["activations"] = ["Relu"] * D
        outs = [f"Y_l{k}"] + [f"{s}_l{k}" for s in finals]
        nodes.append(helper.make_node(op, node_inputs, outs, name=f"{op.lower()}_l{k}", **attrs))
        nodes.append(helper.make_node("Transpose", [f"Y_l{k}"], [f"Y_l{k}_TBDH"],
                                      perm=[0, 2, 1, 3]))
        x = f"Y_l{k}_TBD" if (k < L - 1 or layer.batch_first) else "Y"
        nodes.append(helper.make_node("Reshape", [f"Y_l{k}_TBDH", "reshape_TB_"], [x]))
        for s in finals:
            finals[s].append(f"{s}_l{k}")
    if layer.batch_first:
        nodes.append(helper.make_node("Transpose", [x], ["Y"], perm=[1, 0, 2]))
    outputs = [helper.make_tensor_value_info(
        "Y", elem, ["batch", "seq", D * H] if layer.batch_first else ["seq", "batch", D * H])]
    for s, parts in finals.items():
        if len(parts) == 1:
            nodes.append(helper.make_node("Identity", parts, [s]))
        else:
            nodes.append(helper.make_node("Concat", parts, [s], axis=0))
        outputs.append(helper.make_tensor_value_info(s, elem, [L * D, "batch", H]))
    graph = helper.make_graph(nodes, f"fastrnn_{type(layer).__name__}", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="fastrnn")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    if path is not None:
        onnx.save(model, os.fspath(path))
    return model


# ------------------------------------------------------------------- import

def _attributes(node):
    from onnx import helper
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _as_str(v):
    return v.decode() if isinstance(v, bytes) else str(v)


def from_onnx(model, *, batch_first=None, backend="auto"):
    """A fastrnn layer holding the weights of the ``LSTM``/``GRU``/``RNN`` nodes of ``model``.

    ``model`` is an ``onnx.ModelProto``, a path or serialized bytes. Several
    nodes become stacked layers: each must read the previous one's ``Y``
    (through Transpose/Reshape/Squeeze-like ops) and all must share the op
    type, direction and ``layout``. ``W``, ``R`` and ``B`` must be constants.
    ``batch_first`` defaults to the nodes' ``layout`` (a model exported with
    ``batch_first`` transposes outside its nodes, whose layout stays 0).
    Raises ``ValueError`` for what PyTorch's layers cannot compute:
    ``direction="reverse"`` alone, non-default activations (the RNN may use
    Tanh or Relu), ``clip``, ``input_forget``, non-zero peepholes ``P`` and a
    GRU with ``linear_before_reset=0``.
    """
    onnx = _import_onnx()
    from onnx import numpy_helper
    from .. import layers
    if isinstance(model, bytes):
        model = onnx.load_from_string(model)
    elif isinstance(model, (str, os.PathLike)):
        model = onnx.load(os.fspath(model))
    if not isinstance(model, onnx.ModelProto):
        raise TypeError(f"model must be an onnx.ModelProto, a path or bytes, got "
                        f"{type(model).__name__}")
    graph = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and "value" in _attributes(node):
            consts[node.output[0]] = numpy_helper.to_array(_attributes(node)["value"])
    producer = {out: node for node in graph.node for out in node.output}
    nodes = [n for n in graph.node if n.op_type in ("LSTM", "GRU", "RNN")
             and n.domain in ("", "ai.onnx")]
    if not nodes:
        raise ValueError("the model has no LSTM, GRU or RNN node")
    op = nodes[0].op_type
    if any(n.op_type != op for n in nodes):
        raise ValueError("the model mixes recurrent op types: "
                         + ", ".join(f"{n.name or '?'}:{n.op_type}" for n in nodes))
    for prev, node in zip(nodes, nodes[1:]):
        if not _reads_output_of(node.input[0], prev, producer):
            raise ValueError(f"node {node.name!r} does not read the Y output of {prev.name!r}; "
                             "only a chain of stacked layers can be imported")

    def constant(node, i, what):
        if len(node.input) <= i or node.input[i] == "":
            return None
        name = node.input[i]
        if name not in consts:
            raise ValueError(f"{what} ({name!r}) of node {node.name!r} is not a constant "
                             "initializer")
        return consts[name]

    specs = []
    for node in nodes:
        attrs = _attributes(node)
        label = f"node {node.name!r} ({op})"
        direction = _as_str(attrs.get("direction", "forward"))
        if direction not in ("forward", "bidirectional"):
            raise ValueError(f"{label}: direction={direction!r} alone has no PyTorch/fastrnn "
                             "layer equivalent (use the kernel functions with reverse=True)")
        D = 2 if direction == "bidirectional" else 1
        for bad in ("clip", "activation_alpha", "activation_beta"):
            if bad in attrs:
                raise ValueError(f"{label}: attribute {bad!r} is not supported")
        if attrs.get("input_forget", 0):
            raise ValueError(f"{label}: input_forget=1 (coupled gates) is not supported")
        acts = [_as_str(a).lower() for a in attrs.get("activations", [])]
        if op == "RNN":
            acts = acts or ["tanh"] * D
            if len(set(acts)) != 1 or acts[0] not in ("tanh", "relu"):
                raise ValueError(f"{label}: activations {acts} not supported (Tanh or Relu, "
                                 "the same in both directions)")
            mode = "rnn_" + acts[0]
        else:
            if acts and acts != _DEFAULT_ACTIVATIONS[op] * D:
                raise ValueError(f"{label}: activations {acts} not supported (only the "
                                 f"defaults {_DEFAULT_ACTIVATIONS[op]})")
            mode = op.lower()
        if op == "GRU" and attrs.get("linear_before_reset", 0) != 1:
            raise ValueError(f"{label}: linear_before_reset=0 applies the reset gate before "
                             "the recurrent product, a different function from PyTorch's GRU; "
                             "only linear_before_reset=1 can be imported")
        if op == "LSTM":
            P = constant(node, 7, "P") if len(node.input) > 7 and node.input[7] else None
            if P is not None and np.any(P != 0):
                raise ValueError(f"{label}: peephole weights P are not supported")
        W, R = constant(node, 1, "W"), constant(node, 2, "R")
        if W is None or R is None:
            raise ValueError(f"{label}: W and R are required")
        specs.append(dict(mode=mode, D=D, W=W, R=R, B=constant(node, 3, "B"),
                          layout=int(attrs.get("layout", 0)), hidden_size=int(R.shape[-1])))
    first = specs[0]
    for key in ("mode", "D", "layout", "hidden_size"):
        if any(s[key] != first[key] for s in specs):
            raise ValueError(f"the recurrent nodes differ in {key}: "
                             f"{[s[key] for s in specs]}")
    dtype = first["W"].dtype
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"W has dtype {dtype}; fastrnn imports float32 or float64 models")
    cls = {"lstm": layers.LSTM, "gru": layers.GRU}.get(first["mode"], layers.RNN)
    kw = dict(num_layers=len(specs), bias=any(s["B"] is not None for s in specs),
              batch_first=bool(first["layout"]) if batch_first is None else batch_first,
              bidirectional=first["D"] == 2,
              dtype=dtype, backend=backend)
    if cls is layers.RNN:
        kw["nonlinearity"] = first["mode"][len("rnn_"):]
    layer = cls(int(first["W"].shape[2]), first["hidden_size"], **kw)
    for k, s in enumerate(specs):
        load_onnx_weights(layer, s["W"], s["R"], s["B"], k=k)
    return layer


def _reads_output_of(name, node, producer):
    """Whether tensor ``name`` is ``node``'s first output, possibly through reshaping ops."""
    seen = 0
    while name and seen < 16:
        if node.output and name == node.output[0]:
            return True
        src = producer.get(name)
        if src is None or src.op_type not in _PASS_THROUGH:
            return False
        name = src.input[0]
        seen += 1
    return False
