"""A load that ends the program (a crash in compiled code, a forced close) is never silent: the crash's
Python stacks go to the log file, and the next start says which model and strategy were loading."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest

from roost.core import loadmarks
from tests.conftest import ROOT

# a child that crashes with a segmentation fault where the engine would load the model
CRASHING = """
import faulthandler, sys
import roost.engine
roost.engine.load_model = lambda *a, **k: faulthandler._sigsegv()
{then}
"""


def crash(home, then: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ROOST_HOME": str(home), "PYTHONPATH": str(ROOT)}
    env.pop("PYTHONFAULTHANDLER", None)
    return subprocess.run([sys.executable, "-c", CRASHING.format(then=then)], env=env, capture_output=True,
                          text=True, timeout=300, cwd=tempfile.gettempdir())


def roost(home, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "roost", *args], env={**os.environ, "ROOST_HOME": str(home)},
                          capture_output=True, text=True, timeout=300, cwd=tempfile.gettempdir())


@pytest.mark.skipif(sys.platform == "win32", reason="a segmentation fault is raised with a POSIX signal here")
def test_a_command_that_crashes_while_loading_leaves_its_stacks_in_the_log_and_is_named_next_time(tmp_path, make_checkpoint):
    home = tmp_path / "home"
    model = make_checkpoint("v6.0")
    r = crash(home, f"from roost.cli import main; main(['generate', '--model', {str(model)!r}, '--strategy', 'cpu int8', 'hi'])")
    assert r.returncode < 0, r.stderr  # killed by the signal, as the real crash was
    text = (home / "roost.log").read_text(encoding="utf-8")
    assert "Fatal Python error: Segmentation fault" in text and "in _load" in text  # the CLI's load function
    said = roost(home, "settings")
    assert said.returncode == 0, said.stderr
    assert (f'last time `roost generate` ended while loading {model.name} with the strategy "cpu int8"' in said.stderr
            and '--strategy "cpu bf16"' in said.stderr and "上次" in said.stderr)
    again = roost(home, "settings")
    assert "last time" not in again.stderr  # said once


def test_a_load_that_raises_leaves_no_mark_and_one_going_on_is_not_unfinished(tmp_path):
    folder = tmp_path / "loads"
    with loadmarks.marked_load("/m/model.pth", "cpu int8", program="app", folder=folder):
        assert len(list(folder.glob("*.json"))) == 1
        assert loadmarks.unfinished(folder) == []  # this process is alive: still loading
    assert list(folder.glob("*.json")) == []
    with pytest.raises(MemoryError), loadmarks.marked_load("/m/model.pth", "cpu int8", program="app", folder=folder):
        raise MemoryError
    assert list(folder.glob("*.json")) == []
    (folder / "123.json").write_text("{not json")  # a damaged mark is dropped
    assert loadmarks.unfinished(folder) == [] and list(folder.glob("*.json")) == []


def test_a_mark_of_a_process_that_is_gone_is_unfinished_even_if_its_pid_was_taken_again(tmp_path):
    import json
    import time

    folder = tmp_path / "loads"
    folder.mkdir()
    record = {"path": "/m/x.pth", "strategy": "cpu int4", "program": "serve", "started": time.time()}
    # our own pid, but a process that started at another time: the pid was reused
    (folder / "a.json").write_text(json.dumps({**record, "pid": os.getpid(), "process_started": 1.0}))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (folder / "b.json").write_text(json.dumps({**record, "pid": int(gone.stdout), "process_started": None}))
    loads = loadmarks.unfinished(folder)
    assert [(u.name, u.strategy, u.program) for u in loads] == [("x.pth", "cpu int4", "serve")] * 2
    loadmarks.forget(loads[0])
    assert len(loadmarks.unfinished(folder)) == 1


@pytest.mark.parametrize("strategy, other", [
    ("cpu int8", "cpu bf16"), ("cpu fp32i8", "cpu bf16"), ("cpu int4", "cpu bf16"), ("cuda fp16", "cpu bf16"),
    ("cuda fp16 *10 -> cpu fp32", "cpu bf16"), ("cpu int8 *1 -> cpu fp32", "cpu bf16"), ("cpu bf16", "cpu fp32"),
    ("cpu fp32", None), ("gpu turbo9", "cpu bf16")])
def test_the_strategy_offered_instead_is_simpler(strategy, other):
    assert loadmarks.other_strategy(strategy) == other
