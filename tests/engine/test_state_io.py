"""States written to disk and read back: bit-identical, and never applied to another model."""

from __future__ import annotations

import pytest
import torch

from roost.engine import load_model
from roost.engine.state_io import StateFileError, identity, load_state, read_meta, save_state


@pytest.mark.parametrize("strategy", ["cpu fp32", "cpu bf16", "cpu int8"])
def test_a_saved_state_resumes_bit_identical(make_checkpoint, tmp_path, strategy):
    model = load_model(make_checkpoint("v7.0"), strategy)
    ids = model.tokenizer.encode("A state is the whole conversation so far.")
    _, state = model.forward(ids)
    save_state(tmp_path / "s.state", state, {"note": "hi 你好"})
    back, meta = load_state(tmp_path / "s.state", model)
    assert meta == {"note": "hi 你好"} and back.n_tokens == state.n_tokens == len(ids)
    for a, b in zip(state.layers, back.layers):
        for x, y in zip(a, b):
            assert x.dtype == y.dtype and x.device == y.device and torch.equal(x, y)
    nxt = model.tokenizer.encode(" Next")
    assert torch.equal(model.forward(nxt, state)[0], model.forward(nxt, back)[0])


def test_a_state_of_another_model_or_a_damaged_file_is_refused(make_checkpoint, tmp_path):
    small = load_model(make_checkpoint("v7.0"), "cpu fp32")
    other = load_model(make_checkpoint("v7.0", n_layer=3, n_embd=128, seed=9), "cpu fp32")
    _, state = small.forward([1, 2, 3])
    path = tmp_path / "s.state"
    save_state(path, state, {})
    with pytest.raises(StateFileError, match="another model"):
        load_state(path, other)
    same_shapes = load_model(make_checkpoint("v6.0"), "cpu fp32")  # shapes alike: told apart by identity
    assert len({identity(small), identity(other), identity(same_shapes)}) == 3
    data = path.read_bytes()
    for broken in (data[:100], data[:-50], b"\x00" * 64, b""):
        path.write_bytes(broken)
        with pytest.raises(StateFileError):
            load_state(path, small)
    from safetensors.torch import save_file

    save_file({"0.0": torch.zeros(3)}, str(path))  # safetensors, but not a Roost state
    with pytest.raises(StateFileError, match="not a state saved"):
        read_meta(path)


def test_the_identity_follows_the_file_and_the_precision(make_checkpoint, tmp_path):
    import os
    import shutil

    path = tmp_path / "m.pth"
    shutil.copy(make_checkpoint("v7.0"), path)
    a = identity(load_model(path, "cpu fp32"))
    assert identity(load_model(path, "cpu int8")) == a  # the same state precision on the CPU
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10 ** 9))  # the file changed
    assert identity(load_model(path, "cpu fp32")) != a
