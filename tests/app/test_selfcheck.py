from __future__ import annotations

import io
import os
import subprocess
import sys

from app import selfcheck
from tests.conftest import ROOT


def test_selfcheck_passes_and_says_so(tmp_path):
    env = {**os.environ, "ROOST_HOME": str(tmp_path), "QT_QPA_PLATFORM": "offscreen"}
    r = subprocess.run([sys.executable, "-m", "app", "selfcheck"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "selfcheck OK" in r.stdout and "FAIL" not in r.stdout
    assert "ok    model: RWKV-7" in r.stdout and "ok    main window" in r.stdout
    assert "ok    int8: kernel " in r.stdout
    assert "ok    API server" in r.stdout


def test_a_failing_step_gives_exit_code_1(monkeypatch):
    def broken():
        raise RuntimeError("no kernel for this CPU")

    monkeypatch.setattr(selfcheck, "_model", broken)
    monkeypatch.setattr(selfcheck, "_int8", lambda: "skipped")
    monkeypatch.setattr(selfcheck, "_window", lambda: "skipped")
    monkeypatch.setattr(selfcheck, "_api", lambda: "skipped")
    out = io.StringIO()
    assert selfcheck.run(out) == 1
    assert "FAIL  model: RuntimeError: no kernel for this CPU" in out.getvalue()
    assert out.getvalue().rstrip().endswith("selfcheck FAILED")
