"""Converted weights kept between loads: same logits, rebuilt when the model changes or the file is
damaged, bounded, and never in the way of a load.

On the PyTorch path's forms (fbgemm's int8 rows, 4-bit groups); the compiled kernels' blocks go
into the same entries (a damaged one here too; their second loads in test_native.py and
test_load_matrix.py)."""

from __future__ import annotations

import os
import shutil
import sys

import pytest
import torch

from roost.engine import load_model
from roost.engine import native as kernels
from roost.engine.int4 import int4_works
from roost.engine.int8 import _fbgemm_works
from roost.engine.weight_cache import SUFFIX, WeightCache

TOKENS = [11, 400, 7, 1999, 42, 3]
STRATEGIES = ["cpu int8"] + (["cpu int4"] if int4_works() else [])


@pytest.fixture
def model_file(make_checkpoint, tmp_path):
    path = tmp_path / "models" / "m.pth"
    path.parent.mkdir()
    shutil.copy(make_checkpoint("v6.0", n_layer=3, n_embd=256), path)
    return path


def quantized(model) -> int:
    """The big matrices (not the low-rank ones, converted at every load) held as int8 or int4."""
    from roost.engine.arch import v6
    from roost.engine.int4 import Int4Linear
    from roost.engine.int8 import Int8Linear

    low_rank = set(v6.PACKED_LOW_RANK) | {"att.lr1", "att.lr2"}
    mats = [w for lw in model._layers for k, w in lw.items() if k not in low_rank] + [model._w["head.weight"]]
    return sum(isinstance(w, (Int4Linear, Int8Linear)) for w in mats)


