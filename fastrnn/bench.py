"""``python -m fastrnn bench``: fastrnn against its peers, side by side, on this machine.

Every implementation of one cell x shape x mode runs in turn, in balanced
orders (``balanced_orders``), in one process, so the load of a shared machine
slows them all alike. Each turn times one call after a tenth of a second of
untimed calls of the same implementation (``settle``): every implementation is
timed back to back with itself, in its default threading configuration, and
none while another's idle workers still spin. The table gives each one's
median time, fastrnn's GFLOP/s and its fraction of the machine's own measured
GEMM rate (the limit: a recurrent layer is GEMMs plus element-wise work, so it
cannot run faster than BLAS multiplies), and the ratio of each peer's median
to fastrnn's (above 1: fastrnn is faster).

Examples
--------
    python -m fastrnn bench                          # the whole grid, float32, 2 threads
    python -m fastrnn bench --cells lstm --shapes small,large --modes inference
    python -m fastrnn bench --shapes 4,200,96,96 --json run.json --plot run.png
    python -m fastrnn bench --shapes 8,1,256,256 --modes inference --initial-states
                                                     # one step of a stream, its state given
"""
import argparse
import contextlib
import datetime
import importlib.util
import json
import os
import platform
import sys
import time
import tracemalloc

import numpy as np

from . import _backends, _parallel, _peers
from ._progress import Progress

PEERS = ("torch", "onnxruntime")


# -- the machine ------------------------------------------------------------

