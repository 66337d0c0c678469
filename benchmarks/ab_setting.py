"""A/B: settings of fastrnn's Python modules, alternating in one process.

Each setting is a list of ``module.ATTRIBUTE=value`` assignments (value a
Python literal) applied before every timed call, every other attribute that
some setting names back at its default, so the settings take turns
call by call in ``bench.interleaved_times``' balanced orders; float32, 2
threads, as the bench. Prints medians and, for each setting after the first,
the median of the per-round ratios of the first setting's time to it (above
1: faster than the first). The figures in benchmarks/RESULTS.md for the
memory cache, the projection chunks and the K-major copies came from
settings like these::

    python benchmarks/ab_setting.py --cells gru,lstm --shapes large --modes training \\
        "_buffers.POOLED_MIN_BYTES=1<<62" "_buffers.POOLED_MIN_BYTES=1<<20"
    python benchmarks/ab_setting.py --modes inference "_buffers.CHUNK_ROWS=256" \\
        "_buffers.CHUNK_ROWS=1024"
    python benchmarks/ab_setting.py --backend numba --shapes medium,large \\
        "_numba_backend.K_MAJOR_COPY=True" "_numba_backend.K_MAJOR_COPY=False"

Inference runs a frozen layer, as the bench does, one for each setting: a
frozen layer makes a shape's decisions and derives its operands at its first
call and keeps them. ``--per-call`` runs the kernel functions instead, which
decide and derive on every call, for settings of the derivation itself (the
panels' packing and alignment), whose effect also depends on where each
call's fresh panels land.

Modules are named relative to ``fastrnn`` (``_buffers``, ``_cython_backend``,
``_numba_backend``, ``_parallel``, ...); several assignments in one setting
are separated by ``;``.
"""
import argparse
import ast
import importlib

import numpy as np

from fastrnn import _parallel, _peers, bench


def parse_setting(text):
    """``[(module, attribute, value)]`` from ``"mod.ATTR=value; mod2.ATTR2=value2"``."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        target, _, literal = part.partition("=")
        name, _, attr = target.strip().rpartition(".")
        if not name or not attr or not literal:
            raise SystemExit(f"a setting is module.ATTRIBUTE=value, got {part!r}")
        module = importlib.import_module(f"fastrnn.{name}")
        if not hasattr(module, attr):
            raise SystemExit(f"fastrnn.{name} has no attribute {attr!r}")
        value = eval(compile(ast.parse(literal.strip(), mode="eval"), "<setting>", "eval"),
                     {"__builtins__": {}})
        out.append((module, attr, value))
    return out


def applier(texts):
    """``apply(k)``: setting k's assignments (``texts[k]``), every attribute
    some setting names back at its default first, so that a setting that
    leaves one out does not inherit the last turn's value; ``apply(None)``:
    the defaults."""
    settings = [parse_setting(t) for t in texts]
    saved = {(m, a): getattr(m, a) for s in settings for m, a, _ in s}

    def apply(k):
        for (module, attr), value in saved.items():
            setattr(module, attr, value)
        for module, attr, value in ([] if k is None else settings[k]):
            setattr(module, attr, value)
    return apply


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("settings", nargs="+", help="module.ATTRIBUTE=value[; ...], two or more")
    p.add_argument("--rounds", type=int, default=11)
    p.add_argument("--cells", default="rnn_tanh,lstm,gru")
    p.add_argument("--shapes", default=",".join(_peers.SHAPES),
                   help="grid names or B,T,I,H (as fastrnn bench)")
    p.add_argument("--modes", default="inference,training")
    p.add_argument("--backend", default="cython")
    p.add_argument("--per-call", action="store_true",
                   help="inference through the kernel functions, which decide and derive "
                        "their operands from the weights on every call, instead of a frozen "
                        "layer for each setting, which does that at its first call (for "
                        "settings of the derivation itself: packing, alignment)")
    args = p.parse_args()
    if len(args.settings) < 2:
        raise SystemExit("give two settings or more to compare")
    apply = applier(args.settings)
    _parallel.set_num_threads(2)
    handle = _parallel.limit_threads(2)     # noqa: F841 (BLAS at 2 threads while it lives)
    names = [f"[{k}]" for k in range(len(args.settings))]
    for name, text in zip(names, args.settings):
        print(f"# {name} {text}")
    print(f"# rounds={args.rounds}, backend {args.backend}; medians in ms; "
          f"[0]/[k]: median of per-round ratios")
    print("| cell | shape | mode | " + " | ".join(f"{n} ms" for n in names) + " | "
          + " | ".join(f"[0]/{n}" for n in names[1:]) + " |")
    print("|---" * (3 + 2 * len(names) - 1) + "|")
    try:
        for cell in args.cells.split(","):
            for shape in bench._parse_shapes(args.shapes):
                for mode in args.modes.split(","):
                    case = _peers.make_case(cell, shape, dtype=np.float32)

                    def with_setting(k):
                        # a frozen layer of its own: it decides at its first
                        # call, under this setting, and keeps the decisions
                        run = _peers.fastrnn_runner(case, mode, args.backend,
                                                    frozen=not args.per_call)

                        def call():
                            apply(k)
                            return run()
                        return call
                    times = [np.array(t) for t in bench.interleaved_times(
                        [with_setting(k) for k in range(len(args.settings))], args.rounds)]
                    medians = " | ".join(f"{np.median(t) * 1e3:.3g}" for t in times)
                    ratios = " | ".join(f"{np.median(times[0] / t):.3f}" for t in times[1:])
                    print(f"| {cell} | {shape} | {mode} | {medians} | {ratios} |", flush=True)
    finally:
        apply(None)


if __name__ == "__main__":
    main()
