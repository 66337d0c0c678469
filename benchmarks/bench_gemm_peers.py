"""The GEMM rate of each implementation's BLAS, on the same products.

``fastrnn bench`` measures its limit with SciPy's BLAS (OpenBLAS), which is
what fastrnn's kernels call for their input projections and weight
gradients. The peers bring their own GEMM: ONNX Runtime's MLAS (a one-node
MatMul model) and torch's (``torch.mm``). A peer whose GEMM is faster can
pass fastrnn's limit. This times the three, taking turns as the bench does
(``bench.interleaved_times``), 2 threads, float32, on the 1024³ product of
the limit and on the shapes of the grid's input projections (rows = T*B of
an inference chunk, I, G*H):

    python benchmarks/bench_gemm_peers.py [--rounds 15]
"""
import argparse

import numpy as np

from fastrnn import _parallel, bench

#: (M, K, N): the limit's product; LSTM small (400 rows of 512 -> 2048);
#: LSTM medium (1600 rows of 256 -> 1024)
SHAPES = [(1024, 1024, 1024), (400, 512, 2048), (1600, 256, 1024)]


def scipy_run(a, b):
    from scipy.linalg import blas
    a, b = np.asfortranarray(a), np.asfortranarray(b)
    c = np.zeros((a.shape[0], b.shape[1]), np.float32, order="F")
    return lambda: blas.sgemm(1.0, a, b, 0.0, c, overwrite_c=True)


def onnxruntime_run(a, b, threads):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    (M, K), N = a.shape, b.shape[1]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["A", "B"], ["C"])], "matmul",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [M, K])],
        [helper.make_tensor_value_info("C", TensorProto.FLOAT, [M, N])],
        initializer=[numpy_helper.from_array(b, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return lambda: session.run(None, {"A": a})


def torch_run(a, b, threads):
    import torch
    torch.set_num_threads(threads)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    return lambda: torch.mm(ta, tb)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    threads = 2
    rng = np.random.default_rng(0)
    print(f"# GFLOP/s, median of {args.rounds} interleaved rounds, float32, {threads} threads")
    print("| M x K x N | SciPy (OpenBLAS) | ONNX Runtime (MLAS) | torch |")
    print("|---|---|---|---|")
    with _parallel.limit_threads(threads):
        for M, K, N in SHAPES:
            a = rng.standard_normal((M, K)).astype(np.float32)
            b = rng.standard_normal((K, N)).astype(np.float32)
            names, runs = [], []
            for name, make in (("scipy", lambda: scipy_run(a, b)),
                               ("onnxruntime", lambda: onnxruntime_run(a, b, threads)),
                               ("torch", lambda: torch_run(a, b, threads))):
                try:
                    runs.append(make())
                    names.append(name)
                except ImportError:
                    pass
            times = dict(zip(names, bench.interleaved_times(runs, args.rounds)))
            rate = {n: 2 * M * K * N / float(np.median(t)) / 1e9 for n, t in times.items()}
            cells = [f"{rate[n]:.1f}" if n in rate else "-"
                     for n in ("scipy", "onnxruntime", "torch")]
            print(f"| {M} x {K} x {N} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
