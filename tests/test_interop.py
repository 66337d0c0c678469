"""Interchange with PyTorch (state_dict, from_torch, to_torch), ONNX (weights, model
export run through onnx.reference and ONNX Runtime, import of hand-built models) and
Keras (weight layout, checked against Keras's own cell equations written here).
"""
import itertools
import os
import subprocess
import sys

import numpy as np
import pytest

import fastrnn
from fastrnn import interop
from conftest import as_hx, assert_close, make_layer, states_of

CELLS = ("rnn_tanh", "rnn_relu", "lstm", "gru")

pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported")


def test_torch_and_onnx_are_imported_lazily():
    code = ("import sys, numpy as np, fastrnn\n"
            "l = fastrnn.LSTM(2, 3, num_layers=2, bidirectional=True)\n"
            "y, _, ctx = l(np.zeros((4, 1, 2), np.float32), training=True)\n"
            "l.backward(ctx, y)\n"
            "l.load_state_dict(l.state_dict())\n"
            "fastrnn.interop.keras_weights(l)\n"
            "assert 'torch' not in sys.modules and 'onnx' not in sys.modules, 'imported'\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(fastrnn.__file__)))]
        + os.environ.get("PYTHONPATH", "").split(os.pathsep)))
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


# --------------------------------------------------------------- state_dict

def test_load_state_dict_accepts_numpy_and_torch(torch):
    layer = fastrnn.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2)
    module = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2,
                           dtype=torch.float64)
    arrays = {n: id(a) for n, a in layer.named_parameters()}
    missing, unexpected = layer.load_state_dict(module.state_dict())
    assert missing == [] and unexpected == []
    for n, p in module.named_parameters():
        np.testing.assert_array_equal(getattr(layer, n), p.detach().numpy().astype(np.float32))
        assert getattr(layer, n).dtype == np.float32
        assert id(getattr(layer, n)) == arrays[n]            # copied in place
    numpy_sd = {n: np.full(a.shape, 0.5) for n, a in layer.state_dict().items()}
    layer.load_state_dict(numpy_sd)
    assert all(np.all(a == 0.5) for a in layer.parameters())


def test_load_state_dict_errors():
    layer = fastrnn.GRU(3, 4, num_layers=2)
    sd = {n: a.copy() for n, a in layer.state_dict().items()}
    bad = dict(sd)
    del bad["bias_hh_l1"]
    bad["weight_hr_l0"] = np.zeros((2, 4))
    bad["weight_ih_l1"] = np.zeros((12, 3))
    with pytest.raises(ValueError) as e:
        layer.load_state_dict(bad)
    msg = str(e.value)
    assert "missing key(s): bias_hh_l1" in msg
    assert "unexpected key(s): weight_hr_l0" in msg
    assert "weight_ih_l1 must have shape (12, 4), got shape (12, 3)" in msg
    before = {n: a.copy() for n, a in layer.named_parameters()}
    with pytest.raises(ValueError):
        layer.load_state_dict(dict(sd, weight_ih_l0=np.zeros((1, 1))))
    for n, a in layer.named_parameters():                  # nothing loaded on error
        np.testing.assert_array_equal(a, before[n])
    partial = {"weight_ih_l0": np.ones((12, 3)), "extra": np.zeros(1)}
    missing, unexpected = layer.load_state_dict(partial, strict=False)
    assert "weight_hh_l0" in missing and unexpected == ["extra"]
    assert np.all(layer.weight_ih_l0 == 1)
    with pytest.raises(ValueError, match="weight_ih_l0 must have shape"):
        layer.load_state_dict({"weight_ih_l0": np.ones(3)}, strict=False)
    with pytest.raises(ValueError, match="must hold real numbers"):
        layer.load_state_dict(dict(sd, weight_ih_l0=np.full((12, 3), "a")))
    with pytest.raises(TypeError, match="state_dict must be a mapping"):
        layer.load_state_dict([1, 2])


# ------------------------------------------------------- from_torch / to_torch

