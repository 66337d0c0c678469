"""Runnable workloads for fastrnn and the peers it is measured against.

Each ``*_runner`` returns a zero-argument callable doing one forward
(``mode="inference"``) or one forward that keeps its workspace plus the full
backward (``mode="training"``: gradients of x, the initial states and every
weight and bias). All of them compute the same function on the same weights,
so their timings compare like with like. The peers (PyTorch, ONNX Runtime) are
imported only when asked for.
"""
from dataclasses import dataclass

import numpy as np

from . import kernels

#: name -> (B, T, I, H), the grid of DeepBench-like shapes of the benchmarks
SHAPES = {
    "latency": (1, 100, 128, 128),
    "small": (16, 25, 512, 512),
    "medium": (32, 50, 256, 256),
    "large": (64, 100, 512, 512),
    "long": (8, 1000, 64, 64),
}
CELLS = ("rnn_tanh", "lstm", "gru")
MODES = ("inference", "training")


@dataclass
class Case:
    """One workload: a cell, its PyTorch-layout parameters and its input."""
    cell: str
    x: np.ndarray          # (T, B, I)
    params: tuple          # weight_ih, weight_hh, bias_ih, bias_hh
    dy: np.ndarray         # (T, B, H), the incoming gradient in training
    states: tuple = None   # (h0,) or (h0, c0), each (B, H); None: zeros, left out

    @property
    def n_states(self):
        return 2 if self.cell == "lstm" else 1

    def initial(self):
        """The initial states as the kernel functions take them: one (B, H)
        array each, or None each (zeros)."""
        return self.states if self.states is not None else (None,) * self.n_states

    def flops(self, mode):
        """Multiply-adds of the forward GEMMs times 2; training adds 2x for backward."""
        T, B, I = self.x.shape
        GH, H = self.params[1].shape
        forward = 2 * T * B * (I + H) * GH
        return forward * (3 if mode == "training" else 1)


def make_case(cell, shape, dtype=np.float32, seed=0, initial_states=False):
    """A case with PyTorch's default initialisation U(-1/sqrt(H), 1/sqrt(H)).

    ``initial_states``: every implementation starts from the same random
    states, as a model carrying its state from call to call does (a stream
    one step at a time); else from zeros, which no implementation is given.
    Not the same work for every peer: ONNX Runtime's RNN operator skips the
    first step's recurrent product when it is given no initial state (its
    LSTM and GRU do not); fastrnn and torch multiply by the zeros."""
    B, T, I, H = SHAPES[shape] if isinstance(shape, str) else shape
    G = kernels.N_GATES[cell]
    rng = np.random.default_rng(seed)
    k = 1 / np.sqrt(H)
    params = tuple(rng.uniform(-k, k, s).astype(dtype)
                   for s in [(G * H, I), (G * H, H), (G * H,), (G * H,)])
    x = rng.standard_normal((T, B, I)).astype(dtype)
    dy = rng.standard_normal((T, B, H)).astype(dtype)
    case = Case(cell, x, params, dy)
    if initial_states:
        case.states = tuple(rng.uniform(-0.5, 0.5, (B, H)).astype(dtype)
                            for _ in range(case.n_states))
    return case


def _kernel_functions(cell):
    base = "rnn" if cell.startswith("rnn") else cell
    extra = {"nonlinearity": cell[4:]} if base == "rnn" else {}
    return getattr(kernels, base + "_forward"), getattr(kernels, base + "_backward"), extra


def fastrnn_runner(case, mode, backend, frozen=True):
    """fastrnn on ``backend``. Inference runs a frozen layer (``layer.freeze()``:
    the weights checked and their panels packed once, as ONNX Runtime's
    session has them), or with ``frozen=False`` the kernel function, which
    does that on every call; training runs the kernel functions."""
    forward, backward, extra = _kernel_functions(case.cell)
    states = case.initial()
    if mode == "inference" and frozen:
        ice = fastrnn_layer(case, backend).freeze()
        hx = None
        if case.states is not None:
            # the layer's (layers, B, H); an LSTM's pair as a tuple
            hx = tuple(np.ascontiguousarray(s[None]) for s in case.states)
            hx = hx if case.cell == "lstm" else hx[0]
        return lambda: ice(case.x, hx)
    if mode == "inference":
        return lambda: forward(case.x, *states, *case.params, backend=backend, **extra)

    def train():
        out = forward(case.x, *states, *case.params, training=True, backend=backend, **extra)
        return backward(out.workspace, case.dy)
    return train


