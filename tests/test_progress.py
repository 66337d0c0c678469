"""The command-line progress bar: one line per interval in logs, nothing when disabled."""
import io

from fastrnn._progress import Progress


def test_log_gets_periodic_lines_and_a_final_one():
    out = io.StringIO()
    bar = Progress(4, "train", unit="batch", stream=out)
    bar.LOG_EVERY = 0.0                 # every update is past the interval
    bar.update(1, loss=0.5)
    bar.update(3, loss=0.25)
    bar.close()
    lines = out.getvalue().replace("\r", "").splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("train [######------------------] 1/4 ")
    assert lines[0].endswith("batch/s loss=0.5")
    assert lines[-1].startswith("train [########################] 4/4 ")
    assert lines[-1].endswith("loss=0.25")


def test_log_is_quiet_between_intervals():
    out = io.StringIO()
    with Progress(100, "bench", stream=out) as bar:      # LOG_EVERY is 30 s
        for _ in range(100):
            bar.update(1)
    assert out.getvalue().count("\n") == 1


def test_disabled_bar_writes_nothing():
    out = io.StringIO()
    with Progress(5, "quiet", stream=out, enabled=False) as bar:
        bar.LOG_EVERY = 0.0
        bar.update(5)
    assert out.getvalue() == ""
