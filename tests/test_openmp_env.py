"""``fastrnn._ext`` shortens libgomp's idle spinning when it loads.

The effect is a speed one (``benchmarks/bench_after_team.py``); what the
tests check is the mechanism: ``GOMP_SPINCOUNT`` is set exactly while
libgomp loads, the user's own settings win, nothing is left in the
environment for the user or their child processes, and the idle rule
(``_cython_backend.IDLE_TEAM_S``) holds only where idle threads do sleep soon.
"""
import os
import subprocess
import sys

import pytest
from conftest import run_script_alone

ext = pytest.importorskip("fastrnn._ext")


def test_spin_count_is_set_only_while_libgomp_loads():
    environ, seen = {"PATH": "/bin"}, []
    loaded = ext._spin_briefly(environ, lambda name: seen.append((name, dict(environ))),
                               lambda: False)
    assert loaded
    assert seen == [("libgomp.so.1", {"PATH": "/bin",
                                      "GOMP_SPINCOUNT": str(ext.GOMP_SPINCOUNT)})]
    assert environ == {"PATH": "/bin"}


@pytest.mark.parametrize("users", [{"GOMP_SPINCOUNT": "300000"}, {"OMP_WAIT_POLICY": "active"}])
def test_the_users_openmp_settings_win(users):
    environ, seen = dict(users), []
    assert not ext._spin_briefly(environ, seen.append, lambda: False)
    assert seen == [] and environ == users


def test_a_libgomp_loaded_before_is_left_alone():
    # another package's libgomp.so.1 (PyTorch's) read its environment when it
    # loaded: setting the count now would not reach it
    environ, seen = {}, []
    assert not ext._spin_briefly(environ, seen.append, lambda: True)
    assert seen == [] and environ == {}


def test_no_libgomp_no_change():
    def missing(name):
        raise OSError(f"{name}: cannot open shared object file")
    environ = {}
    assert not ext._spin_briefly(environ, missing, lambda: False)
    assert environ == {}


def test_importing_fastrnn_leaves_the_environment_alone():
    code = "import os, fastrnn; print('GOMP_SPINCOUNT' in os.environ)"
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("environ, rounds", [
    ({}, None), ({"GOMP_SPINCOUNT": "10000"}, 10000), ({"GOMP_SPINCOUNT": "10k"}, 10000),
    ({"GOMP_SPINCOUNT": " 2M "}, 2 * 10 ** 6), ({"GOMP_SPINCOUNT": "INFINITE"}, None),
    ({"GOMP_SPINCOUNT": "infinity"}, None), ({"GOMP_SPINCOUNT": "many"}, None),
    ({"OMP_WAIT_POLICY": "PASSIVE"}, 0), ({"OMP_WAIT_POLICY": "active"}, None),
    ({"OMP_WAIT_POLICY": "passive", "GOMP_SPINCOUNT": "1G"}, 10 ** 9)])
def test_spin_rounds_read_as_libgomp_reads_them(environ, rounds):
    assert ext._spin_rounds(environ) == rounds
    assert ext._sleeps_briefly(False, environ) == (rounds is not None
                                                   and rounds <= ext.GOMP_SPINCOUNT)
    assert ext._sleeps_briefly(True, environ)


def _idle_rule_in_a_fresh_process(tmp_path, monkeypatch, first, environ):
    # a script, not ``python -c``: from the repository's root, -c would import
    # its ./fastrnn, which has no built kernels, instead of the one under test
    for name in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    code = (f"{first}import fastrnn._ext as e, fastrnn._cython_backend as cb\n"
            "print(e.SPINS_BRIEFLY, cb.IDLE_TEAM_S, e._loaded_before())\n")
    return run_script_alone(tmp_path, "idle_rule.py", code, timeout=120).split()


def test_idle_rule_on_when_fastrnn_sets_the_spin_count(tmp_path, monkeypatch):
    pytest.importorskip("fastrnn._ext.pool")        # a build of the kernels
    spins, rule, libgomp = _idle_rule_in_a_fresh_process(tmp_path, monkeypatch, "", {})
    if libgomp != "True":
        pytest.skip("the kernels do not use libgomp here")
    assert (spins, rule) == ("True", "0.00015")
    assert _idle_rule_in_a_fresh_process(tmp_path, monkeypatch, "",
                                         {"OMP_WAIT_POLICY": "active"}) == ["False", "None", "True"]


def test_idle_rule_off_after_torchs_libgomp(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("fastrnn._ext.pool")
    # torch's libgomp.so.1, loaded first, spins for its default 300,000 rounds
    first = "import torch\n"
    assert _idle_rule_in_a_fresh_process(tmp_path, monkeypatch, first, {})[:2] == [
        "False", "None"]
    assert _idle_rule_in_a_fresh_process(tmp_path, monkeypatch, first,
                                         {"GOMP_SPINCOUNT": "10000"})[:2] == ["True", "0.00015"]
