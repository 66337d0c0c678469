"""fastrnn in a child forked after the parent used its threads.

libgomp's threads and the batch split's Python threads stay in the parent
at fork; a child that waited for them hung (``_parallel``'s fork handlers:
the parent releases its OpenMP threads just before it forks). A torch
product before the fork leaves libgomp's threads as fastrnn's teams do.
Each case runs in a fresh interpreter with a timeout, so a hang fails the
test instead of the suite: the parent runs calls that use an OpenMP team
(unit split, gradient parts) and the split batch's pool, in both native
backends and frozen layers, forks, and the child runs the same calls. Every
result must come back, bit for bit the parent's.
"""
import os
import textwrap

import pytest
from conftest import run_script_alone

import fastrnn

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform"),
    pytest.mark.skipif("cython" not in fastrnn.available_backends(),
                       reason="the Cython backend is not built here"),
]

SCRIPT = textwrap.dedent('''
    import ctypes
    import os
    import sys
    if "torch" in sys.argv:
        import torch        # first, as a PyTorch program may: its libgomp.so.1 is the one
    import multiprocessing as mp
    import numpy as np
    import fastrnn
    from fastrnn import _backends, _ext, _parallel

    cb = _backends.get("cython").module
    # every team on every build: the unit split and the gradient and
    # projection parts at any size
    if cb.UNIT_SPLIT_MIN_BYTES is not None:
        cb.UNIT_SPLIT_MIN_BYTES = {256: 0}
    cb.GRADIENT_PARTS_MIN_MACS = 0
    cb.PROJECTION_PARTS_MIN_MACS = 0
    fastrnn.set_num_threads(2)
    rng = np.random.default_rng(0)

    def case(cell, T, B, I, H):
        G = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
        p = [rng.standard_normal(s).astype(np.float32) * 0.2
             for s in ((G * H, I), (G * H, H), (G * H,), (G * H,))]
        return cell, rng.standard_normal((T, B, I)).astype(np.float32), p, \\
            rng.standard_normal((T, B, H)).astype(np.float32)

    CASES = [case("lstm", 6, 1, 9, 32), case("gru", 5, 3, 7, 48),    # unit split
             case("rnn", 5, 2, 9, 24),                                # gradient parts
             case("rnn", 4, 16, 64, 64)]                              # split batch
    assert len(_parallel.parts(16, 4, 64, 64, 1)) == 2

    BACKENDS = [b for b in ("cython", "numba") if b in fastrnn.available_backends()]

    def frozen(cell, p, backend):
        cls = {"lstm": fastrnn.LSTM, "gru": fastrnn.GRU, "rnn": fastrnn.RNN}[cell]
        layer = cls(p[0].shape[1], p[1].shape[1], backend=backend)
        layer.load_state_dict(dict(zip(
            ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"], p)))
        return layer.freeze()

    # frozen layers keep each shape's decisions, teams included, from the
    # parent's calls: the child must make its own
    FROZEN = {(k, b): frozen(c[0], c[2], b) for k, c in enumerate(CASES) for b in BACKENDS}

    def run_all():
        out = []
        for k, backend in [(k, b) for k in range(len(CASES)) for b in BACKENDS]:
            cell, x, p, dy = CASES[k]
            fwd = {"lstm": fastrnn.lstm_forward, "gru": fastrnn.gru_forward,
                   "rnn": fastrnn.rnn_forward}[cell]
            bwd = {"lstm": fastrnn.lstm_backward, "gru": fastrnn.gru_backward,
                   "rnn": fastrnn.rnn_backward}[cell]
            states = [None] * (2 if cell == "lstm" else 1)
            y = fwd(x, *states, *p, backend=backend)
            o = fwd(x, *states, *p, backend=backend, training=True)
            g = bwd(o.workspace, dy)
            out.append([y.y, o.y, *g[:5], FROZEN[k, backend](x)[0]])
        return out

    def child(q):
        q.put((_parallel.openmp_usable(), _parallel._released_at_fork, run_all()))

    def can_release():
        """Has this process a libgomp with OpenMP 5.0's pause (GCC 9 and later)?"""
        try:
            lib = ctypes.CDLL("libgomp.so.1", mode=os.RTLD_NOLOAD)
        except OSError:
            return True         # no libgomp: nothing to release
        return hasattr(lib, "omp_pause_resource_all")

    if __name__ == "__main__":
        if "no-release" in sys.argv:
            _ext.release_openmp_threads = lambda: False
        parent = run_all()
        ctx = mp.get_context("fork")
        q = ctx.Queue()
        p = ctx.Process(target=child, args=(q,))
        # fork right after a team's call: its worker is still busy in libgomp
        cell, x, w, _ = CASES[0]
        fastrnn.lstm_forward(x, None, None, *w, backend="cython")
        if "torch" in sys.argv:
            # and right after torch's own team, in the same libgomp
            torch.set_num_threads(2)
            torch.randn(256, 256) @ torch.randn(256, 256)
        p.start()
        usable, released, got = q.get(timeout=60)
        p.join(60)
        assert p.exitcode == 0, p.exitcode
        # the child starts teams of its own where the parent released its threads
        assert released == (can_release() and "no-release" not in sys.argv), released
        assert usable == released, (usable, released)
        for a, b in zip(parent, got):
            for u, v in zip(a, b):
                np.testing.assert_array_equal(u, v)
        print("ok", released)
''')


@pytest.mark.parametrize("how", ["", "no-release", "torch"])
def test_a_forked_child_runs_what_its_parent_ran(tmp_path, how):
    """``how``: "no-release" as with a libgomp that cannot release its
    threads; "torch" imports torch first and runs a torch product on two
    threads right before the fork."""
    if how == "torch":
        pytest.importorskip("torch")
    stdout = run_script_alone(tmp_path, "fork_case.py", SCRIPT, [how] * bool(how))
    assert stdout.startswith("ok"), stdout


def test_a_release_that_raises_leaves_the_child_without_teams(monkeypatch):
    from fastrnn import _ext, _parallel

    def broken():
        raise OSError("no libgomp after all")
    monkeypatch.setattr(_ext, "release_openmp_threads", broken)
    monkeypatch.setattr(_parallel, "_released_at_fork", True)
    with pytest.raises(OSError):
        _parallel._before_fork()        # os.fork prints and ignores what a handler raises
    assert _parallel._released_at_fork is False
