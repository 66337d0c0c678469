"""Options for the benchmark suite: which implementations, and how many threads."""
import pytest


def pytest_addoption(parser):
    group = parser.getgroup("fastrnn benchmarks")
    group.addoption("--threads", type=int, default=2,
                    help="threads for BLAS, torch and ONNX Runtime (default 2)")
    group.addoption("--impls", default="cython,numba,torch,onnxruntime",
                    help="comma-separated implementations to run; add 'reference' for "
                         "the NumPy reference (slow)")
    group.addoption("--shapes", default="latency,small,medium,large,long",
                    help="comma-separated shapes of fastrnn._peers.SHAPES")


@pytest.fixture(scope="session")
def threads(request):
    n = request.config.getoption("--threads")
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield n
        return
    # one BLAS thread pool per library, each limited to the same count
    with threadpool_limits(n):
        yield n
