"""The Numba backend next to the Cython one: compile times and speed.

    python benchmarks/bench_numba_vs_cython.py                   # everything
    python benchmarks/bench_numba_vs_cython.py --no-compile      # speed only
    python benchmarks/bench_numba_vs_cython.py --no-speed        # compile times only
    python benchmarks/bench_numba_vs_cython.py --cells lstm --shapes latency,long

Compile times (each in a fresh process, float32):

- *first call*: with an empty ``NUMBA_CACHE_DIR``, the first inference forward,
  training forward and backward of a tiny problem, i.e. compiling that cell's
  two kernels;
- *cached*: the same in a second process with the same cache directory, where
  Numba loads the compiled code from disk. Both also report the import of
  fastrnn and of the Numba backend (importing numba itself dominates).

Speed: median milliseconds of one call, the two backends interleaved in one
process (cython, numba, cython, numba, ...) so that the machine's load drifts
over both alike; BLAS limited to ``--threads`` threads (threadpoolctl). Training
is a forward that keeps its workspace plus the full backward. The issue's
target is numba/cython <= 1.5 on every shape.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

def _peers():
    """fastrnn's benchmark workloads (the grid, the cases, the runners); imported
    late so that the child process can time ``import fastrnn`` itself."""
    from fastrnn import _peers
    return _peers


# -------------------------------------------------------------- compile times

def _child(cell):
    """Run in a fresh process: time the import and the first calls; print JSON."""
    t0 = time.perf_counter()
    import fastrnn
    t1 = time.perf_counter()
    from fastrnn import _backends
    ok = "numba" in fastrnn.available_backends()
    t2 = time.perf_counter()
    if not ok:
        print(json.dumps({"error": _backends._errors.get("numba")}))
        return
    case = _peers().make_case(cell, (2, 3, 4, 5), np.float32)
    t3 = time.perf_counter()
    _peers().fastrnn_runner(case, "inference", "numba")()
    _peers().fastrnn_runner(case, "training", "numba")()
    t4 = time.perf_counter()
    from fastrnn._numba import kernels
    base = "rnn" if cell.startswith("rnn") else cell
    stats = {}
    for name in (f"{base}_forward", f"{base}_backward"):
        s = getattr(kernels, name).stats
        stats[name] = {"hits": sum(s.cache_hits.values()), "misses": sum(s.cache_misses.values())}
    print(json.dumps({"import_fastrnn": t1 - t0, "import_numba_backend": t2 - t1,
                      "first_calls": t4 - t3, "stats": stats}))


def compile_times(cells):
    rows = []
    for cell in cells:
        with tempfile.TemporaryDirectory(prefix="fastrnn-numba-cache-") as cache:
            env = dict(os.environ, NUMBA_CACHE_DIR=cache)
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
            runs = []
            for _ in ("fresh", "cached"):
                out = subprocess.run([sys.executable, __file__, "--child", cell], env=env,
                                     capture_output=True, text=True, check=True)
                runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        rows.append((cell, runs))
    print("\n## Compile time, float32 (seconds; each run a new process)\n")
    print("| cell | run | import fastrnn | import numba backend | first forward+training+backward"
          " | kernels compiled / loaded from cache |")
    print("|---|---|---|---|---|---|")
    for cell, runs in rows:
        for label, r in zip(("empty cache", "cached"), runs):
            if "error" in r:
                print(f"| {cell} | {label} | numba unavailable: {r['error']} | | | |")
                continue
            misses = sum(v["misses"] for v in r["stats"].values())
            hits = sum(v["hits"] for v in r["stats"].values())
            print(f"| {cell} | {label} | {r['import_fastrnn']:.2f} | "
                  f"{r['import_numba_backend']:.2f} | {r['first_calls']:.2f} | "
                  f"{misses} / {hits} |")


# ---------------------------------------------------------------------- speed

def speed(cells, shapes, modes, dtype, min_rounds, budget):
    print(f"\n## Speed, {np.dtype(dtype).name}: median ms per call, interleaved "
          "cython/numba\n")
    print("| cell | shape (B,T,I,H) | mode | cython | numba | numba/cython | rounds |")
    print("|---|---|---|---|---|---|---|")
    worst = 0.0
    for cell in cells:
        for shape_name in shapes:
            shape = _peers().SHAPES[shape_name]
            case = _peers().make_case(cell, shape, dtype)
            for mode in modes:
                runs = {b: _peers().fastrnn_runner(case, mode, b) for b in ("cython", "numba")}
                for run in runs.values():       # warm-up: compilation, first touch
                    run()
                times = {b: [] for b in runs}
                start = time.perf_counter()
                rounds = 0
                while rounds < min_rounds or (time.perf_counter() - start < budget
                                              and rounds < 200):
                    for b, run in runs.items():
                        t = time.perf_counter()
                        run()
                        times[b].append(time.perf_counter() - t)
                    rounds += 1
                med = {b: 1e3 * float(np.median(v)) for b, v in times.items()}
                ratio = med["numba"] / med["cython"]
                worst = max(worst, ratio)
                print(f"| {cell} | {shape_name} {shape} | {mode} | {med['cython']:.3f} | "
                      f"{med['numba']:.3f} | {ratio:.2f} | {rounds} |", flush=True)
    print(f"\nworst numba/cython ratio: {worst:.2f} (target <= 1.5)")


def _cpu():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2, help="BLAS threads (default 2)")
    p.add_argument("--cells", default="rnn_tanh,lstm,gru")
    p.add_argument("--shapes", default="latency,small,medium,large,long")
    p.add_argument("--modes", default="inference,training")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--min-rounds", type=int, default=7)
    p.add_argument("--budget", type=float, default=3.0,
                   help="seconds per cell x shape x mode after min-rounds (default 3)")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--no-speed", action="store_true")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        _child(args.child)
        return
    sys.path.insert(0, ROOT)
    cells = args.cells.split(",")

    import numba
    import scipy
    print("# fastrnn: Numba vs Cython backend\n")
    print(f"command: `python {' '.join(sys.argv)}`  ")
    print(f"python {platform.python_version()}, numpy {np.__version__}, scipy "
          f"{scipy.__version__}, numba {numba.__version__}, {_cpu()}, "
          f"{os.cpu_count()} CPUs, BLAS threads {args.threads}")
    if not args.no_compile:
        compile_times(cells)
    if not args.no_speed:
        import fastrnn
        import scipy.linalg.cython_blas  # noqa: F401  (load SciPy's BLAS so it is limited too)
        missing = {"cython", "numba"} - set(fastrnn.available_backends())
        if missing:
            from fastrnn import _backends
            sys.exit(f"backends not available: {', '.join(sorted(missing))} {_backends._errors}")
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            sys.exit("threadpoolctl is needed to limit the BLAS threads")
        with threadpool_limits(args.threads):
            speed(cells, args.shapes.split(","), args.modes.split(","), np.dtype(args.dtype),
                  args.min_rounds, args.budget)


if __name__ == "__main__":
    main()