TORCH_OPTIONS = list(itertools.product((1, 2), (False, True), (False, True), (False, True)))


@pytest.mark.parametrize("num_layers,bidirectional,batch_first,bias", TORCH_OPTIONS)
@pytest.mark.parametrize("cell", CELLS + ("lstm_proj",))
def test_from_torch_and_to_torch(torch, cell, num_layers, bidirectional, batch_first, bias):
    base = cell.replace("_proj", "")
    kw = dict(num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first,
              bias=bias)
    if cell == "lstm_proj":
        kw["proj_size"] = 2
    if base.startswith("rnn_"):
        module = torch.nn.RNN(3, 5, nonlinearity=base[4:], dtype=torch.float64, **kw)
    else:
        module = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[base](3, 5, dtype=torch.float64,
                                                                   **kw)
    layer = fastrnn.from_torch(module)
    assert type(layer).__name__ == type(module).__name__
    assert layer.dtype == np.float64 and layer.mode == base
    for key, value in kw.items():
        assert getattr(layer, key) == value, key
    x = np.random.default_rng(0).standard_normal((4, 2, 3))
    y, h = layer(x)
    yt, ht = module(torch.tensor(x))
    assert_close(y, yt.detach().numpy(), 1e-10, "y")
    for a, e in zip(states_of(h, base), states_of(ht, base)):
        assert_close(a, e.detach().numpy(), 1e-10, "h_n")
    back = layer.to_torch()
    assert type(back) is type(module)
    for key in ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
                "bidirectional", "proj_size", "mode", "nonlinearity"):
        assert getattr(back, key, None) == getattr(module, key, None), key
    for (n, a), (m, b) in zip(back.named_parameters(), module.named_parameters()):
        assert n == m and a.dtype == torch.float64
        np.testing.assert_array_equal(a.detach().numpy(), b.detach().numpy())
    assert fastrnn.to_torch(layer).state_dict().keys() == module.state_dict().keys()


def test_from_torch_dtypes_and_errors(torch):
    module = torch.nn.GRU(3, 4, dropout=0.0)
    layer = fastrnn.from_torch(module, backend="reference")
    assert layer.dtype == np.float32 and layer.backend == "reference"
    half = torch.nn.LSTM(3, 4).to(torch.bfloat16)
    with pytest.raises(TypeError, match="pass dtype=np.float32"):
        fastrnn.from_torch(half)
    layer = fastrnn.from_torch(half, dtype=np.float32)
    np.testing.assert_array_equal(layer.weight_hh_l0,
                                  half.weight_hh_l0.detach().float().numpy())
    with pytest.raises(TypeError, match="module must be a torch.nn.RNN, LSTM or GRU"):
        fastrnn.from_torch(torch.nn.Linear(3, 4))
    with pytest.raises(TypeError, match="module must be"):
        fastrnn.from_torch(torch.nn.LSTMCell(3, 4))
    with pytest.warns(UserWarning):
        drop = fastrnn.LSTM(3, 4, dropout=0.3)
    assert drop.to_torch().dropout == 0.3


# ---------------------------------------------------------------------- ONNX

@pytest.fixture
def onnx():
    return pytest.importorskip("onnx")


def ort_run(model, feeds):
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def reference_run(model, feeds):
    from onnx.reference import ReferenceEvaluator
    return ReferenceEvaluator(model).run(None, feeds)


ONNX_OPTIONS = list(itertools.product((1, 2), (False, True), (False, True), (False, True),
                                      (False, True)))
ONNX_IDS = [f"L{n}-{'bi' if b else 'uni'}-{'bf' if f else 'tm'}-{'hx' if h else 'nohx'}-"
            f"{'lens' if s else 'nolens'}" for n, b, f, h, s in ONNX_OPTIONS]


@pytest.mark.parametrize("num_layers,bidirectional,batch_first,initial_states,sequence_lens",
                         ONNX_OPTIONS, ids=ONNX_IDS)
