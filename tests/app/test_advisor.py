"""Automatic strategy and fit labels over many imagined machines; the first-run recommendation."""

from __future__ import annotations

import pytest

from roost.core.advisor import CLOSE_OTHERS, RUNS_WELL, WILL_NOT_FIT, ModelShape, choose_strategy
from roost.core.catalog import load_catalog, recommend
from roost.core.hardware import Gpu, Machine
from roost.engine import native

G = 1024 ** 3
KERNELS = native.available()  # Roost's compiled CPU kernels are installed
M_0_4B, M_1_5B, M_2_9B, M_7B, M_14B = (ModelShape(7, 24, 1024), ModelShape(7, 24, 2048), ModelShape(7, 32, 2560),
                                       ModelShape(7, 32, 4096), ModelShape(4, 40, 5120, 50277))


def pc(ram, free=None, gpu=None, vram_free=None, torch_cuda=True, mps=False):
    gpus = (Gpu(0, f"GPU {gpu}GB", int(gpu * G), int((vram_free if vram_free is not None else gpu - 0.5) * G)),) if gpu else ()
    return Machine("test", "cpu", 8, int(ram * G), int((free if free is not None else ram * 0.75) * G),
                   gpus=gpus, torch_cuda=torch_cuda, mps=mps)


@pytest.mark.parametrize("shape, machine, strategy, label", [
    # no GPU: int8 on the CPU, labelled by RAM
    (M_1_5B, pc(8), "cpu int8", RUNS_WELL),
    (M_7B, pc(8), "cpu int4", RUNS_WELL),  # 4-bit weights where 8-bit ones cannot fit (5.0 of 6 GB free)
    (M_7B, pc(8, free=4.5), "cpu int4", CLOSE_OTHERS),
    (M_7B, pc(5), "cpu int8", WILL_NOT_FIT),  # neither fits
    (M_7B, pc(16, free=6), "cpu int8", CLOSE_OTHERS),
    (M_7B, pc(64), "cpu int8", RUNS_WELL),
    # 13.5 of 13.6 GB usable with the PyTorch path's int8; the compiled kernels' 8-bit blocks keep an
    # fp16 scale per 32 weights (14.3 GB): then 4 bits fit, and are chosen
    (M_14B, pc(16), *(("cpu int4", RUNS_WELL) if KERNELS else ("cpu int8", CLOSE_OTHERS))),
    (M_14B, pc(14), "cpu int4", RUNS_WELL),
    (M_14B, pc(8), "cpu int8", WILL_NOT_FIT),
    # cards from 2 to 80 GB
    (M_0_4B, pc(16, gpu=2), "cuda fp16", RUNS_WELL),
    (M_1_5B, pc(16, gpu=2), "cuda fp16i8", RUNS_WELL),
    (M_2_9B, pc(16, gpu=2), "cuda fp16i8 *", RUNS_WELL),
    (M_1_5B, pc(16, gpu=4), "cuda fp16", RUNS_WELL),
    (M_7B, pc(16, gpu=4), "cuda fp16i8 *", RUNS_WELL),
    (M_7B, pc(32, gpu=8), "cuda fp16i8", RUNS_WELL),
    (M_7B, pc(32, gpu=6), "cuda fp16i8 *", RUNS_WELL),
    (M_7B, pc(32, gpu=16), "cuda fp16", RUNS_WELL),
    (M_7B, pc(64, gpu=24), "cuda fp16", RUNS_WELL),
    (M_14B, pc(64, gpu=80), "cuda fp16", RUNS_WELL),
    (M_14B, pc(16, gpu=8), "cuda fp16i8 *", RUNS_WELL),  # 21 layers on the card, 7.5 GB in RAM
    (M_14B, pc(12, free=5, gpu=8), "cuda fp16i8 *", CLOSE_OTHERS),
    # a busy card: free VRAM, not total, decides
    (M_7B, pc(32, gpu=24, vram_free=4), "cuda fp16i8 *", RUNS_WELL),
    # an NVIDIA card but a CPU build of torch: the CPU
    (M_1_5B, pc(16, gpu=12, torch_cuda=False), "cpu int8", RUNS_WELL),
    # Apple Silicon
    (M_1_5B, pc(16, mps=True), "mps fp32", RUNS_WELL),
    (M_7B, pc(16, mps=True), "cpu int8", RUNS_WELL),
])
def test_automatic_strategy(shape, machine, strategy, label):
    advice = choose_strategy(shape, machine)
    assert advice.strategy.startswith(strategy)
    assert advice.label == label
    assert advice.reason and advice.reason_zh and advice.label_zh


