"""Shared fixtures: test data kept in the repository (tests/data/) and small random checkpoints.

No test reads anything outside the checkout: what a test needs lives under tests/ or comes from an
installed package (the World vocabulary from `rwkv`)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import tempfile
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
RUNNER = Path(__file__).parent / "engine" / "reference_runner.py"
ARCHS = ("v4", "v5.0", "v5.1", "v5.2", "v6.0", "v7.0")

# No test reads or writes the data folder of the person running the tests (their saved settings
# would change what the commands decide): the whole run gets one of its own, removed at the end.
# Tests that need a fresh one set ROOST_HOME themselves.
TEST_HOME = tempfile.mkdtemp(prefix="roost-test-home-")
os.environ["ROOST_HOME"] = TEST_HOME
os.environ.pop("ROOST_MODELS_DIR", None)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(TEST_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def neox_tokenizer_file(tmp_path_factory) -> Path:
    """The GPT-NeoX 20B tokenizer (tests/data/20B_tokenizer.json.gz), unpacked once per session."""
    path = tmp_path_factory.mktemp("neox") / "20B_tokenizer.json"
    path.write_bytes(gzip.decompress((DATA / "20B_tokenizer.json.gz").read_bytes()))
    return path


@pytest.fixture(scope="session")
def world_vocab_file() -> Path:
    """The RWKV World vocabulary as the `rwkv` package ships it."""
    from importlib import resources

    return Path(str(resources.files("rwkv") / "rwkv_vocab_v20230424.txt"))


@pytest.fixture(scope="session")
def make_checkpoint(tmp_path_factory, neox_tokenizer_file):
    """make_checkpoint(arch, **kw) -> path of a random checkpoint, built once per session."""
    from roost.engine.synthetic import save_checkpoint

    cache: dict = {}
    root = tmp_path_factory.mktemp("ckpt")

    def make(arch: str, suffix: str = ".pth", **kw) -> Path:
        key = (arch, suffix, tuple(sorted(kw.items())))
        if key not in cache:
            folder = Path(tempfile.mkdtemp(dir=root))
            path = save_checkpoint(folder / f"model-{arch}{suffix}", arch, **kw)
            if kw.get("vocab") == 50277:  # Raven models come with the 20B tokenizer beside them
                shutil.copy(neox_tokenizer_file, folder / "20B_tokenizer.json")
            cache[key] = path
        return cache[key]

    return make


def run_reference(path: Path, out: Path, tokens: list[int], split: int, *, v7: bool,
                  time_state: bool = False, state_file: Path | None = None) -> dict:
    """Logits from the rwkv pip package (see reference_runner.py); `time_state`: a v7 checkpoint's
    starting state passed in by hand (the package does not apply it to v7); `state_file`: a v5/v6
    state-tuning file every run starts from."""
    import torch

    env = dict(os.environ, RWKV_JIT_ON="1", RWKV_CUDA_ON="0")
    if v7:
        env["RWKV_V7_ON"] = "1"
    if time_state:
        env["ROOST_REF_TIME_STATE"] = "1"
    if state_file is not None:
        env["ROOST_REF_STATE_FILE"] = str(state_file)
    r = subprocess.run([sys.executable, str(RUNNER), str(path), str(out), json.dumps(tokens), str(split)],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"reference run failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    return torch.load(out)


def top1_agreement(got, ref, tie: float = 0.0) -> float:
    """Share of positions where `got` picks `ref`'s top token, or (with `tie` > 0) a token that `ref`
    scores within `tie` of its best: a near-tie that any rounding may flip."""
    best = ref.max(-1).values
    picked = ref.gather(-1, got.argmax(-1, keepdim=True)).squeeze(-1)
    return (picked >= best - tie).float().mean().item()
