from __future__ import annotations

import io
import os
import subprocess
import sys

from roost import selfcheck


def test_selfcheck_passes_says_so_and_leaves_nothing_behind(tmp_path):
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, "ROOST_HOME": str(tmp_path / "home"), "QT_QPA_PLATFORM": "offscreen", "TMPDIR": str(temp)}
    r = subprocess.run([sys.executable, "-m", "roost", "selfcheck"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "selfcheck OK" in r.stdout and "FAIL" not in r.stdout
    assert "ok    model: RWKV-7" in r.stdout and "ok    main window" in r.stdout
    from roost.engine import native

    kernels = f"compiled kernels: {native.isa()}" if native.available() else "compiled kernels: not used ("
    assert f"ok    int8 and int4: {kernels}" in r.stdout and "(int4) of float32; PyTorch path: int8 kernel " in r.stdout
    assert "ok    API server" in r.stdout and "ok    catalog: " in r.stdout
    # the self-test model was made once (not per step) and removed with everything else it wrote
    assert list(temp.iterdir()) == []
    home = tmp_path / "home"  # the user's data folder: the log at most, no settings or chats
    assert not home.exists() or {p.name for p in home.iterdir()} <= {"roost.log"}


def test_a_failing_step_gives_exit_code_1(monkeypatch):
    def broken(scratch):
        raise RuntimeError("no kernel for this CPU")

    monkeypatch.setattr(selfcheck, "_model", broken)
    monkeypatch.setattr(selfcheck, "_quantized", lambda scratch: "skipped")
    monkeypatch.setattr(selfcheck, "_window", lambda scratch: "skipped")
    monkeypatch.setattr(selfcheck, "_api", lambda scratch: "skipped")
    out = io.StringIO()
    assert selfcheck.run(out) == 1
    assert "FAIL  model: RuntimeError: no kernel for this CPU" in out.getvalue()
    assert out.getvalue().rstrip().endswith("selfcheck FAILED")