def test_four_bits_are_chosen_only_where_eight_do_not_fit_and_said_so():
    assert choose_strategy(M_7B, pc(16, free=6)).strategy == "cpu int8"  # fits once others close: 8 bits
    advice = choose_strategy(M_7B, pc(8))
    assert advice.strategy == "cpu int4" and "4-bit" in advice.reason and "less exact" in advice.reason
    assert "4 位" in advice.reason_zh and "准确度明显低于" in advice.reason_zh
    assert advice.need["cpu"] < choose_strategy(M_7B, pc(64)).need["cpu"] * 0.8
    split = choose_strategy(M_14B, pc(12, gpu=4))  # the card's share in 8 bits, the CPU's in 4
    assert split.strategy.startswith("cuda fp16i8 *") and split.strategy.endswith("-> cpu fp32i4")
    assert "4-bit" in split.reason and split.label != WILL_NOT_FIT


def test_four_bits_are_expected_as_fast_as_this_cpus_4_bit_kernel_runs():
    """The 4-bit kernel's speed against the 8-bit one's, measured on this CPU, sets what the advice
    expects of int4: bound by its arithmetic on some CPUs (AVX2; Zen 4 despite AVX-512) it gains
    little or nothing, and the speed class must not promise more. Unmeasured, the CPU's vector
    instructions stand in for the measurement."""
    import dataclasses

    from roost.core.advisor import INT4_BYTES

    def tps(machine, shape=M_7B, **changes):
        return choose_strategy(shape, dataclasses.replace(machine, **changes)).tokens_per_second

    assert choose_strategy(M_7B, pc(8)).strategy == "cpu int4"
    eight = tps(pc(64))
    # twice as fast per product: faster than int8, but less than half the bytes alone would say
    # (the head, block 0 and the small operations take as long as with int8)
    assert eight * 1.3 < tps(pc(8), int4_ratio=2.0) < eight / INT4_BYTES
    # as fast per product: as fast as int8; slower per product (an AVX2 CPU): slower than int8
    assert tps(pc(8), int4_ratio=1.0) == pytest.approx(eight, rel=0.02)
    assert tps(pc(8), int4_ratio=0.9) < eight
    assert tps(pc(8), int4_ratio=1.7) > tps(pc(8), int4_ratio=1.2) > tps(pc(8), int4_ratio=1.0)
    # unmeasured: the vector instructions stand in (AVX-512 kernels keep up with the memory better)
    assert tps(pc(8), cpu_capability="AVX512") > eight * 1.2
    assert tps(pc(8), cpu_capability="AVX2") < eight
    # a measurement wins over the instructions
    assert tps(pc(8), cpu_capability="AVX512", int4_ratio=1.0) == pytest.approx(eight, rel=0.02)
    # a GPU split: the CPU's layers in 4 bits
    assert tps(pc(12, gpu=4), M_14B, int4_ratio=1.7) > tps(pc(12, gpu=4), M_14B, int4_ratio=0.9) * 1.2


def test_avx2_cpus_are_expected_to_reach_less_of_their_memory_speed():
    """Generation reaches 0.38-0.41 of the read bandwidth on an AVX2 CPU, 0.5-0.66 with AVX-512:
    the speed class follows the kernels, not only the memory."""
    import dataclasses

    from roost.core.advisor import CPU_SHARE, CPU_SHARE_AVX2

    machines = {c: dataclasses.replace(pc(32), read_rate=20e9, cpu_capability=c) for c in ("AVX512", "AVX2")}
    speed = {c: choose_strategy(M_1_5B, m) for c, m in machines.items()}
    assert speed["AVX512"].strategy == speed["AVX2"].strategy == "cpu int8"
    ratio = speed["AVX2"].tokens_per_second / speed["AVX512"].tokens_per_second
    assert ratio == pytest.approx(CPU_SHARE_AVX2 / CPU_SHARE)


def test_the_split_puts_as_many_layers_on_the_gpu_as_fit():
    small = choose_strategy(M_7B, pc(32, gpu=4)).strategy
    big = choose_strategy(M_7B, pc(32, gpu=6)).strategy
    k_small, k_big = (int(s.split("*")[1].split()[0]) for s in (small, big))
    assert 0 < k_small < k_big < 33


