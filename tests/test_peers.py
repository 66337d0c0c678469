"""The benchmark peers compute the same function as fastrnn on the same weights,
so their timings compare like with like."""
import numpy as np
import pytest

from fastrnn import _peers

SHAPE = (3, 7, 5, 6)      # B, T, I, H


@pytest.mark.parametrize("cell", _peers.CELLS + ("rnn_relu",))
def test_onnxruntime_peer_matches_fastrnn(cell):
    pytest.importorskip("onnxruntime")
    case = _peers.make_case(cell, SHAPE, np.float32)
    expected = _peers.fastrnn_runner(case, "inference", "reference")().y
    (y,) = _peers.onnxruntime_runner(case, "inference", threads=1)()
    np.testing.assert_allclose(y[:, 0], expected, rtol=0, atol=2e-6)


@pytest.mark.parametrize("cell", _peers.CELLS)   # onnx.reference's RNN knows only Tanh
def test_onnx_reference_runs_the_peer_model(cell):
    """onnx's own reference evaluator agrees, so the model itself is right."""
    reference_evaluator = pytest.importorskip("onnx.reference")
    case = _peers.make_case(cell, SHAPE, np.float64)
    expected = _peers.fastrnn_runner(case, "inference", "reference")().y
    (y,) = reference_evaluator.ReferenceEvaluator(_peers.onnx_model(case)).run(None, {"X": case.x})
    np.testing.assert_allclose(y[:, 0], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", _peers.MODES)
@pytest.mark.parametrize("cell", _peers.CELLS)
def test_torch_peer_matches_fastrnn(cell, mode):
    torch = pytest.importorskip("torch")
    case = _peers.make_case(cell, SHAPE, np.float64)
    expected = _peers.fastrnn_runner(case, mode, "reference")()
    got = _peers.torch_runner(case, mode, threads=1)()
    if mode == "inference":
        np.testing.assert_allclose(got[0].numpy(), expected.y, rtol=1e-12, atol=1e-12)
    else:
        assert isinstance(got, torch.Tensor)
        np.testing.assert_allclose(got.numpy(), expected.dx, rtol=1e-12, atol=1e-12)