@pytest.mark.parametrize("cell", CELLS)
def test_onnx_export_runs_like_the_layer(onnx, cell, num_layers, bidirectional, batch_first,
                                         initial_states, sequence_lens):
    """The exported model, run by onnx.reference (float64 and float32; it has no Relu and
    ignores sequence_lens) and by ONNX Runtime (float32), gives the layer's outputs."""
    rng = np.random.default_rng(0)
    T, B = 5, 3
    runs = []
    if cell != "rnn_relu" and not sequence_lens:
        runs += [(np.float64, reference_run), (np.float32, reference_run)]
    runs.append((np.float32, ort_run))
    for dtype, run in runs:
        layer = make_layer(cell, 4, 6, num_layers, bidirectional=bidirectional,
                           batch_first=batch_first, dtype=dtype, rng=1)
        model = fastrnn.to_onnx(layer, initial_states=initial_states,
                                sequence_lens=sequence_lens)
        x = rng.standard_normal((B, T, 4) if batch_first else (T, B, 4)).astype(dtype)
        LD = num_layers * layer.num_directions
        states = [rng.standard_normal((LD, B, 6)).astype(dtype)
                  for _ in range(2 if cell == "lstm" else 1)]
        lengths = np.array([3, 5, 1], np.int32)
        feeds = {"X": x}
        if initial_states:
            feeds.update(zip(["initial_h", "initial_c"], states))
        if sequence_lens:
            feeds["sequence_lens"] = lengths
        outs = run(model, feeds)
        y, h = layer(x, as_hx(states, cell) if initial_states else None,
                     lengths if sequence_lens else None)
        rtol = 1e-12 if dtype == np.float64 else 1e-5
        assert_close(outs[0], y, rtol, "Y")
        for a, e in zip(outs[1:], states_of(h, cell)):
            assert_close(a, e, rtol, "Y_h/Y_c")
        back = fastrnn.from_onnx(model, batch_first=batch_first)
        assert back.state_dict().keys() == layer.state_dict().keys()
        assert repr(back) == repr(layer)
        for n, a in layer.named_parameters():
            np.testing.assert_array_equal(getattr(back, n), a)


def test_onnx_weights_round_trip_and_gate_order():
    for cell in CELLS:
        layer = make_layer(cell, 3, 4, 2, bidirectional=True, dtype=np.float64, rng=0)
        other = make_layer(cell, 3, 4, 2, bidirectional=True, dtype=np.float64, rng=1)
        for k in range(2):
            w = interop.onnx_weights(layer, k)
            G = layer._cell.n_gates
            assert w["W"].shape == (2, G * 4, 3 if k == 0 else 8)
            assert w["R"].shape == (2, G * 4, 4) and w["B"].shape == (2, 2 * G * 4)
            interop.load_onnx_weights(other, k=k, **w)
        for n, a in layer.named_parameters():
            np.testing.assert_array_equal(getattr(other, n), a)
    lstm = fastrnn.LSTM(2, 3, dtype=np.float64)
    w = lstm.weight_ih_l0
    onnx_w = interop.onnx_weights(lstm)["W"][0]
    for torch_gate, onnx_gate in zip("ifgo", "ifgo"):     # ONNX order i, o, f, c(=g)
        t = "ifgo".index(torch_gate)
        o = "iofg".index(onnx_gate)
        np.testing.assert_array_equal(onnx_w[3 * o:3 * o + 3], w[3 * t:3 * t + 3])
    gru = fastrnn.GRU(2, 3, dtype=np.float64)
    onnx_r = interop.onnx_weights(gru)["R"][0]            # ONNX z, r, h; PyTorch r, z, n
    np.testing.assert_array_equal(onnx_r[:3], gru.weight_hh_l0[3:6])
    np.testing.assert_array_equal(onnx_r[3:6], gru.weight_hh_l0[:3])
    nobias = fastrnn.GRU(2, 3, bias=False)
    assert "B" not in interop.onnx_weights(nobias)
    interop.load_onnx_weights(nobias, np.zeros((1, 9, 2)), np.zeros((1, 9, 3)), np.zeros((1, 18)))
    with pytest.raises(ValueError, match="B is not zero but the layer has bias=False"):
        interop.load_onnx_weights(nobias, np.zeros((1, 9, 2)), np.zeros((1, 9, 3)),
                                  np.ones((1, 18)))
    with pytest.raises(ValueError, match=r"W must have shape \(1, 9, 2\)"):
        interop.load_onnx_weights(nobias, np.zeros((1, 9, 3)), np.zeros((1, 9, 3)))
    with pytest.raises(ValueError, match=r"layer index must be an int in \[0, 1\)"):
        interop.onnx_weights(nobias, 1)
    with pytest.raises(ValueError, match="ONNX has no LSTM projection"):
        interop.onnx_weights(fastrnn.LSTM(3, 4, proj_size=2))


