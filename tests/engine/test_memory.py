"""Memory estimates from the shapes, the refusal message, and loading without a RAM spike."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from roost.engine import load_model
from roost.engine.checkpoint import open_checkpoint
from roost.engine.errors import OutOfMemoryError
from roost.engine.memory import check_fits, estimate
from roost.engine.strategy import parse_strategy


def test_estimate_scales_with_precision(make_checkpoint):
    t, cfg = open_checkpoint(make_checkpoint("v7.0", n_layer=4, n_embd=256))
    fp32 = estimate(t, cfg, parse_strategy("cpu fp32")).per_device["cpu"]
    bf16 = estimate(t, cfg, parse_strategy("cpu bf16")).per_device["cpu"]
    int8 = estimate(t, cfg, parse_strategy("cpu int8")).per_device["cpu"]
    assert fp32 > bf16 > int8


@pytest.mark.parametrize("arch", ["v4", "v5.0", "v5.1", "v5.2", "v6.0", "v7.0"])
@pytest.mark.parametrize("n_embd", [128, 768])
def test_one_layout_for_files_estimates_and_test_models(tmp_path, arch, n_embd):
    """checkpoint.model_shapes is the one description of the layout: the test checkpoints follow it
    exactly, the loader checks files against it, and a model known only by its size (a catalog
    entry) gets the same memory estimate as its file."""
    from roost.engine.checkpoint import model_shapes, official_config
    from roost.engine.memory import layer_numels, shape_numels
    from roost.engine.synthetic import make_weights, save_checkpoint

    weights = make_weights(arch, n_layer=2, n_embd=n_embd, vocab=512)
    cfg = official_config(arch, 2, n_embd, vocab_size=512)
    want = model_shapes(cfg, set(weights), official_lora=True)
    squeeze = lambda shape: tuple(d for d in shape if d != 1)  # noqa: E731 -- (1, 1, C) is stored for (C,)
    assert {k: squeeze(v.shape) for k, v in weights.items()} == {k: squeeze(v) for k, v in want.items()}
    t, read = open_checkpoint(save_checkpoint(tmp_path / "m.pth", arch, n_layer=2, n_embd=n_embd, vocab=512))
    assert read == cfg
    if arch in ("v4", "v5.2", "v6.0", "v7.0"):  # the catalog's architectures
        assert shape_numels(cfg) == layer_numels(t, cfg)
        for strategy in ("cpu int8", "cpu bf16"):
            assert estimate(None, cfg, parse_strategy(strategy)).per_device["cpu"] == pytest.approx(
                estimate(t, cfg, parse_strategy(strategy)).per_device["cpu"], rel=0.01)


@pytest.mark.parametrize("arch, dtype, stored", [("v6.0", torch.bfloat16, torch.bfloat16),
                                                 ("v6.0", torch.float32, torch.float32),
                                                 ("v7.0", torch.bfloat16, torch.float32)])
def test_embedding_kept_in_the_precision_ln0_is_folded_in(make_checkpoint, arch, dtype, stored):
    """RWKV-4/5/6 fold ln0 in the file's precision, so a bf16 file's table stays bf16 (half the RAM);
    RWKV-7 folds it in float32. The estimate counts what is kept (a file read as copies,
    safetensors, keeps the table)."""
    path = make_checkpoint(arch, n_layer=2, n_embd=128, dtype=dtype, suffix=".safetensors")
    model = load_model(path, "cpu fp32")
    assert model._w["emb"].dtype == stored
    logits, _ = model.forward([1, 2, 3])
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    t, cfg = open_checkpoint(path)
    est = estimate(t, cfg, parse_strategy("cpu fp32")).per_device["cpu"]
    t32, cfg32 = open_checkpoint(make_checkpoint(arch, n_layer=2, n_embd=128, dtype=torch.float32, suffix=".safetensors"))
    est32 = estimate(t32, cfg32, parse_strategy("cpu fp32")).per_device["cpu"]
    saved = cfg.vocab_size * cfg.n_embd * 2 if stored == torch.bfloat16 else 0
    assert est32 - est == saved


@pytest.mark.parametrize("arch, strategy", [("v6.0", "cpu fp32"), ("v6.0", "cpu int4"), ("v7.0", "cpu fp32"),
                                            ("v7.0", "cpu int8"), ("v5.2", "cpu bf16")])
def test_a_mapped_file_s_embedding_is_read_row_by_row_and_agrees_with_the_table(make_checkpoint, arch, strategy):
    """From a .pth (memory-mapped) the embedding is not copied into a table (537 MB of a 7B or 14B
    model): each token's row is read from the file and ln0 folded in on use, the very rows the
    table holds; the estimate counts only the rows a session touches."""
    from roost.engine.memory import TOUCHED_ROWS
    from roost.engine.embedding import MappedEmbedding, build_embedding as _embedding

    path = make_checkpoint(arch, n_layer=2, n_embd=128, seed=6)
    model = load_model(path, strategy)
    emb = model._w["emb"]
    assert isinstance(emb, MappedEmbedding)
    t, cfg = open_checkpoint(path)
    table = _embedding(t, cfg, emb.dtype, compact=emb.dtype == torch.bfloat16)
    t.close()
    table = table[torch.arange(cfg.vocab_size)] if isinstance(table, MappedEmbedding) else table
    table_st = load_model(make_checkpoint(arch, n_layer=2, n_embd=128, seed=6, suffix=".safetensors"), strategy)._w["emb"]
    assert torch.equal(emb[torch.arange(cfg.vocab_size)], table) and torch.equal(table, table_st)
    assert torch.equal(emb[torch.tensor([7, 3, 7])], table[[7, 3, 7]])
    t, cfg = open_checkpoint(path)
    full = estimate(t, cfg, parse_strategy(strategy)).per_device["cpu"]
    t_st, _ = open_checkpoint(make_checkpoint(arch, n_layer=2, n_embd=128, seed=6, suffix=".safetensors"))
    assert estimate(t_st, cfg, parse_strategy(strategy)).per_device["cpu"] - full == \
        (cfg.vocab_size - TOUCHED_ROWS) * cfg.n_embd * table.element_size()


@pytest.mark.parametrize("strategy, stored", [("cpu fp32", torch.float32), ("cpu bf16", torch.bfloat16),
                                              ("cpu int8", torch.bfloat16), ("cpu int4", torch.bfloat16),
                                              ("cpu fp32 *1 -> cpu int8", torch.float32)])
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_rwkv7_keeps_its_embedding_as_small_as_its_first_weights(make_checkpoint, strategy, stored, suffix):
    """RWKV-7 folds ln0 in float32; where the first layers' weights are smaller than float32 on the
    CPU the table is stored in bf16 (half its memory), and the estimate counts that; the rows the
    model reads are the float32 fold, rounded once."""
    from roost.engine.memory import embedding_entry_bytes
    from roost.engine.embedding import build_embedding as _embedding

    path = make_checkpoint("v7.0", n_layer=2, n_embd=128, dtype=torch.bfloat16, suffix=suffix)
    model = load_model(path, strategy)
    emb = model._w["emb"]
    assert emb.dtype == stored
    t, cfg = open_checkpoint(path)
    exact = _embedding(t, cfg, torch.float32)
    rows = torch.arange(cfg.vocab_size)
    assert torch.equal(emb[rows], exact[rows].to(stored))
    assert embedding_entry_bytes(t, cfg, parse_strategy(strategy).stages[0]) == stored.itemsize  # as estimated
    logits, _ = model.forward([1, 2, 3])
    assert torch.isfinite(logits).all()


def test_estimate_splits_between_devices(make_checkpoint):
    t, cfg = open_checkpoint(make_checkpoint("v6.0", n_layer=4, n_embd=256))
    est = estimate(t, cfg, parse_strategy("cuda fp16 *2 -> cpu fp32"))
    assert set(est.per_device) == {"cuda", "cpu"}


def test_a_model_that_does_not_fit_is_refused_with_the_numbers(make_checkpoint):
    t, cfg = open_checkpoint(make_checkpoint("v6.0", n_layer=4, n_embd=256))
    strat = parse_strategy("cpu fp32")
    est = estimate(t, cfg, strat)
    with pytest.raises(OutOfMemoryError, match=r"needs about .* GB of RAM, but only 0.0 GB is free"):
        check_fits(est, {"cpu": 1000}, model_name="m.pth", strategy=strat)
    check_fits(est, {"cpu": est.total() + 1}, model_name="m.pth", strategy=strat)


def test_load_model_checks_memory_first(make_checkpoint, monkeypatch):
    from roost.engine import memory

    monkeypatch.setattr(memory, "available", lambda: {"cpu": 10 * 1024 ** 2})
    with pytest.raises(OutOfMemoryError, match="Close other programs"):
        load_model(make_checkpoint("v5.2"), "cpu fp32")


_LOAD_RSS = r"""
import re, sys, psutil, torch
from roost import engine
torch.set_num_threads(1)
with open("/proc/self/clear_refs", "w") as f:  # a forked child starts with its parent's high-water mark
    f.write("5")
