"""Opening checkpoints: version detection, and a plain error for every file that cannot be used."""

from __future__ import annotations

import hashlib
import pickle
import sys
from pathlib import Path

import pytest
import torch

from roost.engine.checkpoint import open_checkpoint
from roost.engine.errors import (
    CheckpointError, CorruptCheckpointError, NotACheckpointError, UnsafeCheckpointError,
    UnsupportedModelError,
)
from roost.engine.synthetic import make_weights


@pytest.mark.parametrize("arch, version", [("v4", 4), ("v5.0", 5), ("v5.1", 5), ("v5.2", 5),
                                           ("v6.0", 6), ("v7.0", 7)])
def test_version_and_shape_are_read_from_the_tensors(make_checkpoint, arch, version):
    _, cfg = open_checkpoint(make_checkpoint(arch, n_layer=3, n_embd=128))
    assert (cfg.arch, cfg.version, cfg.n_layer, cfg.n_embd, cfg.vocab_size) == (arch, version, 3, 128, 65536)
    if version > 4:
        assert (cfg.n_head, cfg.head_size) == (2, 64)


def test_safetensors_and_pth_of_the_same_weights_agree(make_checkpoint):
    from roost.engine import load_model

    a = load_model(make_checkpoint("v6.0", seed=3), "cpu fp32")
    b = load_model(make_checkpoint("v6.0", suffix=".safetensors", seed=3), "cpu fp32")
    assert torch.equal(a.forward([1, 2, 3])[0], b.forward([1, 2, 3])[0])


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_tensor_types_are_read_without_the_data(make_checkpoint, suffix, dtype):
    t, _ = open_checkpoint(make_checkpoint("v6.0", suffix=suffix, n_layer=1, n_embd=64, dtype=dtype))
    assert t.dtype("emb.weight") == t["emb.weight"].dtype == dtype


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_the_model_file_is_mapped_read_only_and_left_unchanged(make_checkpoint):
    """A private mapping with write access counts against the memory the OS may promise: Linux
    refused to map a 28 GB 14B file on a 24 GB machine without swap (so the model could not load
    even as 4-bit, 10 GB), Windows reserves the whole file. A read-only mapping costs nothing."""
    from roost.engine import load_model

    path = make_checkpoint("v6.0", n_layer=2, n_embd=128, seed=4)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    t, _ = open_checkpoint(path)
    maps = [line.split() for line in Path("/proc/self/maps").read_text().splitlines() if line.endswith(str(path))]
    assert maps and all(fields[1].startswith("r-") for fields in maps), maps  # "r--p": no write access
    assert torch.equal(t["blocks.1.att.key.weight"], torch.load(path, weights_only=True)["blocks.1.att.key.weight"])
    t.close()
    model = load_model(path, "cpu fp32")  # float32 weights of a bf16 file are copies; bf16 ones are not
    model.forward([1, 2, 3])
    load_model(path, "cpu bf16", pack=False).forward([4, 5])
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_the_legacy_torch_format_still_loads(tmp_path):
    path = tmp_path / "old.pth"
    torch.save(make_weights("v4", n_layer=1, n_embd=64, vocab=1000), path, _use_new_zipfile_serialization=False)
    _, cfg = open_checkpoint(path)
    assert cfg.arch == "v4" and cfg.vocab_size == 1000


class _WritesAFile:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_a_checkpoint_carrying_code_is_refused_and_the_code_never_runs(tmp_path):
    target = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pth"
    weights = make_weights("v4", n_layer=1, n_embd=64, vocab=100)
    weights["payload"] = _WritesAFile(str(target))
    torch.save(weights, path)
    with pytest.raises(UnsafeCheckpointError, match="evil.pth contains program code"):
        open_checkpoint(path)
    assert not target.exists()


def test_a_raw_pickle_with_code_is_refused_too(tmp_path):
    target = tmp_path / "pwned.txt"
    path = tmp_path / "evil2.pth"
    path.write_bytes(pickle.dumps(_WritesAFile(str(target)), protocol=2))
    with pytest.raises(CheckpointError):
        open_checkpoint(path)
    assert not target.exists()


