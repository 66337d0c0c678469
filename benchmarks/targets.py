"""Issue 5's speed targets, read from ``fastrnn bench --json`` reports.

For each target and cell it prints the ratio of every run (``first / second``),
marked ✓ (met in every run), ✗ (in none) or ± (in some). For a miss it also
prints what fastrnn would need, as a fraction of the GEMM limit: the target
ratio times the peer's own fraction of the limit in that run. A need at or
above 1 asks for more than OpenBLAS's GEMM rate. With ``--peak``, the
machine's FMA peak for all the threads (``benchmarks/fma_peak.c``), it also
prints the GFLOP/s a miss needs as a fraction of that peak: no implementation
runs its multiply-adds faster, and a recurrent layer is GEMMs plus
element-wise work that takes the same execution units.

Run: ``python benchmarks/targets.py [--peak GFLOPS] run1.json [run2.json ...]``
"""
import argparse
import json

CELLS = (("rnn_tanh", "RNN"), ("lstm", "LSTM"), ("gru", "GRU"))
#: (label, mode, shape, target, peers the ratio is taken against)
TARGETS = [
    ("inference, latency ≥ 2×", "inference", "latency", 2.0, ("torch", "onnxruntime")),
    ("inference, long ≥ 2×", "inference", "long", 2.0, ("torch", "onnxruntime")),
    ("inference, small ≥ 1.2×", "inference", "small", 1.2, ("torch", "onnxruntime")),
    ("inference, medium ≥ 1.2×", "inference", "medium", 1.2, ("torch", "onnxruntime")),
    ("inference, large ≥ 1.0× (LSTM 0.95×)", "inference", "large", 1.0,
     ("torch", "onnxruntime")),
    ("training vs torch, latency ≥ 3×", "training", "latency", 3.0, ("torch",)),
    ("training vs torch, long ≥ 3×", "training", "long", 3.0, ("torch",)),
    ("training vs torch, small ≥ 1.5×", "training", "small", 1.5, ("torch",)),
    ("training vs torch, medium ≥ 1.5×", "training", "medium", 1.5, ("torch",)),
    ("training vs torch, large ≥ 1.3×", "training", "large", 1.3, ("torch",)),
]
#: oneDNN (torch) runs near the limit there
EXCEPTIONS = {("lstm", "inference", "large"): 0.95}
FRACTIONS = [("fraction of limit, large inference ≥ 0.8", "inference", 0.8),
             ("fraction of limit, large training ≥ 0.7", "training", 0.7)]


def _row(report, cell, shape, mode):
    for r in report["rows"]:
        if (r["cell"], r["shape"], r["mode"]) == (cell, shape, mode):
            return r
    return None


def _mark(met):
    return "✓" if all(met) else "✗" if not any(met) else "±"


def ratio_cell(reports, cell, mode, shape, target, peers):
    """'✓ 1.20× / 1.31×' and, for a miss, the needs; None if a run lacks the case."""
    ratios, needs = [], []
    for report in reports:
        r = _row(report, cell, shape, mode)
        if r is None or not any(p in r["speedup"] for p in peers):
            return None, None
        # the fastest peer: the smallest ratio
        peer = min((p for p in peers if p in r["speedup"]), key=r["speedup"].get)
        ratios.append(r["speedup"][peer])
        peer_gflops = r["flops"] / (r["median_ms"][peer] / 1e3) / 1e9
        needs.append((target * peer_gflops / r["limit_gflops"], r["fraction_of_limit"], peer,
                      target * peer_gflops))
    met = [q >= target for q in ratios]
    text = f"{_mark(met)} " + " / ".join(f"{q:.2f}×" for q in ratios)
    return text, None if all(met) else needs


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reports", nargs="+", help="JSON files written by fastrnn bench --json")
    ap.add_argument("--peak", type=float, default=None,
                    help="the FMA peak of all the threads in GFLOP/s (benchmarks/fma_peak.c)")
    args = ap.parse_args()
    reports = []
    for path in args.reports:
        with open(path) as f:
            reports.append(json.load(f))
    print("| target | " + " | ".join(name for _, name in CELLS) + " |")
    print("|---|---|---|---|")
    misses = []
    for label, mode, shape, target, peers in TARGETS:
        cells = []
        for cell, name in CELLS:
            text, needs = ratio_cell(reports, cell, mode, shape,
                                     EXCEPTIONS.get((cell, mode, shape), target), peers)
            cells.append(text or "-")
            if needs:
                misses.append((f"{name} {mode} {shape}", needs))
        print(f"| {label} | " + " | ".join(cells) + " |")
    for label, mode, target in FRACTIONS:
        cells = []
        for cell, _ in CELLS:
            rows = [_row(rep, cell, "large", mode) for rep in reports]
            if any(r is None for r in rows):
                cells.append("-")
                continue
            got = [r["fraction_of_limit"] for r in rows]
            cells.append(f"{_mark([g >= target for g in got])} "
                         + " / ".join(f"{g:.2f}" for g in got))
        print(f"| {label} | " + " | ".join(cells) + " |")
    if misses:
        print("\nMisses: the fraction of the limit fastrnn would need (target × the "
              "peer's fraction) and the fraction it reached, run by run")
        for case, needs in misses:
            print(f"- {case}: " + "; ".join(
                f"needs {n:.2f} against {p}, reached {g:.2f}"
                + (f" (needs {q:.0f} GFLOP/s, {q / args.peak:.2f} of the FMA peak)"
                   if args.peak else "")
                for n, g, p, q in needs))


if __name__ == "__main__":
    main()
