"""The roost command line, run as a user would."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT


def roost(*args, stdin: str = ""):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "app", *args], input=stdin, capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=300)


def test_generate_streams_a_reproducible_continuation(make_checkpoint):
    path = str(make_checkpoint("v5.2", n_layer=2, n_embd=128, seed=2))
    a = roost("generate", "--model", path, "--max-tokens", "12", "--seed", "7", "--temperature", "1", "Once upon")
    b = roost("generate", "--model", path, "--max-tokens", "12", "--seed", "7", "--temperature", "1", "Once upon")
    assert a.returncode == 0, a.stderr
    assert a.stdout == b.stdout and a.stdout.strip()
    assert "12 tokens" in a.stderr


def test_chat_keeps_state_between_turns_and_exits(make_checkpoint):
    path = str(make_checkpoint("v7.0", n_layer=2, n_embd=128, seed=2))
    r = roost("chat", "--model", path, "--max-tokens", "6", stdin="hello\nand again\n/exit\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("Assistant:") == 2


def test_errors_are_one_plain_line(tmp_path):
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    r = roost("generate", "--model", str(bad), "hi")
    assert r.returncode == 2
    assert "broken.pth is damaged" in r.stderr and "Traceback" not in r.stderr
    r = roost("generate", "--model", str(bad), "--strategy", "cuda fp16", "hi")
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_version_and_help():
    assert roost("--version").stdout.startswith("roost ")
    assert "chat" in roost("--help").stdout


def test_doctor_and_models_describe_this_machine():
    import json

    r = roost("doctor", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["machine"]["ram_total"] > 0 and report["recommended"]["strategy"]
    r = roost("models")
    assert r.returncode == 0 and "RWKV-7 G1" in r.stdout and "runs well" in r.stdout
