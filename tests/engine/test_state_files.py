"""State-tuning files (personas): a model's starting state published apart from it.

A separate state file applied to the base model must start it exactly as the state-tuned checkpoint
carrying the same time_state does (those checkpoints are checked against the rwkv package in
test_parity.py), and a v6 one is also checked against the package directly."""

from __future__ import annotations

import pytest
import torch

from roost.engine import load_model
from roost.engine.checkpoint import open_checkpoint
from roost.engine.errors import (
    CorruptTunedStateError,
    IsATunedStateError,
    NotACheckpointError,
    NotATunedStateError,
    TunedStateError,
    TunedStateMismatchError,
    UnsafeCheckpointError,
)
from roost.engine.synthetic import make_weights
from roost.engine.tuned_state import (
    describe_tuned_state,
    initial_state,
    is_tuned_state_file,
    load_tuned_state,
    version_from_name,
)
from tests.conftest import run_reference

TOKENS = [int(t) for t in torch.randint(0, 65536, (20,), generator=torch.Generator().manual_seed(11))]
SPLIT = 7
STATE_ARCHS = ("v5.2", "v6.0", "v7.0")


def state_dict(n_layer: int, n_head: int, head_size: int, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"blocks.{i}.att.time_state": (torch.randn(n_head, head_size, head_size, generator=g) * 0.3)
            .to(torch.bfloat16) for i in range(n_layer)}