def cpu_model():
    """The CPU's marketing name (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gemm_run(dtype, n=1024):
    """A run of the BLAS fastrnn calls (SciPy's) on an n x n x n product, and its flops.

    Its rate, with the thread count in force, is the machine's practical peak:
    the limit the recurrent layers are measured against. The bench times it in
    the same turns as the implementations, so each case's limit is measured
    under the load the case itself met.
    """
    from scipy.linalg import blas
    gemm = blas.sgemm if np.dtype(dtype) == np.float32 else blas.dgemm
    rng = np.random.default_rng(0)
    a = np.asfortranarray(rng.standard_normal((n, n)).astype(dtype))
    b = np.asfortranarray(rng.standard_normal((n, n)).astype(dtype))
    c = np.zeros((n, n), dtype, order="F")
    return (lambda: gemm(1.0, a, b, 0.0, c, overwrite_c=True)), 2 * n ** 3


def versions():
    out = {"python": platform.python_version(), "numpy": np.__version__}
    for name in ("scipy", "numba", "torch", "onnxruntime"):
        if importlib.util.find_spec(name):
            out[name] = getattr(__import__(name), "__version__", "?")
    import fastrnn
    out["fastrnn"] = fastrnn.__version__
    if "cython" in _backends.available_backends():
        from . import _cython_backend
        out["fastrnn_cython_isa"] = _cython_backend.ISA
    return out


# -- measuring --------------------------------------------------------------

def balanced_orders(n):
    """Orders of ``range(n)`` in which every run comes right after every other
    one equally often: the rows of a Williams design (a balanced Latin square;
    two of them when n is odd). For n = 4: 0 1 3 2, 1 2 0 3, 2 3 1 0, 3 0 2 1.
    """
    base, low, high = [0], 1, n - 1
    while len(base) < n:
        base.append(low)
        low += 1
        if len(base) < n:
            base.append(high)
            high -= 1
    orders = [[(i + r) % n for i in base] for r in range(n)]
    if n % 2:
        orders += [order[::-1] for order in orders]
    return orders


#: seconds of untimed calls that open each turn (see ``interleaved_times``):
#: longer than the 105 ms that SciPy's OpenBLAS workers spin after the
#: limit's threaded sgemm (``settle``)
SETTLE_S = 0.15


def settle(run, seconds=SETTLE_S):
    """Call ``run`` untimed until ``seconds`` have passed (at least once).

    torch's OpenMP workers, ONNX Runtime's pool and OpenBLAS's workers after
    the limit's threaded sgemm keep spinning after a call (on the development
    machines about 8 ms, 60 ms and 103-107 ms: the CPU time of their threads
    after one call), which takes a core from whatever runs next; and
    a call also runs slower after anything else has used the core for a while
    (``benchmarks/bench_interleaving.py``). Calls made until the previous
    implementation's workers have gone quiet bring ``run`` to the state of
    calls back to back, in which every implementation is timed.
    """
    start = time.perf_counter()
    run()
    while time.perf_counter() - start < seconds:
        run()


def interleaved_times(runs, rounds, bar=None, settle_s=SETTLE_S):
    """Seconds of one call of each run in each round, the runs taking turns.

    Each turn first ``settle``s the run for ``settle_s`` seconds, then times
    one call. So every implementation is timed back to back with itself, in
    the threading configuration it has by default (the peers' spinning
    workers included), and never while another one's workers still spin.
    The turns follow ``balanced_orders``: over its rows, each run comes after
    every other one equally often, so slow drift of a shared machine and
    whatever a turn leaves behind fall on all of them alike. The first turn's
    untimed calls also take JIT compilation and first-touch allocation.
    """
    orders = balanced_orders(len(runs))
    times = [[] for _ in runs]
    for r in range(rounds):
        for i in orders[r % len(orders)]:
            settle(runs[i], settle_s)
            t = time.perf_counter()
            runs[i]()
            times[i].append(time.perf_counter() - t)
            if bar is not None:
                bar.update(1)
    return times


def workspace_memory(case, backend):
    """Training memory of one call: (bytes the workspace holds, peak bytes allocated).

    The peak comes from ``tracemalloc``, which sees NumPy's allocations; it
    includes the outputs and the short-lived scratch of the forward.
    """
    forward, _, extra = _peers._kernel_functions(case.cell)
    states = (None,) * case.n_states
    forward(case.x, *states, *case.params, training=True, backend=backend, **extra)
    tracemalloc.start()
    try:
        out = forward(case.x, *states, *case.params, training=True, backend=backend, **extra)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return out.workspace.nbytes, peak


def _runner(impl, case, mode, threads):
    if impl == "torch":
        return _peers.torch_runner(case, mode, threads)
    if impl == "onnxruntime":
        return _peers.onnxruntime_runner(case, mode, threads) if mode == "inference" else None
    return _peers.fastrnn_runner(case, mode, impl)


def run(cells, shapes, modes, dtype, backends, peers, threads, rounds, progress=True,
        settle_s=SETTLE_S, initial_states=False):
    """Measure the grid with ``threads`` threads; returns the report as a JSON-able dict.
    ``initial_states``: every implementation starts from the same random
    states (``_peers.make_case``), not from zeros left out."""
    saved = _parallel.get_num_threads()
    _parallel.set_num_threads(threads)      # fastrnn's own threads: the split batch
    try:
        with _parallel.limit_threads(threads) or contextlib.nullcontext():
            return _measure(cells, shapes, modes, np.dtype(dtype), backends, peers, threads,
                            rounds, progress, settle_s, initial_states)
    finally:
        _parallel.set_num_threads(saved)


def _measure(cells, shapes, modes, dtype, backends, peers, threads, rounds, progress,
             settle_s, initial_states):
    limit_run, limit_flops = gemm_run(dtype)
    impls = list(backends) + list(peers)
    jobs = [(c, s, m) for c in cells for s in shapes for m in modes]
    n_runs = sum(len([i for i in impls if not (i == "onnxruntime" and m == "training")]) + 1
                 for _, _, m in jobs)
    rows = []
    with Progress(n_runs * rounds, "bench", unit="run", enabled=progress) as bar:
        for cell, shape, mode in jobs:
            case = _peers.make_case(cell, shape, dtype=dtype, initial_states=initial_states)
            bar.update(0, case=f"{cell}/{_shape_name(shape)}/{mode}")
            names, runs = [], []
            for impl in impls:
                r = _runner(impl, case, mode, threads)
                if r is not None:
                    names.append(impl)
                    runs.append(r)
            times = interleaved_times(runs + [limit_run], rounds, bar, settle_s)
            rows.append(_row(case, cell, shape, mode, names, times[:-1], backends))
            rows[-1]["limit_gflops"] = limit_flops / float(np.median(times[-1])) / 1e9
            rows[-1]["fraction_of_limit"] = rows[-1]["gflops"] / rows[-1]["limit_gflops"]
            if mode == "training":
                best = min(backends, key=lambda b: rows[-1]["median_ms"][b])
                held, peak = workspace_memory(case, best)
                T = case.x.shape[0]
                rows[-1]["workspace"] = {"backend": best, "bytes": held,
                                         "bytes_per_step": held / T, "peak_bytes": peak}
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": "python -m fastrnn bench " + " ".join(sys.argv[2:]),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                    "platform": platform.platform()},
        "versions": versions(),
        "threads": threads, "dtype": dtype.name, "rounds": rounds, "settle_s": settle_s,
        "initial_states": initial_states,
        # the fractions use each case's own limit; this is their median
        "gemm_limit_gflops": float(np.median([r["limit_gflops"] for r in rows])),
        "rows": rows,
    }


def _shape_name(shape):
    return shape if isinstance(shape, str) else "x".join(map(str, shape))


def _row(case, cell, shape, mode, names, times, backends):
    med = {n: 1e3 * float(np.median(t)) for n, t in zip(names, times)}
    spread = {n: [1e3 * float(q) for q in np.percentile(t, [25, 75])]
              for n, t in zip(names, times)}
    best = min(backends, key=med.get)
    gflops = case.flops(mode) / (med[best] / 1e3) / 1e9
    T, B, I = case.x.shape
    return {
        "cell": cell, "shape": _shape_name(shape), "B": B, "T": T, "I": I,
        "H": case.params[1].shape[1], "mode": mode, "flops": case.flops(mode),
        "median_ms": med, "iqr_ms": spread,
        "best_fastrnn": best, "gflops": gflops,
        "speedup": {n: med[n] / med[best] for n in names if n not in backends},
    }


# -- reporting --------------------------------------------------------------

def table(report, backends, peers):
    """The report as a Markdown table (the form RESULTS.md keeps)."""
    impls = list(backends) + list(peers)
    head = (["cell", "shape", "mode"] + [f"{i} ms" for i in impls]
            + ["GFLOP/s", "limit GFLOP/s", "of limit"] + [f"vs {p}" for p in peers])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["rows"]:
        cells = [r["cell"], r["shape"], r["mode"]]
        for i in impls:
            ms = r["median_ms"].get(i)
            text = "-" if ms is None else f"{ms:.3g}" if ms < 1 else f"{ms:.2f}"
            cells.append(f"**{text}**" if i == r["best_fastrnn"] else text)
        cells += [f"{r['gflops']:.1f}", f"{r['limit_gflops']:.1f}",
                  f"{r['fraction_of_limit']:.2f}"]
        cells += [f"{r['speedup'][p]:.2f}x" if p in r["speedup"] else "-" for p in peers]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def memory_table(report):
    lines = ["| cell | shape | backend | workspace MiB | bytes per step | peak MiB (tracemalloc) |",
             "|---|---|---|---|---|---|"]
    for r in report["rows"]:
        w = r.get("workspace")
        if w:
            lines.append(f"| {r['cell']} | {r['shape']} | {w['backend']} | "
                         f"{w['bytes'] / 2**20:.2f} | {w['bytes_per_step']:.0f} | "
                         f"{w['peak_bytes'] / 2**20:.2f} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def plot(report, backends, peers, path):
    """Grouped bars of GFLOP/s per implementation, one panel per mode."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install matplotlib") from None
    impls = list(backends) + list(peers)
    modes = list(dict.fromkeys(r["mode"] for r in report["rows"]))
    fig, axes = plt.subplots(len(modes), 1, figsize=(12, 4 * len(modes)), squeeze=False)
    for ax, mode in zip(axes[:, 0], modes):
        rows = [r for r in report["rows"] if r["mode"] == mode]
        x = np.arange(len(rows))
        width = 0.8 / len(impls)
        for k, impl in enumerate(impls):
            rate = [r["flops"] / (r["median_ms"][impl] / 1e3) / 1e9
                    if impl in r["median_ms"] else 0 for r in rows]
            ax.bar(x + (k - (len(impls) - 1) / 2) * width, rate, width, label=impl)
        ax.axhline(report["gemm_limit_gflops"], color="k", ls="--", lw=1,
                   label="GEMM limit (median of the cases')")
        ax.set_xticks(x, [f"{r['cell']}\n{r['shape']}" for r in rows], fontsize=8)
        ax.set_ylabel("GFLOP/s")
        ax.set_title(f"{mode}, {report['dtype']}, {report['threads']} threads, "
                     f"{report['machine']['cpu']}")
        ax.legend(fontsize=8, ncol=len(impls) + 1)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# -- command line -----------------------------------------------------------