def test_speed_classes_order_sensibly():
    cpu = choose_strategy(M_7B, pc(64))
    gpu = choose_strategy(M_7B, pc(64, gpu=24))
    assert gpu.tokens_per_second > cpu.tokens_per_second and gpu.fit == "fast"


def test_catalog_covers_the_families_with_both_languages():
    models = load_catalog()
    assert {m.family for m in models} >= {"RWKV-4 Raven", "RWKV-5 Eagle", "RWKV-6 Finch", "RWKV-7 G1"}
    assert all(m.description and m.description_zh and len(m.sha256) == 64 for m in models)
    raven = next(m for m in models if m.family == "RWKV-4 Raven")
    assert raven.vocab_size == 50277 and raven.companions


@pytest.mark.parametrize("machine, at_least, at_most", [
    (pc(8), 0.1, 1.5),
    (pc(32, gpu=24), 2.9, 20),
    (pc(4, free=1), 0.1, 0.4),
])
def test_first_run_recommendation_is_a_g1_model_that_fits(machine, at_least, at_most):
    model, advice = recommend(load_catalog(), machine)
    assert model.family == "RWKV-7 G1"
    assert at_least <= model.billions <= at_most


def test_the_fit_label_tells_models_apart_by_speed_and_memory():
    """On a 24 GB computer without a GPU, 'runs well' was true of nearly every model; the fit label
    says how each will feel, from the measured read rate."""
    from dataclasses import replace

    from roost.core.advisor import COMFORTABLE, FAST, SLOW, TIGHT, WONT_FIT

    machine = replace(pc(24, free=20), read_rate=40e9)  # this development machine's measured rate
    fits = {name: choose_strategy(shape, machine).fit for name, shape in
            [("0.4B", M_0_4B), ("1.5B", M_1_5B), ("2.9B", M_2_9B), ("7B", M_7B)]}
    assert fits == {"0.4B": FAST, "1.5B": FAST, "2.9B": COMFORTABLE, "7B": SLOW}
    assert choose_strategy(M_7B, replace(pc(16, free=6), read_rate=40e9)).fit == TIGHT
    assert choose_strategy(M_14B, replace(pc(8), read_rate=40e9)).fit == WONT_FIT
    slow_ram = replace(machine, read_rate=8e9)  # an older laptop: the same model is slower
    assert choose_strategy(M_1_5B, slow_ram).tokens_per_second < choose_strategy(M_1_5B, machine).tokens_per_second / 4
    assert choose_strategy(M_1_5B, slow_ram).fit == SLOW


def test_the_best_read_rate_of_a_computer_is_kept_and_a_busy_reading_does_not_stick(tmp_path, monkeypatch):
    """Other programs only slow a reading down: a computer's read rate is measured at each probe and
    the best reading kept (one taken while the machine was busy, 11 GB/s against 21.5 quiet, made
    a 24 GB machine's list call 1.5B models slow for good)."""
    from roost.core import hardware

    monkeypatch.setenv("ROOST_HOME", str(tmp_path))
    assert hardware.measure_read_rate(mib=32, passes=3) > 1e8  # a real reading: bytes per second
    readings = iter([11e9, 21.5e9, 15e9, 40e9, 9e9])
    monkeypatch.setattr(hardware, "measure_read_rate", lambda: next(readings))
    assert hardware.read_rate("cpu A", 8, 16 << 30) == 11e9  # (busy at the first probe)
    assert hardware.read_rate("cpu A", 8, 16 << 30) == 21.5e9  # quiet: the truth comes out
    assert hardware.read_rate("cpu A", 8, 16 << 30) == 21.5e9  # busy again: the best stays
    assert hardware.read_rate("cpu B", 8, 16 << 30) == 40e9  # another computer: its own
    (tmp_path / "machine.json").write_text("{broken")
    assert hardware.read_rate("cpu A", 8, 16 << 30) == 9e9  # a damaged file: what is measured now


