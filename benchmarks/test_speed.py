"""Speed of fastrnn's backends next to PyTorch and ONNX Runtime (CPU).

    pytest benchmarks/ --benchmark-only                # the whole grid
    pytest benchmarks/ --benchmark-only --shapes latency,long --impls cython,torch

Each benchmark is one cell x shape x mode x implementation; the groups put the
implementations of one cell x shape x mode side by side. Training is a forward
that keeps its workspace plus the full backward (gradients of x, the initial
states and every weight and bias). Before its rounds, each benchmark calls its
implementation untimed for a tenth of a second (``fastrnn.bench.settle``): that
keeps JIT compilation and first-touch allocation out of the timings, and lets
the previous benchmark's spinning workers (torch's OpenMP, ONNX Runtime's pool)
go quiet.
"""
import importlib.util

import pytest

import fastrnn
from fastrnn import _peers, bench


def _impls(config):
    return config.getoption("--impls").split(",")


def pytest_generate_tests(metafunc):
    if {"impl", "shape"} <= set(metafunc.fixturenames):
        metafunc.parametrize("impl", _impls(metafunc.config))
        metafunc.parametrize("shape", metafunc.config.getoption("--shapes").split(","))


def _runner(impl, case, mode, threads):
    if impl in ("cython", "numba", "reference"):
        if impl not in fastrnn.available_backends():
            pytest.skip(f"backend {impl} is not available")
        return _peers.fastrnn_runner(case, mode, impl)
    if importlib.util.find_spec(impl) is None:
        pytest.skip(f"{impl} is not installed")
    if impl == "torch":
        return _peers.torch_runner(case, mode, threads)
    if impl == "onnxruntime":
        if mode == "training":
            pytest.skip("ONNX Runtime runs inference only")
        return _peers.onnxruntime_runner(case, mode, threads)
    raise pytest.UsageError(f"unknown implementation {impl!r}")


@pytest.mark.parametrize("mode", _peers.MODES)
@pytest.mark.parametrize("cell", _peers.CELLS)
def test_speed(benchmark, threads, cell, shape, mode, impl):
    case = _peers.make_case(cell, shape)
    run = _runner(impl, case, mode, threads)
    benchmark.group = f"{cell} {shape} {mode}"
    benchmark.extra_info["gflops"] = case.flops(mode) / 1e9
    bench.settle(run)
    benchmark.pedantic(run, warmup_rounds=0, rounds=max(3, min(20, int(2e9 / case.flops(mode)))),
                       iterations=1)
