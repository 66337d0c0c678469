"""What running right after something else does to one fastrnn call.

A call timed right after another implementation's pays for it: the peers'
idle workers spin on (torch's OpenMP, ONNX Runtime's pool, both in their
default configuration), and the core's caches and memory system take a
while to come back (``benchmarks/after_idle.c``). That is why each turn of
``fastrnn bench`` first calls its implementation untimed for a while
(``bench.settle``). This measures what the neighbour alone does to one
call: the same fastrnn call (Cython backend, float32, 2 threads as in the
bench), median of ``--calls`` calls, each preceded by

- ``nothing``:           back to back;
- ``onnxruntime``:       one ONNX Runtime call of the same cell and shape;
- ``torch``:             one torch.nn call of the same cell and shape;
- ``numpy matmul``:      one NumPy product of two (``--blas-size``)² float32
                         matrices, on NumPy's BLAS at the same 2 threads;
- ``busy N ms``:         a Python busy loop (no memory traffic to speak of);
- ``sleep N ms``:        an idle pause.

Then the other way round: that NumPy product timed back to back and right
after the fastrnn call. A user's code around fastrnn is the neighbour here:
OpenBLAS's idle workers spin on after a threaded product (for as long as its
OPENBLAS_THREAD_TIMEOUT says, read when the library loads), and the two take
the cores from each other (README, "Sharing the cores with NumPy's own
BLAS"); run it again with ``OPENBLAS_THREAD_TIMEOUT=4`` in the environment.

Run: ``python benchmarks/bench_interleaving.py [--cell lstm] [--shape latency]
[--calls 60] [--repeats 2] [--blas-size 512]``
"""
import argparse
import time

import numpy as np

from fastrnn import _parallel, _peers


def busy(ms):
    def run():
        end = time.perf_counter() + ms / 1e3
        while time.perf_counter() < end:
            pass
    return run


def pause(ms):
    return lambda: time.sleep(ms / 1e3)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cell", default="lstm", choices=_peers.CELLS)
    ap.add_argument("--shape", default="latency", choices=list(_peers.SHAPES))
    ap.add_argument("--mode", default="inference", choices=_peers.MODES)
    ap.add_argument("--calls", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--blas-size", type=int, default=512,
                    help="n of the NumPy neighbour's n x n x n product")
    args = ap.parse_args()
    a = np.random.default_rng(0).standard_normal((args.blas_size,) * 2).astype(np.float32)

    def matmul():
        return a @ a
    threads = 2
    _parallel.set_num_threads(threads)
    with _parallel.limit_threads(threads):
        case = _peers.make_case(args.cell, args.shape, dtype=np.float32)
        ours = _peers.fastrnn_runner(case, args.mode, "cython")
        before = {"nothing": None}
        for name, make in (("onnxruntime", _peers.onnxruntime_runner),
                           ("torch", _peers.torch_runner)):
            try:
                run = make(case, args.mode, threads)
            except (ImportError, ValueError):   # not installed; ORT has no training
                run = None
            if run is not None:
                before[name] = run
        before["numpy matmul"] = matmul
        for ms in (1, 5):
            before[f"busy {ms} ms"] = busy(ms)
            before[f"sleep {ms} ms"] = pause(ms)
        print(f"# {args.cell} {args.shape} {args.mode}, cython, float32, {threads} threads: "
              f"median ms of {args.calls} calls, each right after ...")
        for repeat in range(args.repeats):
            for name, other in before.items():
                print(f"{name:>14}: {median_after(ours, other, args.calls):.3f}", flush=True)
        print(f"# NumPy's {args.blas_size}^3 float32 product: median ms of {args.calls} "
              "calls, each right after ...")
        for repeat in range(args.repeats):
            for name, other in (("nothing", None), ("fastrnn", ours)):
                print(f"{name:>14}: {median_after(matmul, other, args.calls):.3f}", flush=True)


def median_after(timed, other, calls):
    """Median ms of ``calls`` calls of ``timed``, each right after ``other()``
    (None: back to back)."""
    times = []
    for _ in range(calls):
        if other is not None:
            other()
        t = time.perf_counter()
        timed()
        times.append(time.perf_counter() - t)
    return 1e3 * np.median(times)


if __name__ == "__main__":
    main()