def onnx_node_model(onnx, op, W, R, B, *, direction="forward", layout=0, extra_inputs=(),
                    P=None, dtype=np.float32, **attrs):
    """A one-node model with W, R, B (and P) as initializers and X,
    sequence_lens, initial_h, initial_c as graph inputs (those in ``extra_inputs``)."""
    from onnx import TensorProto, helper, numpy_helper
    elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.DOUBLE
    D, GH, I = W.shape
    H = R.shape[2]
    inits = [numpy_helper.from_array(a.astype(dtype), n) for n, a in
             (("W", W), ("R", R), ("B", B), ("P", P)) if a is not None]
    names = ["X", "W", "R", "B" if B is not None else "", "sequence_lens", "initial_h",
             "initial_c", "P" if P is not None else ""]
    for i, n in enumerate(names[4:7], 4):
        if n not in extra_inputs:
            names[i] = ""
    while names[-1] == "":
        names.pop()
    x_dims = ["b", "t", I] if layout else ["t", "b", I]
    s_dims = ["b", D, H] if layout else [D, "b", H]
    inputs = [helper.make_tensor_value_info("X", elem, x_dims)]
    for n in ("sequence_lens", "initial_h", "initial_c"):
        if n in extra_inputs:
            inputs.append(helper.make_tensor_value_info(
                n, TensorProto.INT32 if n == "sequence_lens" else elem,
                ["b"] if n == "sequence_lens" else s_dims))
    outs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    node = helper.make_node(op, names, outs, name="rnn", hidden_size=H, direction=direction,
                            layout=layout, **attrs)
    graph = helper.make_graph([node], "g", inputs,
                              [helper.make_tensor_value_info(o, elem, None) for o in outs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model


ONNX_OPS = {"lstm": ("LSTM", 4, {}), "gru": ("GRU", 3, {"linear_before_reset": 1}),
            "rnn_tanh": ("RNN", 1, {}), "rnn_relu": ("RNN", 1, {"activations": ["Relu"]})}


@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
@pytest.mark.parametrize("cell", CELLS)
def test_onnx_import_of_a_foreign_model(onnx, cell, direction):
    """Weights drawn in ONNX's own layout, run by ONNX Runtime with initial_h/c and
    sequence_lens, and by the imported layer with hx and lengths: the same results."""
    op, G, attrs = ONNX_OPS[cell]
    D = 2 if direction == "bidirectional" else 1
    rng = np.random.default_rng(1)
    H, I, T, B = 5, 3, 6, 4
    if direction == "bidirectional" and cell.startswith("rnn"):
        attrs = {k: v * 2 for k, v in attrs.items()}
    W = rng.uniform(-0.5, 0.5, (D, G * H, I))
    R = rng.uniform(-0.5, 0.5, (D, G * H, H))
    Bias = rng.uniform(-0.5, 0.5, (D, 2 * G * H))
    states = ["initial_h"] + (["initial_c"] if op == "LSTM" else [])
    model = onnx_node_model(onnx, op, W, R, Bias, direction=direction,
                            extra_inputs=["sequence_lens"] + states, **attrs)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    hx = [rng.standard_normal((D, B, H)).astype(np.float32) for _ in states]
    lengths = np.array([2, 6, 1, 4], np.int32)
    outs = ort_run(model, dict(X=x, sequence_lens=lengths, **dict(zip(states, hx))))
    layer = fastrnn.from_onnx(model.SerializeToString())
    assert layer.mode == cell and layer.bidirectional == (D == 2) and layer.dtype == np.float32
    y, h = layer(x, as_hx(hx, cell), lengths)
    assert_close(y, outs[0].transpose(0, 2, 1, 3).reshape(T, B, D * H), 1e-5, "Y")
    for a, e in zip(states_of(h, cell), outs[1:]):
        assert_close(a, e, 1e-5, "Y_h/Y_c")


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_onnx_import_layout_1(onnx, cell):
    """layout=1 (batch-first X, initial_h (B, D, H)), float64, run by onnx.reference."""
    op, G, attrs = ONNX_OPS[cell]
    rng = np.random.default_rng(2)
    H, I, T, B, D = 4, 3, 5, 2, 2
    W, R = rng.uniform(-0.5, 0.5, (D, G * H, I)), rng.uniform(-0.5, 0.5, (D, G * H, H))
    Bias = rng.uniform(-0.5, 0.5, (D, 2 * G * H))
    P = np.zeros((D, 3 * H)) if op == "LSTM" else None
    states = ["initial_h"] + (["initial_c"] if op == "LSTM" else [])
    model = onnx_node_model(onnx, op, W, R, Bias, direction="bidirectional", layout=1, P=P,
                            extra_inputs=states, dtype=np.float64, **attrs)
    x = rng.standard_normal((B, T, I))
    hx = [rng.standard_normal((B, D, H)) for _ in states]
    outs = reference_run(model, dict(X=x, **dict(zip(states, hx))))
    layer = fastrnn.from_onnx(model)
    assert layer.batch_first and layer.dtype == np.float64
    y, h = layer(x, as_hx([s.transpose(1, 0, 2) for s in hx], cell))
    assert_close(y, outs[0].reshape(B, T, D * H), 1e-12, "Y")       # (B, T, D, H)
    for a, e in zip(states_of(h, cell), outs[1:]):
        assert_close(a, e.transpose(1, 0, 2), 1e-12, "Y_h/Y_c")


@pytest.mark.parametrize("cell", CELLS)
def test_onnx_import_of_a_torch_export(onnx, torch, cell):
    """A stacked bidirectional model written by torch.onnx.export (TorchScript exporter)."""
    import io
    import warnings
    torch.manual_seed(0)
    module = (torch.nn.RNN(3, 5, 2, nonlinearity=cell[4:], bidirectional=True)
              if cell.startswith("rnn_") else
              {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](3, 5, 2, bidirectional=True))
    module.eval()
    x = torch.randn(4, 2, 3)
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, (x,), f, dynamo=False, opset_version=14)
        except (ImportError, RuntimeError) as exc:      # exporter dependencies missing
            pytest.skip(f"torch.onnx.export unavailable: {exc}")
    layer = fastrnn.from_onnx(f.getvalue())
    assert repr(layer) == repr(fastrnn.from_torch(module))
    for n, p in module.named_parameters():
        np.testing.assert_array_equal(getattr(layer, n), p.detach().numpy())
    y, _ = layer(x.numpy())
    assert_close(y, module(x)[0].detach().numpy(), 1e-5, "y")


def test_onnx_import_errors(onnx, tmp_path):
    from onnx import helper
    rng = np.random.default_rng(0)
    W, R, Bias = rng.random((1, 12, 2)), rng.random((1, 12, 4)), rng.random((1, 24))
    with pytest.raises(ValueError, match="linear_before_reset=0 applies the reset gate before"):
        fastrnn.from_onnx(onnx_node_model(onnx, "GRU", W, R, Bias))
    with pytest.raises(ValueError, match="direction='reverse' alone"):
        fastrnn.from_onnx(onnx_node_model(onnx, "GRU", W, R, Bias, direction="reverse",
                                          linear_before_reset=1))
    with pytest.raises(ValueError, match="'clip' is not supported"):
        fastrnn.from_onnx(onnx_node_model(onnx, "GRU", W, R, Bias, clip=1.0,
                                          linear_before_reset=1))
    W4, R4, B4 = rng.random((1, 16, 2)), rng.random((1, 16, 4)), rng.random((1, 32))
    with pytest.raises(ValueError, match="peephole weights P are not supported"):
        fastrnn.from_onnx(onnx_node_model(onnx, "LSTM", W4, R4, B4, P=np.ones((1, 12))))
    with pytest.raises(ValueError, match="input_forget=1"):
        fastrnn.from_onnx(onnx_node_model(onnx, "LSTM", W4, R4, B4, input_forget=1))
    with pytest.raises(ValueError, match="activations .* not supported"):
        fastrnn.from_onnx(onnx_node_model(onnx, "LSTM", W4, R4, B4,
                                          activations=["Sigmoid", "Tanh", "Relu"]))
    W1, R1 = rng.random((1, 4, 2)), rng.random((1, 4, 4))
    with pytest.raises(ValueError, match="activations .* not supported"):
        fastrnn.from_onnx(onnx_node_model(onnx, "RNN", W1, R1, None, activations=["Sigmoid"]))
    model = onnx_node_model(onnx, "LSTM", W4, R4, B4)
    model.graph.initializer.pop(0)                  # W becomes a dangling name
    with pytest.raises(ValueError, match="W .* is not a constant initializer"):
        fastrnn.from_onnx(model)
    empty = helper.make_model(helper.make_graph([], "g", [], []))
    with pytest.raises(ValueError, match="no LSTM, GRU or RNN node"):
        fastrnn.from_onnx(empty)
    with pytest.raises(TypeError, match="model must be an onnx.ModelProto"):
        fastrnn.from_onnx(42)
    # two LSTMs side by side, not stacked
    m1 = onnx_node_model(onnx, "LSTM", W4, R4, B4)
    second = helper.make_node("LSTM", ["X", "W", "R", "B"], ["Y2", "Y2_h", "Y2_c"],
                              name="other", hidden_size=4)
    m1.graph.node.append(second)
    with pytest.raises(ValueError, match="does not read the Y output"):
        fastrnn.from_onnx(m1)
    with pytest.raises(ValueError, match="ONNX has no LSTM projection"):
        fastrnn.to_onnx(fastrnn.LSTM(3, 4, proj_size=2))
    # save and load through a path
    layer = fastrnn.GRU(2, 3, num_layers=2)
    path = tmp_path / "gru.onnx"
    fastrnn.to_onnx(layer, path=path)
    again = fastrnn.from_onnx(path)
    for n, a in layer.named_parameters():
        np.testing.assert_array_equal(getattr(again, n), a)


# --------------------------------------------------------------------- Keras

def sigmoid(a):
    return 1 / (1 + np.exp(-a))


def keras_run(cell, weights, x, go_backwards=False):
    """Keras's LSTM / GRU(reset_after=True) / SimpleRNN equations, (B, T, I) -> (B, T, H), h_T."""
    kernel, recurrent = weights[0], weights[1]
    bias = weights[2] if len(weights) > 2 else None
    B, T, _ = x.shape
    H = recurrent.shape[0]
    h = np.zeros((B, H))
    c = np.zeros((B, H))
    ys = []
    steps = range(T - 1, -1, -1) if go_backwards else range(T)
    for t in steps:
        xt = x[:, t]
        if cell == "lstm":
            z = xt @ kernel + h @ recurrent + (0 if bias is None else bias)
            i, f, cc, o = np.split(z, 4, axis=1)              # Keras order i, f, c, o
            c = sigmoid(f) * c + sigmoid(i) * np.tanh(cc)
            h = sigmoid(o) * np.tanh(c)
        elif cell == "gru":                                   # reset_after=True
            mx = xt @ kernel + (0 if bias is None else bias[0])
            mi = h @ recurrent + (0 if bias is None else bias[1])
            x_z, x_r, x_h = np.split(mx, 3, axis=1)           # Keras order z, r, h
            r_z, r_r, r_h = np.split(mi, 3, axis=1)
            z = sigmoid(x_z + r_z)
            r = sigmoid(x_r + r_r)
            hh = np.tanh(x_h + r * r_h)
            h = z * h + (1 - z) * hh
        else:
            pre = xt @ kernel + h @ recurrent + (0 if bias is None else bias)
            h = np.tanh(pre) if cell == "rnn_tanh" else np.maximum(pre, 0)
        ys.append(h)
    y = np.stack(ys, axis=1)
    return (y[:, ::-1] if go_backwards else y), h


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("cell", CELLS)
def test_keras_weights_follow_keras_equations(cell, bidirectional, bias):
    rng = np.random.default_rng(3)
    I, H, T, B = 3, 4, 5, 2
    G = {"lstm": 4, "gru": 3}.get(cell, 1)
    D = 2 if bidirectional else 1
    weights = []
    for _ in range(D):
        weights += [rng.uniform(-0.5, 0.5, (I, G * H)), rng.uniform(-0.5, 0.5, (H, G * H))]
        if bias:
            weights.append(rng.uniform(-0.5, 0.5, (2, G * H) if cell == "gru" else (G * H,)))
    layer = make_layer(cell, I, H, bias=bias, bidirectional=bidirectional, batch_first=True,
                       dtype=np.float64)
    interop.load_keras_weights(layer, weights)
    x = rng.standard_normal((B, T, I))
    y, h = layer(x)
    n = len(weights) // D
    ys, hs = zip(*[keras_run(cell, weights[d * n:(d + 1) * n], x, go_backwards=bool(d))
                   for d in range(D)])
    assert_close(y, np.concatenate(ys, axis=2), 1e-12, "y")   # Bidirectional(merge_mode="concat")
    assert_close(states_of(h, cell)[0], np.stack(hs), 1e-12, "h_n")
    exported = interop.keras_weights(layer)
    assert [a.shape for a in exported] == [a.shape for a in weights]
    if cell == "gru" or not bias:
        for a, b in zip(exported, weights):
            assert_close(a, b, 1e-15, "round trip")
    # export of arbitrary PyTorch-style weights (b_ih and b_hh both set) runs the same
    other = make_layer(cell, I, H, bias=bias, bidirectional=bidirectional, batch_first=True,
                       dtype=np.float64, rng=5)
    w = interop.keras_weights(other)
    y2, _ = other(x)
    ys2 = [keras_run(cell, w[d * n:(d + 1) * n], x, go_backwards=bool(d))[0] for d in range(D)]
    assert_close(y2, np.concatenate(ys2, axis=2), 1e-12, "y from exported weights")


def test_keras_errors():
    gru = fastrnn.GRU(3, 4)
    with pytest.raises(ValueError, match="reset_after=False, a different function"):
        interop.load_keras_weights(gru, [np.zeros((3, 12)), np.zeros((4, 12)), np.zeros(12)])
    with pytest.raises(ValueError,
                       match=r"expected 3 arrays \(\[kernel, recurrent_kernel, bias\]\)"):
        interop.load_keras_weights(gru, [np.zeros((3, 12))])
    with pytest.raises(ValueError, match=r"recurrent_kernel must have shape \(4, 12\)"):
        interop.load_keras_weights(gru, [np.zeros((3, 12)), np.zeros((12, 4)),
                                         np.zeros((2, 12))])
    bi = fastrnn.LSTM(3, 4, bidirectional=True, bias=False)
    with pytest.raises(ValueError, match="expected 4 arrays .* forward then the backward"):
        interop.load_keras_weights(bi, [np.zeros((3, 16))] * 3)
    with pytest.raises(ValueError, match="Keras has no LSTM projection"):
        interop.keras_weights(fastrnn.LSTM(3, 4, proj_size=2))
    stacked = fastrnn.LSTM(3, 4, num_layers=2)
    assert interop.keras_weights(stacked, 1)[0].shape == (4, 16)
