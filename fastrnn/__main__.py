"""``python -m fastrnn [check | bench | demo]``.

- ``check`` (the default) proves the kernels on this machine: it runs every
  cell forward and backward on every available backend, prints the largest
  difference from the NumPy reference (float64, so it shows the kernels' own
  error) and the median time of each backend next to the reference's.
- ``bench`` measures fastrnn against its peers (``fastrnn/bench.py``).
- ``demo`` trains the lesson's sequence models on real data (``fastrnn/demo.py``).
"""
import argparse
import importlib
import os
import sys
import time

import numpy as np

from . import _backends, kernels

CELLS = ("rnn_tanh", "lstm", "gru")


def _call(cell, backend, x, params, dy, training=True):
    n_states = 2 if cell == "lstm" else 1
    fwd = getattr(kernels, ("rnn" if cell.startswith("rnn") else cell) + "_forward")
    bwd = getattr(kernels, ("rnn" if cell.startswith("rnn") else cell) + "_backward")
    extra = {"nonlinearity": cell[4:]} if cell.startswith("rnn") else {}
    out = fwd(x, *([None] * n_states), *params, training=training, backend=backend, **extra)
    grads = bwd(out.workspace, dy)
    return list(out[:-1]) + [g for g in grads if g is not None]


def _median_ms(f, repeats):
    f()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


def check(T, B, I, H, repeats, out=sys.stdout):
    rng = np.random.default_rng(0)
    backends = _backends.available_backends()
    print(f"fastrnn check: T={T} B={B} I={I} H={H}, forward+backward, backends {backends}",
          file=out)
    for name, reason in _backends._errors.items():
        print(f"backend {name!r} not available: {reason}", file=out)
    if "cython" in _backends._errors:
        print("(run from a source checkout? `python -m fastrnn` imports ./fastrnn, which has "
              "no built kernels; use the `fastrnn` command or another directory)", file=out)
    required = [n for n in os.environ.get("FASTRNN_REQUIRE_BACKENDS", "").split(",") if n]
    missing = [n for n in required if n not in backends]
    if missing:
        print(f"FAILED: FASTRNN_REQUIRE_BACKENDS asks for {missing}, not available", file=out)
        return False
    if "cython" in backends:
        from . import _cython_backend
        print(f"cython kernels built for {_cython_backend.ISA} (FASTRNN_ISA to choose)", file=out)
    print(f"{'cell':9s} {'backend':10s} {'max |err| f64':>14s} {'median ms f32':>14s} "
          f"{'vs reference':>12s}", file=out)
    worst = 0.0
    for cell in CELLS:
        G = kernels.N_GATES[cell]
        shapes = [(G * H, I), (G * H, H), (G * H,), (G * H,)]
        params = [rng.uniform(-1, 1, s) / np.sqrt(H) for s in shapes]
        x = rng.standard_normal((T, B, I))
        dy = rng.standard_normal((T, B, H))
        expected = _call(cell, "reference", x, params, dy)
        f32 = [a.astype(np.float32) for a in [x, dy, *params]]
        ref_ms = None
        for backend in ["reference"] + [b for b in backends if b != "reference"]:
            got = _call(cell, backend, x, params, dy)
            err = max(float(np.abs(e - g).max()) for e, g in zip(expected, got))
            worst = max(worst, err)
            ms = _median_ms(lambda: _call(cell, backend, f32[0], f32[2:], f32[1]), repeats)
            ref_ms = ref_ms or ms
            print(f"{cell:9s} {backend:10s} {err:14.2e} {ms:14.3f} {ref_ms / ms:11.1f}x",
                  file=out)
    ok = worst < 1e-9
    print(("OK" if ok else "FAILED") + f": largest difference from the reference {worst:.2e}",
          file=out)
    return ok


#: subcommands with their own module and argument parser: name -> module
SUBCOMMANDS = {"bench": ".bench", "demo": ".demo"}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in SUBCOMMANDS:
        module = importlib.import_module(SUBCOMMANDS[argv[0]], __package__)
        return module.main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m fastrnn", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command")
    c = sub.add_parser("check", help="compare every backend with the reference (default)")
    for name, module in SUBCOMMANDS.items():
        sub.add_parser(name, help=f"see python -m fastrnn {name} --help", add_help=False)
    for p in (parser, c):
        p.add_argument("--shape", type=int, nargs=4, default=(50, 16, 64, 128),
                       metavar=("T", "B", "I", "H"))
        p.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    return 0 if check(*args.shape, repeats=args.repeats) else 1


if __name__ == "__main__":
    sys.exit(main())