def save(weights: dict, path):
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(weights, str(path))
    else:
        torch.save(weights, path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """files(arch) -> (state-tuned checkpoint, the same model without its time_state, a state file
    of that time_state): one set per architecture, 2 layers of 128 (2 heads of 64)."""
    cache = {}

    def make(arch: str):
        if arch not in cache:
            folder = tmp_path_factory.mktemp(arch)
            tuned = make_weights(arch, n_layer=2, n_embd=128, time_state=True, seed=3)
            state = {k: v for k, v in tuned.items() if k.endswith(".att.time_state")}
            base = {k: v for k, v in tuned.items() if k not in state}
            assert len(state) == 2
            cache[arch] = (save(tuned, folder / "tuned.pth"), save(base, folder / "base.pth"),
                           save(state, folder / "persona.pth"))
        return cache[arch]

    return make


@pytest.fixture(scope="module")
def models(files):
    cache = {}

    def load(arch: str, which: str):
        if (arch, which) not in cache:
            tuned, base, _ = files(arch)
            cache[arch, which] = load_model(tuned if which == "tuned" else base, "cpu fp32")
        return cache[arch, which]

    return load


@pytest.mark.parametrize("arch", STATE_ARCHS)
def test_a_state_file_starts_the_base_model_as_the_tuned_checkpoint_does(arch, files, models):
    _, _, persona = files(arch)
    tuned, base = models(arch, "tuned"), models(arch, "base")
    assert tuned.config.has_time_state and not base.config.has_time_state
    sf = load_tuned_state(persona)
    assert (sf.n_layer, sf.n_head, sf.head_size, sf.n_embd, sf.version) == (2, 2, 64, 128, None)

    start = base.start_state(sf)
    assert start.n_tokens == 0
    for got, want, zero in zip(start.layers, tuned.zero_state().layers, base.zero_state().layers):
        assert len(got) == len(zero)
        for a, b, z in zip(got, want, zero):
            assert torch.equal(a, b)  # the same start, to the bit
            assert (a.device, a.dtype, a.shape) == (z.device, z.dtype, z.shape)

    want, _ = tuned.forward_all(TOKENS)
    got, _ = base.forward_all(TOKENS, start)
    assert torch.equal(got, want)
    by_path, _ = base.forward_all(TOKENS, initial_state(base, persona))  # the file's path does as well
    assert torch.equal(by_path, want)
    # token by token and resumed from a middle state too
    state = base.start_state(sf)
    for t in TOKENS[:SPLIT]:
        _, state = base.forward([t], state)
    last, _ = base.forward(TOKENS[SPLIT:], state)
    assert torch.allclose(last, want[-1], rtol=1e-4, atol=1e-4)
    # and the persona matters: the base model from zeros says something else
    plain, _ = base.forward_all(TOKENS)
    assert (plain - want).abs().max() > 0.05 * want.abs().max()
    assert base.start_state(None).layers[0][1].abs().max() == 0  # zero_state is unchanged


def test_a_state_file_in_safetensors_gives_the_same_start(files, models, tmp_path):
    _, _, persona = files("v7.0")
    weights = torch.load(persona, weights_only=True)
    st = save(weights, tmp_path / "persona.safetensors")
    base = models("v7.0", "base")
    a, b = base.start_state(st), base.start_state(persona)
    assert all(torch.equal(x, y) for la, lb in zip(a.layers, b.layers) for x, y in zip(la, lb))


def test_a_v6_state_file_matches_the_reference_package(files, models, tmp_path):
    """The rwkv package itself, the base model started from the file as ChatRWKV's demo does."""
    _, base_path, persona = files("v6.0")
    ref = run_reference(base_path, tmp_path / "ref.pt", TOKENS, SPLIT, v7=False, state_file=persona)
    base = models("v6.0", "base")
    rel = lambda a, b: ((a - b).abs().max() / b.abs().max()).item()  # noqa: E731
    start = base.start_state(load_tuned_state(persona))
    seq, _ = base.forward_all(TOKENS, start)
    assert rel(seq, ref["seq"]) <= 1e-3
    _, mid = base.forward(TOKENS[:SPLIT], start)
    resumed, _ = base.forward(TOKENS[SPLIT:], mid)
    assert rel(resumed, ref["resume"]) <= 1e-3
    plain, _ = base.forward_all(TOKENS)  # without the persona it is far off
    assert rel(plain, ref["seq"]) > 0.05


def test_a_state_for_another_shape_is_refused_saying_what_it_has_and_needs(files, models, tmp_path):
    base = models("v7.0", "base")  # 2 layers, 128 wide: 2 heads of 64
    cases = [
        (state_dict(3, 2, 64),
         "state \\(persona\\) file for a model of 3 layers, 128 wide \\(2 heads of 64\\), but this model, "
         ".*2x128, needs one of 2 layers, 128 wide \\(2 heads of 64\\)"),
        (state_dict(2, 1, 64), "2 layers, 64 wide \\(1 head of 64\\), but"),
        (state_dict(2, 4, 32), "2 layers, 128 wide \\(4 heads of 32\\), but"),
    ]
    for i, (weights, words) in enumerate(cases):
        path = save(weights, tmp_path / f"other{i}.pth")
        sf = load_tuned_state(path)
        with pytest.raises(TunedStateMismatchError, match=words):
            base.start_state(sf)
        assert sf.mismatch(base.config) is not None
    # a name that says another version
    named = save(state_dict(2, 2, 64), tmp_path / "rwkv-x060-persona-1B6.pth")
    with pytest.raises(TunedStateMismatchError, match="made for an RWKV-6 model \\(its name says so\\), but this model.* is RWKV-7"):
        base.start_state(named)
    assert models("v6.0", "base").start_state(named).layers  # and fits the RWKV-6 model of that shape


def test_rwkv4_has_no_state_to_start_from(files, tmp_path):
    from roost.engine.synthetic import save_checkpoint

    v4 = load_model(save_checkpoint(tmp_path / "v4.pth", "v4", n_layer=2, n_embd=128, vocab=256), "cpu fp32")
    _, _, persona = files("v7.0")
    with pytest.raises(TunedStateMismatchError, match="this model, RWKV-4 2x128, has no starting state to replace"):
        v4.start_state(persona)


@pytest.mark.parametrize("content, error, words", [
    ({**state_dict(2, 2, 64), "emb.weight": torch.zeros(4, 128)}, NotATunedStateError, "is a model, not a state"),
    ({**state_dict(2, 2, 64), "blocks.0.att.time_decay": torch.zeros(128)}, NotATunedStateError,
     "other tensors \\(blocks.0.att.time_decay\\)"),
    ({}, NotATunedStateError, "holds no tensors"),
    ({"blocks.0.att.time_state": torch.zeros(2, 64, 64), "blocks.2.att.time_state": torch.zeros(2, 64, 64)},
     CorruptTunedStateError, "states of layers \\[1\\] are missing"),
    ({f"blocks.{i}.att.time_state": torch.zeros(2, 64, 64, dtype=torch.int64) for i in range(2)},
     CorruptTunedStateError, "int64 values, not floating-point"),
    ({f"blocks.{i}.att.time_state": torch.zeros(2, 64, 32) for i in range(2)}, CorruptTunedStateError,
     "has shape \\(2, 64, 32\\)"),
    ({"blocks.0.att.time_state": torch.zeros(2, 64, 64), "blocks.1.att.time_state": torch.zeros(4, 32, 32)},
     CorruptTunedStateError, "different shapes"),
    ({f"blocks.{i}.att.time_state": torch.full((2, 64, 64), float("nan")) for i in range(2)},
     CorruptTunedStateError, "not numbers"),
])
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_files_that_are_not_usable_states_are_refused_plainly(tmp_path, content, error, words, suffix):
    path = save(content, tmp_path / f"persona{suffix}")
    with pytest.raises(error, match=f"persona{suffix.replace('.', '[.]')} .*{words}"):
        load_tuned_state(path)
    if error is not CorruptTunedStateError or "not numbers" not in words:  # reading the data finds NaNs
        with pytest.raises(error):
            describe_tuned_state(path)
    assert issubclass(error, TunedStateError)


def test_damaged_and_foreign_files(tmp_path, files):
    _, _, persona = files("v5.2")
    data = persona.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptTunedStateError, match="cut.pth is damaged or incomplete"):
        load_tuned_state(cut)
    junk = tmp_path / "notes.pth"
    junk.write_bytes(b"hello, not a tensor file")
    with pytest.raises(NotATunedStateError, match="notes.pth is not a state \\(persona\\) file"):
        load_tuned_state(junk)
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], listed)
    with pytest.raises(NotATunedStateError, match="not a state"):
        load_tuned_state(listed)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pth"
    torch.save({"blocks.0.att.time_state": Evil()}, evil)
    with pytest.raises(UnsafeCheckpointError):
        load_tuned_state(evil)
    base_tuned, base, _ = files("v5.2")
    with pytest.raises(NotATunedStateError, match="base.pth is a model, not a state"):
        load_tuned_state(base)
    assert not any(is_tuned_state_file(p) for p in (cut, junk, listed, evil, base, base_tuned, tmp_path / "none.pth"))