def fastrnn_layer(case, backend):
    """A one-layer ``fastrnn.RNN``/``LSTM``/``GRU`` with the case's weights."""
    from . import layers
    T, B, I = case.x.shape
    H = case.params[1].shape[1]
    if case.cell.startswith("rnn_"):
        layer = layers.RNN(I, H, nonlinearity=case.cell[4:], dtype=case.x.dtype, backend=backend)
    else:
        layer = {"lstm": layers.LSTM, "gru": layers.GRU}[case.cell](I, H, dtype=case.x.dtype,
                                                                    backend=backend)
    names = ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]
    layer.load_state_dict(dict(zip(names, case.params)))
    return layer


def torch_runner(case, mode, threads=None):
    """torch.nn.{RNN,LSTM,GRU} on the CPU with the case's weights."""
    import torch
    if threads:
        torch.set_num_threads(threads)
    T, B, I = case.x.shape
    H = case.params[1].shape[1]
    dtype = torch.float64 if case.x.dtype == np.float64 else torch.float32
    if case.cell == "lstm":
        module = torch.nn.LSTM(I, H)
    elif case.cell == "gru":
        module = torch.nn.GRU(I, H)
    else:
        module = torch.nn.RNN(I, H, nonlinearity=case.cell[4:])
    module = module.to(dtype)
    with torch.no_grad():
        for name, p in zip(["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"],
                           case.params):
            getattr(module, name).copy_(torch.from_numpy(p))
    x = torch.from_numpy(case.x)
    if case.states is None:
        states = [torch.zeros(1, B, H, dtype=dtype) for _ in range(case.n_states)]
    else:
        states = [torch.from_numpy(s[None].copy()) for s in case.states]
    if mode == "inference":
        hx = None if case.states is None else tuple(states) if case.cell == "lstm" \
            else states[0]

        def infer():
            with torch.no_grad():
                return module(x, hx)
        return infer
    dy = torch.from_numpy(case.dy)
    states = [s.requires_grad_() for s in states]
    hx = tuple(states) if case.cell == "lstm" else states[0]

    def train():
        xg = x.detach().requires_grad_()
        module.zero_grad(set_to_none=True)
        y, _ = module(xg, hx)
        y.backward(dy)
        return xg.grad
    return train


def onnx_model(case):
    """The case as a one-node ONNX model (LSTM / GRU with linear_before_reset=1 / RNN)."""
    from onnx import TensorProto, helper, numpy_helper
    T, B, I = case.x.shape
    H = case.params[1].shape[1]
    w_ih, w_hh, b_ih, b_hh = case.params
    if case.cell == "lstm":
        op, attrs = "LSTM", {}
        order = [0, 3, 1, 2]            # PyTorch i,f,g,o -> ONNX i,o,f,c
    elif case.cell == "gru":
        op, attrs = "GRU", {"linear_before_reset": 1}
        order = [1, 0, 2]               # PyTorch r,z,n -> ONNX z,r,h
    else:
        op, attrs = "RNN", {"activations": ["Tanh" if case.cell == "rnn_tanh" else "Relu"]}
        order = [0]

    def reorder(a):
        return np.concatenate([a[k * H:(k + 1) * H] for k in order])
    W = reorder(w_ih)[None]
    R = reorder(w_hh)[None]
    Bias = np.concatenate([reorder(b_ih), reorder(b_hh)])[None]
    elem = TensorProto.DOUBLE if case.x.dtype == np.float64 else TensorProto.FLOAT
    inputs = ["X", "W", "R", "B"]
    feeds = [helper.make_tensor_value_info("X", elem, [T, B, I])]
    if case.states is not None:
        # after the sequence_lens input, left empty
        names = ["initial_h", "initial_c"][:case.n_states]
        inputs += [""] + names
        feeds += [helper.make_tensor_value_info(n, elem, [1, B, H]) for n in names]
    node = helper.make_node(op, inputs, ["Y"], hidden_size=H, **attrs)
    graph = helper.make_graph(
        [node], "fastrnn_case", feeds,
        [helper.make_tensor_value_info("Y", elem, [T, 1, B, H])],
        initializer=[numpy_helper.from_array(a, n) for a, n in ((W, "W"), (R, "R"), (Bias, "B"))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def onnxruntime_runner(case, mode, threads=None):
    """ONNX Runtime's CPU kernel for the case; inference only."""
    if mode != "inference":
        raise ValueError("ONNX Runtime runs inference only")
    import onnxruntime as ort
    # ORT's default threading, idle workers spinning included: the bench keeps
    # their spinning out of other implementations' timings (bench.settle)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    session = ort.InferenceSession(onnx_model(case).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return lambda: session.run(None, onnx_feed(case))


def onnx_feed(case):
    """The inputs of ``onnx_model(case)``."""
    feed = {"X": case.x}
    if case.states is not None:
        feed.update(zip(["initial_h", "initial_c"], [s[None] for s in case.states]))
    return feed
