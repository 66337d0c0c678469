"""Options for the benchmark suite: which implementations, and how many threads."""
import pytest


def pytest_addoption(parser):
    group = parser.getgroup("fastrnn benchmarks")
    group.addoption("--threads", type=int, default=2,
                    help="threads for fastrnn, BLAS, torch and ONNX Runtime (default 2)")
    group.addoption("--impls", default="cython,numba,torch,onnxruntime",
                    help="comma-separated implementations to run; add 'reference' for "
                         "the NumPy reference (slow)")
    group.addoption("--shapes", default="latency,small,medium,large,long",
                    help="comma-separated shapes of fastrnn._peers.SHAPES")


@pytest.fixture(scope="session")
def threads(request):
    """The thread count of fastrnn, BLAS, torch and ONNX Runtime for the session."""
    import fastrnn
    from threadpoolctl import threadpool_limits
    n = request.config.getoption("--threads")
    fastrnn.available_backends()        # load SciPy's BLAS first, or the limit misses it
    saved = fastrnn.get_num_threads()
    fastrnn.set_num_threads(n)
    # one BLAS thread pool per library, each limited to the same count
    with threadpool_limits(n):
        yield n
    fastrnn.set_num_threads(saved)