def test_a_state_file_is_described_without_its_data_and_told_from_models(files):
    tuned, base, persona = files("v6.0")
    info = describe_tuned_state(persona)
    assert (info.n_layer, info.n_head, info.head_size, info.dtype, info.tensors) == (2, 2, 64, torch.bfloat16, ())
    assert info.label == "2 layers, 128 wide (2 heads of 64)" and info.versions == (5, 6, 7)
    assert is_tuned_state_file(persona) and not is_tuned_state_file(base) and not is_tuned_state_file(tuned)
    # a described state loads its data when it is used
    model = load_model(base, "cpu fp32")
    a, b = model.start_state(info), model.start_state(load_tuned_state(persona))
    assert all(torch.equal(x, y) for la, lb in zip(a.layers, b.layers) for x, y in zip(la, lb))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_loading_a_state_file_as_a_model_says_what_it_is(tmp_path, suffix):
    path = save(state_dict(24, 32, 64), tmp_path / f"rwkv7-g1-persona{suffix}")
    words = "is a state \\(persona\\) file for an RWKV model of 24 layers, 2048 wide, not a model"
    with pytest.raises(IsATunedStateError, match=words) as e:
        load_model(path, "cpu fp32")
    assert isinstance(e.value, NotACheckpointError) and (e.value.n_layer, e.value.n_embd) == (24, 2048)
    with pytest.raises(IsATunedStateError, match=words):
        open_checkpoint(path)


@pytest.mark.parametrize("name, version", [
    ("rwkv-x060-eng_single_round_qa-1B6-20240516-ctx2048.pth", 6), ("rwkv7-g1-2.9b-persona.pth", 7),
    ("RWKV-5-World-3B-state.pth", 5), ("RWKV-x052-chat.safetensors", 5), ("rwkv_v6_cat.pth", 6),
    ("my-persona-v2.pth", None), ("rwkv-50m-state.pth", None), ("cat.pth", None),
])
def test_the_version_is_read_from_the_name_where_it_says(name, version):
    assert version_from_name(name) == version


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_split_each_layer_starts_on_its_device(files):
    tuned_path, base_path, persona = files("v6.0")
    strategy = "cuda fp16 *1 -> cpu fp32"
    base, tuned = load_model(base_path, strategy), load_model(tuned_path, strategy)
    start = base.start_state(persona)
    for got, want, zero in zip(start.layers, tuned.zero_state().layers, base.zero_state().layers):
        for a, b, z in zip(got, want, zero):
            assert torch.equal(a, b) and (a.device, a.dtype) == (z.device, z.dtype)
    assert start.layers[0][1].device.type == "cuda" and start.layers[1][1].device.type == "cpu"
    got, _ = base.forward(TOKENS, start)
    want, _ = tuned.forward(TOKENS)
    assert torch.equal(got, want)


def test_what_is_read_is_bounded(tmp_path, monkeypatch):
    from roost.engine import tuned_state

    legacy, zipped = tmp_path / "legacy.pth", tmp_path / "zipped.pth"
    torch.save(state_dict(2, 2, 64), legacy, _use_new_zipfile_serialization=False)
    torch.save(state_dict(2, 2, 64), zipped)
    assert load_tuned_state(legacy).n_layer == 2 and is_tuned_state_file(legacy)
    monkeypatch.setattr(tuned_state, "MAX_BYTES", 20_000)
    with pytest.raises(NotATunedStateError, match="legacy.pth is too large to be a state"):
        load_tuned_state(legacy)  # the old pickle format would be read whole: not opened at all
    with pytest.raises(NotATunedStateError, match="zipped.pth is too large to be a state .*2 layers of 2x64x64"):
        load_tuned_state(zipped)  # keys and shapes read without the data, then refused
    assert not is_tuned_state_file(zipped) and not is_tuned_state_file(legacy)