before = psutil.Process().memory_info().rss
model = engine.load_model(sys.argv[1], sys.argv[2], tune_allocator=True)  # as the app loads
after = psutil.Process().memory_info().rss
with open("/proc/self/status") as f:
    peak = int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1)) * 1024
print(before, after, peak)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's RSS high-water mark")
@pytest.mark.parametrize("strategy, bytes_per_weight", [("cpu fp32", 4), ("cpu int8", 1)])
def test_loading_ends_near_the_weights_and_peaks_little_above(make_checkpoint, strategy, bytes_per_weight):
    """The issue's bound: peak RSS while loading <= 1.15x the final footprint + 300 MB; and the
    converted copies leave no heap holes behind (the final RSS is the weights, not more)."""
    path = make_checkpoint("v6.0", n_layer=4, n_embd=2048)  # 16 MB float32 matrices: glibc heap sizes
    t, cfg = open_checkpoint(path)
    matrices = sum(t[k].numel() for k in t if t[k].dim() == 2 and k != "emb.weight")
    t.close()
    weights = matrices * bytes_per_weight + cfg.vocab_size * cfg.n_embd * 4  # + the float32 embedding
    out = subprocess.run([sys.executable, "-c", _LOAD_RSS, str(path), strategy], capture_output=True,
                         text=True, check=True, cwd=Path(__file__).resolve().parents[2]).stdout
    before, after, peak = map(int, out.split())
    assert after - before <= 1.15 * weights + 150e6, (after - before, weights)
    assert peak - before <= 1.15 * (after - before) + 300e6, (peak - before, after - before)