def entries(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_second_load_reads_the_converted_weights_and_computes_the_same(model_file, tmp_path, strategy):
    cache = tmp_path / "cache"
    fresh = load_model(model_file, strategy, native=False)
    first = load_model(model_file, strategy, weight_cache=str(cache), native=False)
    assert first.cached_matrices == 0 and len(entries(cache)) == 1 and entries(cache)[0].endswith(SUFFIX)
    assert entries(model_file.parent) == ["m.pth"]  # nothing beside the model
    second = load_model(model_file, strategy, weight_cache=str(cache), native=False)
    assert second.cached_matrices == quantized(second) == 3 * 8 + 1  # every block's 8 matrices and the head
    want = fresh.forward(TOKENS)[0]
    assert torch.equal(first.forward(TOKENS)[0], want) and torch.equal(second.forward(TOKENS)[0], want)


def test_float_strategies_and_a_zero_budget_keep_nothing(model_file, tmp_path):
    cache = tmp_path / "cache"
    load_model(model_file, "cpu fp32", weight_cache=str(cache), native=False)
    load_model(model_file, "cpu int8", weight_cache=str(cache), weight_cache_bytes=0, native=False)
    assert entries(cache) == []


def test_a_changed_model_file_is_converted_again_and_its_old_entry_goes(model_file, tmp_path, make_checkpoint):
    cache = tmp_path / "cache"
    load_model(model_file, "cpu int8", weight_cache=str(cache), native=False)
    old = entries(cache)
    shutil.copy(make_checkpoint("v6.0", n_layer=3, n_embd=256, seed=5), model_file)  # same name, new weights
    os.utime(model_file, ns=(1, 1))  # (and surely another modification time)
    again = load_model(model_file, "cpu int8", weight_cache=str(cache), native=False)
    assert again.cached_matrices == 0 and len(entries(cache)) == 1 and entries(cache) != old
    assert torch.equal(again.forward(TOKENS)[0], load_model(model_file, "cpu int8", native=False).forward(TOKENS)[0])


@pytest.mark.parametrize("native", [False, True], ids=["pytorch-path", "compiled-kernels"])
@pytest.mark.parametrize("damage", ["truncated", "trailer", "index", "zeros"])
def test_a_damaged_entry_is_ignored_and_rebuilt(model_file, tmp_path, damage, native):
    if native and not kernels.available():
        pytest.skip(f"no compiled kernels: {kernels.unavailable_reason()}")
    cache = tmp_path / "cache"
    load_model(model_file, "cpu int8", weight_cache=str(cache), native=native)
    (path,) = cache.iterdir()
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "trailer":
        data[-8:] = (len(data) * 4).to_bytes(8, "little")  # the index would lie beyond the end
    elif damage == "index":
        at = int.from_bytes(data[-8:], "little")
        data[at:at + 20] = b"{not json at all...."
    else:
        data = bytearray(len(data))
    path.write_bytes(bytes(data))
    rebuilt = load_model(model_file, "cpu int8", weight_cache=str(cache), native=native)
    assert rebuilt.cached_matrices == 0
    assert torch.equal(rebuilt.forward(TOKENS)[0], load_model(model_file, "cpu int8", native=native).forward(TOKENS)[0])
    assert load_model(model_file, "cpu int8", weight_cache=str(cache), native=native).cached_matrices == 25  # whole again


def test_a_tensor_of_another_shape_is_converted_and_the_entry_replaced(model_file, tmp_path, monkeypatch):
    from roost.engine import weight_cache

    cache = tmp_path / "cache"
    load_model(model_file, "cpu int8", weight_cache=str(cache), native=False)
    real_get = weight_cache.Entry.get

    def lying_get(self, key, kind, shapes):  # as if the file had the key with other shapes
        if key == "blocks.1.ffn.key.weight":
            shapes = {k: tuple(d + 1 for d in v) for k, v in shapes.items()}
        return real_get(self, key, kind, shapes)

    monkeypatch.setattr(weight_cache.Entry, "get", lying_get)
    model = load_model(model_file, "cpu int8", weight_cache=str(cache), native=False)
    assert model.cached_matrices == 24 and entries(cache) == []  # one converted; the entry goes
    monkeypatch.setattr(weight_cache.Entry, "get", real_get)
    assert torch.equal(model.forward(TOKENS)[0], load_model(model_file, "cpu int8", native=False).forward(TOKENS)[0])


def test_a_full_disk_or_a_failed_load_leaves_no_partial_file(model_file, tmp_path, monkeypatch):
    from roost.engine import weight_cache

    cache = tmp_path / "cache"
    real_put = weight_cache.Entry.put
    calls = []

    def full_disk(self, key, kind, tensors):
        calls.append(key)
        if len(calls) == 3:
            self._writer.write = lambda data: (_ for _ in ()).throw(OSError(28, "No space left on device"))
        return real_put(self, key, kind, tensors)

    monkeypatch.setattr(weight_cache.Entry, "put", full_disk)
    model = load_model(model_file, "cpu int8", weight_cache=str(cache), native=False)
    assert torch.isfinite(model.forward(TOKENS)[0]).all() and entries(cache) == []
    monkeypatch.setattr(weight_cache.Entry, "put", real_put)

    def stop(fraction):
        if fraction > 0.5:
            raise KeyboardInterrupt  # the user closed the program while loading
    with pytest.raises(KeyboardInterrupt):
        load_model(model_file, "cpu int8", weight_cache=str(cache), progress=stop, native=False)
    assert entries(cache) == []


def test_entries_beyond_the_budget_go_least_recently_used_first(model_file, tmp_path):
    folder = tmp_path / "cache"
    cache = WeightCache(folder, 1 << 40)

    def load(strategy, budget=1 << 40):
        load_model(model_file, strategy, weight_cache=str(folder), weight_cache_bytes=budget, native=False)
        return {p.name: p.stat().st_size for p in cache.files()}

    a = load("cpu int8")
    b = {k: v for k, v in load("cpu fp32 *1 -> cpu int8").items() if k not in a}  # another strategy, smaller
    assert len(a) == len(b) == 1 and cache.usage() == (2, sum(a.values()) + sum(b.values()))
    (a_name, a_size), (b_name, b_size) = *a.items(), *b.items()
    assert load("cpu int8", budget=a_size + b_size - 1) == {a_name: a_size}  # used again: b is older
    assert load("cpu fp32 *1 -> cpu int8", budget=b_size) == {b_name: b_size}  # room for one
    assert load("cpu int8", budget=a_size - 1) == {}  # an entry larger than the budget is not kept
    assert cache.clear() == 0 and cache.usage() == (0, 0)
    load("cpu int8")
    assert cache.clear() == a_size and list(folder.iterdir()) == []


def _mapped_bytes(path) -> int:
    """Resident bytes of this process's mappings of ``path`` (Linux smaps)."""
    total, ours = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            fields = line.split()
            if fields and "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
                ours = line.rstrip("\n").endswith(str(path))
            elif ours and fields[0] == "Rss:":
                total += int(fields[1]) * 1024
    return total


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
@pytest.mark.skipif(not int4_works() or not _fbgemm_works(), reason="needs the 4-bit kernel and fbgemm")
def test_a_second_load_maps_the_entry_and_keeps_only_the_4_bit_weights_mapped(model_file, tmp_path):
    """The 4-bit weights of a second load are the entry's pages (no copy into new memory: half of
    such a load was page faults of fresh memory); the int8 rows fbgemm packed into its own form
    (the head, block 0) give their pages back. The entry may be deleted while the model runs."""
    from roost.engine.int4 import Int4Linear
    from roost.engine.int8 import Int8Linear

    cache = tmp_path / "cache"
    load_model(model_file, "cpu int4", weight_cache=str(cache), native=False)
    (entry,) = cache.iterdir()
    model = load_model(model_file, "cpu int4", weight_cache=str(cache), native=False)
    mats = [w for lw in model._layers for w in lw.values()] + [model._w["head.weight"]]
    four = sum(w.packed.nbytes + w.scale_zero.nbytes for w in mats if isinstance(w, Int4Linear))
    eight = sum(w.nbytes() for w in mats if isinstance(w, Int8Linear))
    assert four and eight > 10 * four  # (the head of a 65536-token vocabulary)
    mapped = _mapped_bytes(entry)
    assert four <= mapped < four + eight // 10, (four, eight, mapped)
    want = load_model(model_file, "cpu int4", native=False).forward(TOKENS)[0]
    size = entry.stat().st_size
    assert WeightCache(cache, 1 << 30).clear() == size and not entry.exists()
    assert torch.equal(model.forward(TOKENS)[0], want)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_an_int8_model_keeps_nothing_of_the_entry_mapped(model_file, tmp_path):
    import gc

    cache = tmp_path / "cache"
    load_model(model_file, "cpu int8", weight_cache=str(cache), native=False)
    (entry,) = cache.iterdir()
    model = load_model(model_file, "cpu int8", weight_cache=str(cache), native=False)
    gc.collect()
    assert model.cached_matrices == 25 and _mapped_bytes(entry) < 64 << 10
    assert torch.equal(model.forward(TOKENS)[0], load_model(model_file, "cpu int8", native=False).forward(TOKENS)[0])
