"""``python -m fastrnn bench``: its report, its arguments and the workspace sizes it quotes.

Only what the benchmark computes is checked here; how fast anything runs is
never asserted (that is what the benchmark is for).
"""
import contextlib
import io
import json
import sys

import numpy as np
import pytest

import fastrnn
from fastrnn import _peers, bench, kernels

TINY = "3,5,7,6"
#: the reference keeps its own Python objects; workspace sizes are the kernels'
NATIVE = [b for b in fastrnn.available_backends() if b != "reference"]


def run_bench(tmp_path, *args):
    path = tmp_path / "report.json"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = bench.main(["--shapes", TINY, "--repeats", "2", "--settle", "0.01",
                           "--peers", "none", "--quiet", "--json", str(path), *args])
    assert code == 0
    return json.loads(path.read_text()), out.getvalue()


def test_report_rows_cover_the_grid(tmp_path):
    report, text = run_bench(tmp_path, "--cells", "lstm,gru", "--modes", "inference,training",
                             "--backends", "reference")
    rows = report["rows"]
    assert [(r["cell"], r["mode"]) for r in rows] == [
        ("lstm", "inference"), ("lstm", "training"), ("gru", "inference"), ("gru", "training")]
    for r in rows:
        assert (r["B"], r["T"], r["I"], r["H"]) == (3, 5, 7, 6)
        assert r["best_fastrnn"] == "reference"
        assert r["median_ms"]["reference"] > 0
        # GFLOP/s and the fraction of the limit follow from the median and the FLOP count
        assert r["gflops"] == pytest.approx(r["flops"] / (r["median_ms"]["reference"] / 1e3) / 1e9)
        assert r["limit_gflops"] > 0
        assert r["fraction_of_limit"] == pytest.approx(r["gflops"] / r["limit_gflops"])
        assert r["speedup"] == {}
    assert report["gemm_limit_gflops"] > 0
    assert report["dtype"] == "float32" and report["rounds"] == 2
    assert report["settle_s"] == 0.01
    assert report["initial_states"] is False
    assert "initial states" not in text.splitlines()[0]
    # the table printed on stdout has one line per row
    assert sum(line.startswith("| lstm |") or line.startswith("| gru |")
               for line in text.splitlines()) == 4 + 2      # 4 timing rows, 2 memory rows


def test_initial_states_reach_every_implementation(tmp_path, monkeypatch):
    """``--initial-states``: each case of the run carries random initial
    states (``_peers.make_case``), the report and its header say so."""
    made = []
    real = _peers.make_case

    def spy(*args, **kw):
        made.append(real(*args, **kw))
        return made[-1]
    monkeypatch.setattr(_peers, "make_case", spy)
    report, text = run_bench(tmp_path, "--cells", "lstm,rnn_tanh", "--modes", "inference",
                             "--backends", "reference", "--initial-states")
    assert report["initial_states"] is True
    assert "random initial states" in text.splitlines()[0]
    assert [len(case.states) for case in made] == [2, 1]


def test_flop_count_matches_the_gemms():
    case = _peers.make_case("gru", (3, 5, 7, 6))
    # input and recurrent products: 2 * T * B * (I + H) * 3H multiply-adds, x3 in training
    assert case.flops("inference") == 2 * 5 * 3 * (7 + 6) * 18
    assert case.flops("training") == 3 * case.flops("inference")


@pytest.mark.parametrize("backend", NATIVE)
@pytest.mark.parametrize("cell, values_per_row", [("lstm", 6), ("gru", 5), ("rnn_tanh", 1)])
def test_workspace_holds_what_the_backward_needs(backend, cell, values_per_row):
    """The documented size: per step and batch row, 6H (LSTM), 5H (GRU), H (RNN) values.

    The native backends keep T+1 states (the initial one too), so one more
    state row of H (and c for an LSTM) per sequence.
    """
    B, T, I, H = 3, 5, 7, 6
    case = _peers.make_case(cell, (B, T, I, H), dtype=np.float64)
    held, peak = bench.workspace_memory(case, backend)
    n_states = 2 if cell == "lstm" else 1
    assert held == 8 * B * H * (T * values_per_row + n_states)
    assert peak >= held


@pytest.mark.parametrize("backend", NATIVE)
def test_workspace_size_excludes_the_callers_arrays(backend):
    case = _peers.make_case("rnn_tanh", (2, 4, 300, 3), dtype=np.float64)
    out = kernels.rnn_forward(case.x, None, *case.params, training=True, backend=backend)
    assert out.workspace.nbytes == 8 * 2 * 3 * (4 + 1)     # x (4*2*300 values) not counted