def test_a_truncated_download_is_reported_as_incomplete(make_checkpoint, tmp_path):
    data = make_checkpoint("v5.2").read_bytes()
    for cut in (len(data) // 2, len(data) - 100, 10):
        path = tmp_path / f"cut{cut}.pth"
        path.write_bytes(data[:cut])
        with pytest.raises(CorruptCheckpointError, match=f"cut{cut}.pth is damaged or incomplete"):
            open_checkpoint(path)


def test_a_truncated_safetensors_file_is_reported(make_checkpoint, tmp_path):
    data = make_checkpoint("v7.0", suffix=".safetensors").read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(CorruptCheckpointError, match="incomplete"):
        open_checkpoint(path)


@pytest.mark.parametrize("content, words", [
    (b"", "empty"),
    (b"hello, I am a text file", "not a PyTorch file"),
    (b"GGUF\x03\x00\x00\x00" + b"\x00" * 64, "GGUF"),
])
def test_files_that_are_not_checkpoints(tmp_path, content, words):
    path = tmp_path / "model.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=words):
        open_checkpoint(path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(CheckpointError, match="There is no file"):
        open_checkpoint(tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="is a folder"):
        open_checkpoint(tmp_path)


def test_another_architecture_is_not_taken_for_rwkv(tmp_path):
    path = tmp_path / "gpt2.pth"
    torch.save({"transformer.h.0.attn.c_attn.weight": torch.zeros(4, 4)}, path)
    with pytest.raises(NotACheckpointError, match="not an RWKV model"):
        open_checkpoint(path)
    torch.save([1, 2, 3], path)
    with pytest.raises(NotACheckpointError, match="not a dictionary of weights"):
        open_checkpoint(path)


def test_a_missing_tensor_is_named(tmp_path):
    weights = make_weights("v6.0", n_layer=2)
    del weights["blocks.1.ffn.value.weight"]
    torch.save(weights, tmp_path / "m.pth")
    with pytest.raises(CorruptCheckpointError, match="'blocks.1.ffn.value.weight'.*missing"):
        open_checkpoint(tmp_path / "m.pth")


def test_a_missing_layer_is_named(tmp_path):
    weights = {k: v for k, v in make_weights("v7.0", n_layer=3).items() if not k.startswith("blocks.1.")}
    torch.save(weights, tmp_path / "m.pth")
    with pytest.raises(CorruptCheckpointError, match=r"layers \[1\] are missing"):
        open_checkpoint(tmp_path / "m.pth")


def test_a_wrong_shape_is_named(tmp_path):
    weights = make_weights("v5.2", n_layer=2)
    weights["blocks.0.att.key.weight"] = weights["blocks.0.att.key.weight"][:, :64].contiguous()
    torch.save(weights, tmp_path / "m.pth")
    with pytest.raises(CorruptCheckpointError, match="'blocks.0.att.key.weight' has shape"):
        open_checkpoint(tmp_path / "m.pth")


def test_unsupported_variants_say_so(tmp_path):
    weights = make_weights("v7.0", n_layer=1)
    weights["blocks.0.ffn.s_emb.weight"] = torch.zeros(10, 1024)
    torch.save(weights, tmp_path / "de.pth")
    with pytest.raises(UnsupportedModelError, match="DeepEmbed"):
        open_checkpoint(tmp_path / "de.pth")
    weights = make_weights("v4", n_layer=1)
    weights["_strategy"] = "cpu fp32i8"
    torch.save(weights, tmp_path / "conv.pth")
    with pytest.raises(UnsupportedModelError, match="convert_model.py"):
        open_checkpoint(tmp_path / "conv.pth")


def test_a_model_can_be_checked_before_anything_is_loaded(make_checkpoint, tmp_path):
    from roost.engine import check_loadable
    from roost.engine.errors import CorruptCheckpointError, StrategyError

    good = make_checkpoint("v7.0", n_layer=2, n_embd=128)
    cfg = check_loadable(good, "cpu int8")
    assert cfg.version == 7 and cfg.n_layer == 2
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[:good.stat().st_size // 2])
    with pytest.raises(CorruptCheckpointError):
        check_loadable(cut)
    with pytest.raises(StrategyError):
        check_loadable(good, "cpu turbo9")
