"""``python -m fastrnn demo``: end to end in its quick configuration, reproducible
with a seed, and its data, options and helpers.
"""
import re
import subprocess
import sys

import numpy as np
import pytest

import fastrnn
from fastrnn import demo


def test_demo_runs_end_to_end_in_the_quick_configuration(capsys):
    pytest.importorskip("sklearn")
    assert demo.main(["--quick", "--quiet", "--seed", "1"]) == 0
    out, err = capsys.readouterr()
    assert err == ""                                     # --quiet: no progress bars
    assert out.startswith("fastrnn demo: backend ")
    rows = re.findall(r"^\| (digits \(T=64\)|charlm \(\d+ kB\)) \| (\w+) H=(\d+) \| "
                      r"(accuracy|perplexity) ([\d.]+)%? \| (-|[\d.e+-]+) \| ([\d.]+) s \| "
                      r"([\d,]+) (seq|char)/s \| (-|[\d.]+x) \|$", out, flags=re.M)
    assert [(r[1], r[2], r[3]) for r in rows] == [
        ("rnn_tanh", "16", "accuracy"), ("lstm", "16", "accuracy"), ("gru", "16", "accuracy"),
        ("lstm", "32", "perplexity")]
    for _, _, _, metric, value, reach, seconds, rate, _, speed in rows:
        value = float(value)
        assert 0 <= value <= 100 if metric == "accuracy" else 1 < value < 200
        assert (reach == "-") == (metric == "perplexity") and (reach == "-" or float(reach) > 0)
        assert float(seconds) >= 0 and int(rate.replace(",", "")) > 0
        assert speed == "-" or float(speed[:-1]) > 0
    sample = re.search(r"sample at temperature 0.7:\n-{60}\n(.*?)\n-{60}", out, flags=re.S)
    assert sample and sample.group(1).startswith("def ") and len(sample.group(1)) == 4 + 80


def test_char_lm_is_reproducible_with_a_seed_and_learns():
    cfg = demo.QUICK[1]
    a, b, c = (demo.run_charlm(cfg, "lstm", "auto", seed, quiet=True) for seed in (0, 0, 1))
    assert a.losses == b.losses and a.sample == b.sample and a.row.value == b.row.value
    assert a.losses != c.losses
    # a uniform guess over the alphabet costs log(V) nats; training gets well below it
    assert a.losses[0] > 0.9 * np.log(len(set(demo.stdlib_text(cfg.text_chars))))
    assert np.mean(a.losses[-5:]) < 0.8 * a.losses[0]


def test_digits_are_pixel_sequences_split_by_the_seed():
    pytest.importorskip("sklearn")
    X_train, X_test, y_train, y_test = demo.digits_sequences(seed=0, test_fraction=0.2)
    assert X_train.shape == (1437, 64, 1) and X_test.shape == (360, 64, 1)
    assert X_train.dtype == np.float32 and X_train.min() == 0 and X_train.max() == 1
    assert sorted(set(y_test)) == list(range(10))
    again = demo.digits_sequences(seed=0, test_fraction=0.2)
    np.testing.assert_array_equal(again[0], X_train)
    assert not np.array_equal(demo.digits_sequences(seed=1, test_fraction=0.2)[0], X_train)


def test_stdlib_text_and_streams():
    text = demo.stdlib_text(5000)
    assert len(text) == 5000 and text == demo.stdlib_text(5000) and "def " in text
    chars = sorted(set(text))
    ids = demo._encode(text, chars)
    assert "".join(chars[i] for i in ids) == text
    s = demo.streams(np.arange(10), 3)                   # 3 columns of 3, the rest dropped
    np.testing.assert_array_equal(s, [[0, 3, 6], [1, 4, 7], [2, 5, 8]])


def test_command_line_options_override_both_tasks():
    args = demo.parse_args(["--task", "digits", "--cell", "gru", "lstm", "--epochs", "2",
                            "--hidden", "8", "--seed", "5", "--backend", "reference"])
    digits, charlm = demo.configs(args)
    assert (digits.cells, digits.epochs, digits.hidden) == (("gru", "lstm"), 2, 8)
    assert (charlm.cells, charlm.epochs, charlm.hidden) == (("gru", "lstm"), 2, 8)
    assert args.task == "digits" and args.seed == 5 and args.backend == "reference"
    defaults = demo.configs(demo.parse_args([]))
    assert defaults == (demo.DigitsConfig(), demo.CharLMConfig())
    assert defaults[0].cells == ("rnn_tanh", "lstm", "gru") and defaults[1].cells == ("lstm",)
    for bad in (["--epochs", "0"], ["--cell", "lsmt"], ["--task", "mnist"]):
        with pytest.raises(SystemExit):
            demo.parse_args(bad)


def test_speedup_is_not_measured_against_itself_and_restores_the_backend():
    layer = fastrnn.GRU(2, 3, backend="reference", rng=0)
    assert demo.speedup_over_reference(lambda: None, [layer], "reference") is None
    native = [b for b in fastrnn.available_backends() if b != "reference"]
    if native:
        x = np.zeros((4, 2, 2), np.float32)
        ratio = demo.speedup_over_reference(lambda: layer(x), [layer], native[0], repeats=1)
        assert ratio > 0 and layer.backend == "reference"


def test_python_dash_m_fastrnn_demo_dispatches_here():
    result = subprocess.run([sys.executable, "-m", "fastrnn", "demo", "--help"],
                            capture_output=True, text=True, check=True)
    assert "--quick" in result.stdout and "--cell" in result.stdout
