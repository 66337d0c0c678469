"""``fastrnn._ext`` shortens libgomp's idle spinning when it loads.

The effect is a speed one (``benchmarks/bench_after_team.py``); what the
tests check is the mechanism: ``GOMP_SPINCOUNT`` is set exactly while
libgomp loads, the user's own settings win, and nothing is left in the
environment for the user or their child processes.
"""
import os
import subprocess
import sys

import pytest

ext = pytest.importorskip("fastrnn._ext")


def test_spin_count_is_set_only_while_libgomp_loads():
    environ, seen = {"PATH": "/bin"}, []
    loaded = ext._spin_briefly(environ, lambda name: seen.append((name, dict(environ))))
    assert loaded
    assert seen == [("libgomp.so.1", {"PATH": "/bin",
                                      "GOMP_SPINCOUNT": str(ext.GOMP_SPINCOUNT)})]
    assert environ == {"PATH": "/bin"}


@pytest.mark.parametrize("users", [{"GOMP_SPINCOUNT": "300000"}, {"OMP_WAIT_POLICY": "active"}])
def test_the_users_openmp_settings_win(users):
    environ, seen = dict(users), []
    assert not ext._spin_briefly(environ, seen.append)
    assert seen == [] and environ == users


def test_no_libgomp_no_change():
    def missing(name):
        raise OSError(f"{name}: cannot open shared object file")
    environ = {}
    assert not ext._spin_briefly(environ, missing)
    assert environ == {}


def test_importing_fastrnn_leaves_the_environment_alone():
    code = "import os, fastrnn; print('GOMP_SPINCOUNT' in os.environ)"
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True)
    assert out.stdout.strip() == "False"
