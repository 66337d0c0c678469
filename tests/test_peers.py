"""The benchmark peers compute the same function as fastrnn on the same weights,
so their timings compare like with like."""
import numpy as np
import pytest

from fastrnn import _peers

SHAPE = (3, 7, 5, 6)      # B, T, I, H


@pytest.mark.parametrize("states", [False, True])
@pytest.mark.parametrize("cell", _peers.CELLS + ("rnn_relu",))
def test_onnxruntime_peer_matches_fastrnn(cell, states):
    pytest.importorskip("onnxruntime")
    case = _peers.make_case(cell, SHAPE, np.float32, initial_states=states)
    expected = _peers.fastrnn_runner(case, "inference", "reference")()[0]
    (y,) = _peers.onnxruntime_runner(case, "inference", threads=1)()
    np.testing.assert_allclose(y[:, 0], expected, rtol=0, atol=2e-6)


@pytest.mark.parametrize("states", [False, True])
@pytest.mark.parametrize("cell", _peers.CELLS)   # onnx.reference's RNN knows only Tanh
def test_onnx_reference_runs_the_peer_model(cell, states):
    """onnx's own reference evaluator agrees, so the model itself is right."""
    reference_evaluator = pytest.importorskip("onnx.reference")
    case = _peers.make_case(cell, SHAPE, np.float64, initial_states=states)
    expected = _peers.fastrnn_runner(case, "inference", "reference")()[0]
    (y,) = reference_evaluator.ReferenceEvaluator(_peers.onnx_model(case)).run(
        None, _peers.onnx_feed(case))
    np.testing.assert_allclose(y[:, 0], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("states", [False, True])
@pytest.mark.parametrize("mode", _peers.MODES)
@pytest.mark.parametrize("cell", _peers.CELLS)
def test_torch_peer_matches_fastrnn(cell, mode, states):
    torch = pytest.importorskip("torch")
    case = _peers.make_case(cell, SHAPE, np.float64, initial_states=states)
    expected = _peers.fastrnn_runner(case, mode, "reference")()
    got = _peers.torch_runner(case, mode, threads=1)()
    if mode == "inference":
        np.testing.assert_allclose(got[0].numpy(), expected[0], rtol=1e-12, atol=1e-12)
    else:
        assert isinstance(got, torch.Tensor)
        np.testing.assert_allclose(got.numpy(), expected.dx, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("states", [False, True])
@pytest.mark.parametrize("cell", _peers.CELLS + ("rnn_relu",))
def test_fastrnn_runner_frozen_or_per_call(backend, cell, states):
    """The bench's inference runs a frozen layer; the kernel function per call
    gives the same bits (its output and final states)."""
    for dtype in (np.float32, np.float64):
        case = _peers.make_case(cell, SHAPE, dtype, initial_states=states)
        y, h = _peers.fastrnn_runner(case, "inference", backend)()
        out = _peers.fastrnn_runner(case, "inference", backend, frozen=False)()
        np.testing.assert_array_equal(y, out.y)
        for got, want in zip(h if cell == "lstm" else (h,), out[1:]):
            assert got.dtype == dtype
            np.testing.assert_array_equal(got[0], want)


@pytest.mark.parametrize("cell", _peers.CELLS)
def test_initial_states_are_the_same_random_states_for_every_run(cell):
    """``initial_states`` adds random states, one per state of the cell, and
    leaves the rest of the case as it was; they change the output."""
    plain = _peers.make_case(cell, SHAPE, np.float64)
    case = _peers.make_case(cell, SHAPE, np.float64, initial_states=True)
    B, _, _, H = SHAPE
    assert plain.states is None and plain.initial() == (None,) * plain.n_states
    assert len(case.states) == case.n_states
    assert all(s.shape == (B, H) and s.dtype == np.float64 and np.all(s != 0)
               for s in case.states)
    for a, b in zip((plain.x, plain.dy) + plain.params, (case.x, case.dy) + case.params):
        np.testing.assert_array_equal(a, b)
    y0 = _peers.fastrnn_runner(plain, "inference", "reference")()[0]
    y1 = _peers.fastrnn_runner(case, "inference", "reference")()[0]
    assert not np.allclose(y0[0], y1[0])