_HEAD_RSS = r"""
import re, sys, psutil, torch
from roost import engine
torch.set_num_threads(1)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = psutil.Process().memory_info().rss
model = engine.load_model(sys.argv[1], "cpu int8", tune_allocator=True)
after = psutil.Process().memory_info().rss
with open("/proc/self/status") as f:
    peak = int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1)) * 1024
mapped, rss = False, 0  # the model file's pages resident in this process
with open("/proc/self/smaps") as f:
    for line in f:
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            mapped = line.rstrip().endswith(sys.argv[1])
        elif mapped and line.startswith("Rss:"):
            rss += int(line.split()[1]) * 1024
print(before, after, peak, rss)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's RSS high-water mark and smaps")
def test_the_head_converts_a_block_at_a_time_and_no_file_pages_stay(make_checkpoint):
    """The int8 head is quantised and packed a block of rows at a time: converted whole it held its
    int8 rows, a quantised copy and the packed form at once (2.0x the head's int8 size over the
    steady state, at the load's peak). And no page of the model file stays resident after loading: the
    small tensors copied from it (a 14B model's 0.45 GB of low-rank matrices) used to."""
    path = make_checkpoint("v6.0", n_layer=4, n_embd=2048, seed=8)  # head 65536 x 2048: 4 blocks
    out = subprocess.run([sys.executable, "-c", _HEAD_RSS, str(path)], capture_output=True,
                         text=True, check=True, cwd=Path(__file__).resolve().parents[2]).stdout
    before, after, peak, file_rss = map(int, out.split())
    head = 65536 * 2048
    assert peak - after <= 1.0 * head, (peak - after) / head  # measured 0.53 (converted whole: 2.0)
    assert file_rss <= 1 << 20, file_rss  # measured 0 (the small tensors' pages left: 7.8 MB)
