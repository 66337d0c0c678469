"""A dependency-free progress bar for the command-line tools (bench, demo).

On a terminal it redraws one line in place; elsewhere (CI logs, pipes) it
prints a line every ``LOG_EVERY`` seconds and one when it closes, so a log
shows that a long run is alive without hundreds of lines.
"""
import sys
import time


class Progress:
    """Count work done, show it with a rate and free-form fields.

    Parameters
    ----------
    total : int
        Units of work expected (steps, batches, measurements).
    desc : str
        Label printed before the bar.
    unit : str
        Name of one unit, used in the rate ("12.3 batch/s").
    stream : file, optional
        Where to draw; standard error by default, so the results on standard
        output stay clean to pipe.
    enabled : bool, optional
        False silences the bar entirely (``--quiet``, tests).

    Examples
    --------
    >>> with Progress(10, "train", unit="batch", enabled=False) as bar:
    ...     for _ in range(10):
    ...         bar.update(1, loss=0.5)
    """

    WIDTH = 24
    #: seconds between lines when the stream is not a terminal
    LOG_EVERY = 30.0

    def __init__(self, total, desc="", unit="it", stream=None, enabled=True):
        self.total = max(int(total), 0)
        self.desc = desc
        self.unit = unit
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled
        self.done = 0
        self.fields = {}
        self.start = time.perf_counter()
        self._last_draw = self.start
        isatty = getattr(self.stream, "isatty", None)
        self._live = bool(enabled and isatty is not None and isatty())

    def update(self, n=1, **fields):
        """Add ``n`` units of finished work and set the shown fields."""
        self.done += n
        self.fields.update(fields)
        now = time.perf_counter()
        # redraw at most 10 times a second: drawing must not cost measurable time
        if self._live and (now - self._last_draw > 0.1 or self.done >= self.total):
            self._last_draw = now
            self._draw(end="")
        elif self.enabled and not self._live and now - self._last_draw > self.LOG_EVERY:
            self._last_draw = now
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    @property
    def elapsed(self):
        return time.perf_counter() - self.start

    def line(self):
        """The bar as one line of text."""
        frac = self.done / self.total if self.total else 1.0
        filled = int(round(self.WIDTH * min(frac, 1.0)))
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        rate = self.done / self.elapsed if self.elapsed > 0 else 0.0
        extra = "".join(f" {k}={_fmt(v)}" for k, v in self.fields.items())
        return (f"{self.desc} [{bar}] {self.done}/{self.total} "
                f"{self.elapsed:.1f}s {rate:.3g} {self.unit}/s{extra}")

    def _draw(self, end):
        self.stream.write("\r" + self.line() + end)
        self.stream.flush()

    def close(self):
        if self.enabled:
            self._draw(end="\n")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
