"""Parallel work off the threads that do not generate (roost.engine.threads)."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from roost.engine.threads import elsewhere

POOL = """
import os, time, torch
from roost.engine.threads import elsewhere
torch.set_num_threads(2)
count = lambda: len(os.listdir("/proc/self/task"))
before = count()
elsewhere(lambda: torch.ones(1 << 22).sum())  # parallel work on a thread that then ends
for _ in range(100):  # its workers exit once they see it gone: give them up to 2 s
    if count() <= before:
        break
    time.sleep(0.02)
after_elsewhere = count()
torch.ones(1 << 22).sum()  # the same here: this thread keeps a pool of OpenMP workers
print(before, after_elsewhere, count())
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads through /proc")
def test_parallel_work_elsewhere_leaves_no_worker_threads_behind():
    """libgomp keeps a pool of workers per thread that started parallel work; a pool left on a
    thread that does not generate slows every token of the one that does (1.5x measured)."""
    out = subprocess.run([sys.executable, "-c", POOL], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    before, after_elsewhere, after_here = map(int, out.stdout.split())
    assert after_elsewhere == before < after_here


def test_elsewhere_gives_back_the_result_or_the_error():
    assert elsewhere(lambda a, b=0: (threading.current_thread() is threading.main_thread(), a + b), 2, b=3) == (False, 5)
    with pytest.raises(ValueError, match="bad"):
        elsewhere(lambda: (_ for _ in ()).throw(ValueError("bad")))


def test_serve_loads_the_model_off_the_main_thread(make_checkpoint, monkeypatch, tmp_path):
    """`roost serve` generates on its worker thread; its main thread must not have run the load's
    parallel work (see above)."""
    from roost import cli
    from roost.core.runtime import Runtime
    from roost.server import run

    monkeypatch.setenv("ROOST_HOME", str(tmp_path / "home"))
    loads = []
    real_load = Runtime.load

    def load(self, *args, **kwargs):
        loads.append(threading.current_thread() is threading.main_thread())
        return real_load(self, *args, **kwargs)

    monkeypatch.setattr(Runtime, "load", load)
    monkeypatch.setattr(run.ApiServer, "serve_forever", lambda self, on_listening=None: None)
    assert cli.main(["serve", "--model", str(make_checkpoint("v7.0")), "--port", "0", "--strategy", "cpu fp32"]) == 0
    assert loads == [False]