@pytest.mark.parametrize("args, message", [
    (["--shapes", "1,2,3"], "B,T,I,H"),
    (["--shapes", "huge"], "B,T,I,H"),
    (["--cells", "lstm,transformer"], "--cells"),
    (["--modes", "train"], "--modes"),
    (["--backends", "cuda"], "--backends"),
    (["--threads", "0"], "--threads"),
    (["--settle", "-1"], "--settle"),
    (["--settle", "nan"], "--settle"),
])
def test_bad_arguments_name_the_option(capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        bench.main(args)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_shapes_mix_names_and_numbers():
    assert bench._parse_shapes("latency,4,200,96,96,long") == ["latency", (4, 200, 96, 96),
                                                                "long"]


def test_plot_is_written(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "bench.png"
    run_bench(tmp_path, "--cells", "rnn_tanh", "--backends", "reference", "--plot", str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_orders_are_balanced(n):
    """Within the rounds of ``balanced_orders``, each run comes right after
    every other one equally often, so none is always measured in the wake of
    the same neighbour."""
    orders = bench.balanced_orders(n)
    assert all(sorted(order) == list(range(n)) for order in orders)
    follows = {}
    for order in orders:
        for before, after in zip(order, order[1:]):
            follows[before, after] = follows.get((before, after), 0) + 1
    pairs = [(a, b) for a in range(n) for b in range(n) if a != b]
    assert sorted(follows) == sorted(pairs)
    assert len(set(follows.values())) <= 1


def test_interleaved_times_take_turns_in_the_balanced_orders():
    calls = []
    runs = [lambda name=name: calls.append(name) for name in "ABCD"]
    times = bench.interleaved_times(runs, rounds=5, settle_s=0)
    assert [len(t) for t in times] == [5] * 4
    # settle_s=0: each turn is one untimed call and the timed one
    expected = [bench.balanced_orders(4)[r % 4] for r in range(5)]
    assert calls == ["ABCD"[i] for order in expected for i in order for _ in range(2)]


def test_each_turn_settles_before_its_timed_call(monkeypatch):
    """A turn calls its run untimed until ``settle_s`` has passed, then times
    exactly one call. The clock here advances only inside the runs."""
    clock = [0.0]
    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock[0])
    calls = []

    def run(name, seconds):
        def call():
            calls.append(name)
            clock[0] += seconds
        return call

    times = bench.interleaved_times([run("A", 0.03), run("B", 0.25)], rounds=2,
                                    settle_s=0.1)
    # A: untimed calls end at 0.03, 0.06, 0.09, 0.12 (past 0.1), then the timed one;
    # B: one untimed call already passes 0.1, then the timed one
    assert calls == ["A"] * 5 + ["B"] * 2 + ["B"] * 2 + ["A"] * 5
    assert times == [[pytest.approx(0.03)] * 2, [pytest.approx(0.25)] * 2]




def _targets_module():
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).parent.parent / "benchmarks" / "targets.py"
    spec = importlib.util.spec_from_file_location("bench_targets", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_targets_mark_each_run_and_compute_the_needs():
    """benchmarks/targets.py: the ratio against the faster peer, ✓/±/✗ over the
    runs, and for a miss the target times the peer's fraction of the limit."""
    targets = _targets_module()

    def report(vs_ort):
        # fastrnn 1 ms; ONNX Runtime vs_ort ms, torch 4 ms; 1 GFLOP, limit 10 GFLOP/s
        return {"rows": [{"cell": "lstm", "shape": "latency", "mode": "inference",
                          "flops": 1e6, "median_ms": {"cython": 1.0, "onnxruntime": vs_ort,
                                                      "torch": 4.0},
                          "speedup": {"onnxruntime": vs_ort, "torch": 4.0},
                          "limit_gflops": 10.0, "fraction_of_limit": 0.1}]}

    peers = ("torch", "onnxruntime")
    text, needs = targets.ratio_cell([report(2.5), report(3.0)], "lstm", "inference",
                                     "latency", 2.0, peers)
    assert (text, needs) == ("✓ 2.50× / 3.00×", None)
    text, needs = targets.ratio_cell([report(2.5), report(1.6)], "lstm", "inference",
                                     "latency", 2.0, peers)
    assert text == "± 2.50× / 1.60×"
    # ORT at 1.6 ms runs 1e6 flops at 0.625 GFLOP/s: 0.0625 of the limit; 2x
    # needs 0.125 of it, 1.25 GFLOP/s
    assert needs[1] == (pytest.approx(0.125), 0.1, "onnxruntime", pytest.approx(1.25))
    text, _ = targets.ratio_cell([report(1.2)], "lstm", "inference", "latency", 2.0, peers)
    assert text == "✗ 1.20×"
    assert targets.ratio_cell([report(2.5)], "gru", "inference", "latency", 2.0,
                              peers) == (None, None)


def test_targets_print_the_needs_as_a_fraction_of_the_fma_peak(tmp_path, monkeypatch, capsys):
    """``targets.py --peak``: a miss's need in GFLOP/s over the given peak."""
    targets = _targets_module()
    # fastrnn 1 ms, ONNX Runtime 1.6 ms for 1e6 flops: 2x needs 1.25 GFLOP/s
    row = {"cell": "lstm", "shape": "latency", "mode": "inference", "flops": 1e6,
           "median_ms": {"cython": 1.0, "onnxruntime": 1.6}, "speedup": {"onnxruntime": 1.6},
           "limit_gflops": 10.0, "fraction_of_limit": 0.1}
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"rows": [row]}))
    monkeypatch.setattr(sys, "argv", ["targets.py", "--peak", "5", str(path)])
    targets.main()
    out = capsys.readouterr().out
    assert "reached 0.10 (needs 1 GFLOP/s, 0.25 of the FMA peak)" in out
    monkeypatch.setattr(sys, "argv", ["targets.py", str(path)])
    targets.main()
    assert "FMA peak" not in capsys.readouterr().out
