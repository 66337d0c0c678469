"""A split batch's parts and a bidirectional layer's directions on an OpenMP team.

``_parallel.run_parts`` runs parts of one thread each on an OpenMP team
(``src_ext/team_run.pyx``) instead of Python threads (``TEAM_PARTS``). A
kernel a part calls with a team of one must then still see a team of one:
inside the outer team, ``omp_get_num_threads()`` would be that team's, and
a unit split's barrier waited forever for a second thread (a bidirectional
LSTM whose directions split their units hung). Each case runs in a fresh
interpreter with a timeout, so that a hang fails the test instead of the
suite; every output and gradient must be bit for bit what Python threads
give.
"""
import os
import textwrap

import pytest
from conftest import run_script_alone

import fastrnn

pytestmark = pytest.mark.skipif("cython" not in fastrnn.available_backends(),
                                reason="the Cython backend is not built here")

SCRIPT = textwrap.dedent('''
    import numpy as np
    import fastrnn
    from fastrnn import _backends, _parallel

    if _parallel._team_run is None:
        print("skip: no team_run module")
        raise SystemExit(0)
    cb = _backends.get("cython").module
    if cb.UNIT_SPLIT_MIN_BYTES is not None:
        cb.UNIT_SPLIT_MIN_BYTES = {256: 0}      # the unit split at any size
    _parallel.INDEPENDENT_MIN_MACS = 0          # directions side by side at any size
    fastrnn.set_num_threads(2)
    teams = []
    run = _parallel._team_run.run

    def counted(fn, n, threads):
        teams.append(n)
        return run(fn, n, threads)
    _parallel._team_run.run = counted

    CASES = [  # cls, (T, B, I, H), bidirectional
        (fastrnn.LSTM, (6, 1, 9, 32), True),    # directions side by side, units split
        (fastrnn.GRU, (5, 3, 7, 48), True),
        (fastrnn.LSTM, (1, 2, 9, 32), True),    # a short call: units split without panels
        (fastrnn.RNN, (5, 2, 9, 24), True),
        (fastrnn.RNN, (4, 16, 64, 64), False),  # a split batch
        (fastrnn.GRU, (3, 40, 20, 32), False),  # more rows than a unit split takes
    ]
    BACKENDS = [b for b in ("cython", "numba") if b in fastrnn.available_backends()]

    def arrays(value):
        if isinstance(value, np.ndarray):
            return [value]
        if isinstance(value, dict):
            return [a for v in value.values() for a in arrays(v)]
        if isinstance(value, (tuple, list)):
            return [a for v in value for a in arrays(v)]
        return []

    def results(cls, shape, bidirectional, backend):
        T, B, I, H = shape
        rng = np.random.default_rng(0)
        layer = cls(I, H, bidirectional=bidirectional, rng=0, backend=backend)
        x = rng.standard_normal((T, B, I)).astype(np.float32)
        y, h_n, ctx = layer(x, training=True)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        grads = layer.backward(ctx, dy)
        return arrays([y, h_n, grads, layer(x), layer.freeze()(x)])

    for cls, shape, bidirectional in CASES:
        for backend in BACKENDS:
            _parallel.TEAM_PARTS = False
            threads = results(cls, shape, bidirectional, backend)
            _parallel.TEAM_PARTS = True
            before = len(teams)
            team = results(cls, shape, bidirectional, backend)
            assert len(teams) > before, (cls.__name__, shape, backend, "no team ran the parts")
            assert len(threads) == len(team) > 0
            for a, b in zip(threads, team):
                np.testing.assert_array_equal(a, b)
    print("ok", len(teams))
''')


def test_parts_on_a_team_give_the_threads_bits(tmp_path):
    stdout = run_script_alone(tmp_path, "team_parts.py", SCRIPT)
    if stdout.startswith("skip"):
        pytest.skip(stdout.strip())
    assert stdout.startswith("ok"), stdout


def test_a_thread_woken_on_the_masters_cpu_moves_off_it():
    """``fr_team_spread`` (src_ext/_team.h): after a long sleep the kernel
    woke a team's thread onto its master's CPU, where the two shared one CPU
    for 10-14 ms. The trial puts the second thread there itself."""
    team_run = pytest.importorskip("fastrnn._ext.team_run")
    if not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU: nowhere to move to")
    trials = [team_run._spread_trial() for _ in range(5)]
    if trials[0][0] == -1:
        pytest.skip("this build cannot spread a team (no OpenMP or no sched_setaffinity)")
    placed = [t for t in trials if t[1] == t[0]]
    assert placed, trials
    for master, _, after, restored in placed:
        assert after != master and restored == 1, trials