def test_the_4_bit_kernels_speed_is_measured_once_beside_the_read_rate(tmp_path, monkeypatch):
    import json

    from roost.core import hardware

    monkeypatch.setenv("ROOST_HOME", str(tmp_path))
    calls = []
    monkeypatch.setattr(hardware, "measure_read_rate", lambda: calls.append("read") or 33e9)
    monkeypatch.setattr(hardware, "measure_int4_ratio", lambda: calls.append("int4") or 1.25)
    assert hardware.read_rate("cpu A", 8, 16 << 30) == 33e9
    assert hardware.int4_ratio("cpu A", 8, 16 << 30) == 1.25
    assert hardware.int4_ratio("cpu A", 8, 16 << 30) == 1.25 and hardware.read_rate("cpu A", 8, 16 << 30) == 33e9
    assert calls.count("int4") == 1  # remembered (the read rate is read again, its best kept)
    from roost.engine import native

    name = f"int4_ratio_{native.FORMAT}" if native.available() else "int4_ratio"  # (kernels' figure apart)
    assert json.loads((tmp_path / "machine.json").read_text())[name] == 1.25
    assert hardware.int4_ratio("cpu B", 8, 16 << 30) == 1.25 and calls[-1] == "int4"  # another computer
    monkeypatch.setattr(hardware, "measure_int4_ratio", lambda: calls.append("none") or 0.0)
    (tmp_path / "machine.json").write_text("[]")  # damaged: measured again, a failed reading not kept
    assert hardware.int4_ratio("cpu A", 8, 16 << 30) == 0.0 and calls[-1] == "none"
    assert hardware.int4_ratio("cpu A", 8, 16 << 30) == 0.0 and calls[-2:] == ["none", "none"]


def test_the_4_bit_kernels_speed_is_a_real_reading():
    from roost.engine.int4 import int4_works, speed_against_int8

    ratio = speed_against_int8(matrices=4, rows=256, cols=512, passes=3)
    if not int4_works():
        assert ratio == 0.0
    else:  # a ratio of two timings of the same products: positive, and not absurd
        assert 0.05 < ratio < 20


def test_the_probe_reads_this_machine_and_the_cpu_kernels_it_gets(tmp_path):
    import torch

    from roost.core.hardware import probe

    machine = probe(tmp_path / "models", measure=False)
    assert machine.cpu_cores >= 1 and 0 < machine.ram_free <= machine.ram_total
    assert machine.disk_free and machine.disk_free > 0
    assert machine.cpu_capability == torch.backends.cpu.get_cpu_capability() != ""


def test_a_4_bit_figure_measured_before_the_compiled_kernels_is_not_theirs(tmp_path, monkeypatch):
    import json

    from roost.core import hardware
    from roost.engine import native

    if not native.available():
        pytest.skip(f"no compiled kernels: {native.unavailable_reason()}")
    monkeypatch.setenv("ROOST_HOME", str(tmp_path))
    key = {"cpu": "cpu A", "cores": 8, "ram": 16 << 30}
    (tmp_path / "machine.json").write_text(json.dumps({**key, "int4_ratio": 0.9}))  # PyTorch's, on an AVX2 CPU
    monkeypatch.setattr(hardware, "measure_int4_ratio", lambda: 1.7)
    assert hardware.int4_ratio("cpu A", 8, 16 << 30) == 1.7


def test_with_the_compiled_kernels_the_expected_speed_is_theirs_and_said_in_one_set_of_words():
    """The compiled kernels read weights at ~0.8 of the memory's speed (the PyTorch path 0.4-0.6):
    the advisor expects that where the probe found them, and the app and `roost models` say the
    fit in the same words (Advice.fit_words) with the speed to expect."""
    from dataclasses import replace

    from roost.core.advisor import FIT_WORDS

    quiet = replace(pc(24), read_rate=21.5e9, cpu_capability="AVX512")
    torch_path = choose_strategy(M_1_5B, quiet)
    kernels = choose_strategy(M_1_5B, replace(quiet, kernels="AVX512-VNNI"))
    assert torch_path.strategy == kernels.strategy == "cpu int8"
    assert 10 <= kernels.tokens_per_second <= 14  # (measured here: 11.8 tok/s)
    assert kernels.tokens_per_second > 1.25 * torch_path.tokens_per_second
    assert kernels.fit_words == FIT_WORDS[kernels.fit] and kernels.fit_words[1]
    assert kernels.expected_speed[0].startswith("about ") and kernels.expected_speed[0].endswith(" tokens/s")
    assert choose_strategy(M_14B, replace(pc(8), read_rate=40e9)).expected_speed == ("", "")