def _parse_shapes(text):
    shapes = []
    for item in _split_shapes(text):
        if item in _peers.SHAPES:
            shapes.append(item)
            continue
        try:
            dims = tuple(int(v) for v in item.split(","))
        except ValueError:
            dims = ()
        if len(dims) != 4 or min(dims) < 1:
            raise argparse.ArgumentTypeError(
                f"--shapes: expected names from {sorted(_peers.SHAPES)} or B,T,I,H with "
                f"positive integers, got {item!r}")
        shapes.append(dims)
    return shapes


def _split_shapes(text):
    """'latency,4,200,96,96,long' -> ['latency', '4,200,96,96', 'long']."""
    out, nums = [], []
    for tok in text.split(","):
        if tok.strip().isdigit():
            nums.append(tok.strip())
            if len(nums) == 4:
                out.append(",".join(nums))
                nums = []
        else:
            if nums:
                out.append(",".join(nums))
                nums = []
            out.append(tok.strip())
    if nums:
        out.append(",".join(nums))
    return out


def _choices(name, allowed):
    def parse(text):
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(
                f"{name}: expected a comma-separated subset of {list(allowed)}, got {text!r}")
        return items
    return parse


def main(argv=None):
    available = _backends.available_backends()
    installed_peers = [p for p in PEERS if importlib.util.find_spec(p)]
    native = [b for b in available if b != "reference"]
    parser = argparse.ArgumentParser(prog="python -m fastrnn bench",
                                     description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.split("\n")[1:]))
    parser.add_argument("--cells", type=_choices("--cells", ("rnn_tanh", "rnn_relu", "lstm",
                                                             "gru")),
                        default=list(_peers.CELLS))
    parser.add_argument("--shapes", type=_parse_shapes, default=list(_peers.SHAPES),
                        help="names (%s) or B,T,I,H; comma-separated" % ",".join(_peers.SHAPES))
    parser.add_argument("--modes", type=_choices("--modes", _peers.MODES),
                        default=list(_peers.MODES))
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--backends", type=_choices("--backends", available),
                        default=native or ["reference"],
                        help=f"fastrnn backends (default: {','.join(native)})")
    parser.add_argument("--peers", type=_choices("--peers", PEERS + ("none",)),
                        default=installed_peers or ["none"],
                        help="peers to compare with (default: the installed ones: "
                             f"{','.join(installed_peers) or 'none'})")
    parser.add_argument("--threads", type=int, default=2,
                        help="threads for fastrnn, BLAS, torch and ONNX Runtime (default 2)")
    parser.add_argument("--repeats", type=int, default=7,
                        help="interleaved rounds; the median is reported (default 7)")
    parser.add_argument("--settle", type=float, default=SETTLE_S, metavar="SECONDS",
                        help="untimed calls of an implementation before each timed one, "
                             f"so no other one's threads still spin (default {SETTLE_S})")
    parser.add_argument("--initial-states", action="store_true",
                        help="start every implementation from the same random initial states, "
                             "as a model carrying its state between calls does, instead of "
                             "zeros left out (ONNX Runtime's RNN then skips its first step's "
                             "recurrent product)")
    parser.add_argument("--json", metavar="FILE", help="write the full report ('-': stdout)")
    parser.add_argument("--plot", metavar="FILE.png", help="bar chart of GFLOP/s per shape")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    peers = [p for p in args.peers if p != "none"]
    missing = [p for p in peers if p not in installed_peers]
    if missing:
        parser.error(f"--peers: {missing} not installed (pip install 'fastrnn[peers]'; "
                     "torch: pip install torch --index-url https://download.pytorch.org/whl/cpu)")
    if args.threads < 1 or args.repeats < 1:
        parser.error("--threads and --repeats must be at least 1")
    if not args.settle >= 0:
        parser.error(f"--settle must be a number of seconds >= 0, got {args.settle}")

    report = run(args.cells, args.shapes, args.modes, args.dtype, args.backends, peers,
                 args.threads, args.repeats, progress=not args.quiet, settle_s=args.settle,
                 initial_states=args.initial_states)
    isa = report["versions"].get("fastrnn_cython_isa")
    print(f"# {report['machine']['cpu']}, {report['machine']['cores']} cores; "
          f"{args.threads} threads, {args.dtype}, median of {args.repeats} interleaved rounds, "
          f"each call after {args.settle:g} s of the same implementation's"
          + ("; random initial states" if args.initial_states else "")
          + (f"; cython kernels for {isa}" if isa else ""))
    print(f"# GEMM limit (SciPy BLAS, 1024^3, timed in every case's turns): median "
          f"{report['gemm_limit_gflops']:.1f} GFLOP/s; "
          "bold: the faster fastrnn backend, whose GFLOP/s and ratios are shown\n")
    print(table(report, args.backends, peers))
    mem = memory_table(report)
    if mem:
        print("\n# training workspace (what the backward needs)\n")
        print(mem)
    if args.json:
        text = json.dumps(report, indent=1)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
    if args.plot:
        plot(report, args.backends, peers, args.plot)
    return 0
