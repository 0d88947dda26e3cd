"""Which strategy runs a model best on a machine, whether it fits, and why: pure functions.

Memory needs come from the engine's estimate over the model's shape (engine.memory), so the
advice and the loader's own check agree. Every choice carries one sentence in English and Chinese.
"""

from __future__ import annotations

from dataclasses import dataclass

from roost.core.hardware import Machine
from roost.engine.checkpoint import ModelConfig, official_config
from roost.engine.memory import estimate, gib, shape_numels
from roost.engine.strategy import parse_strategy

GPU_RESERVE = 300 * 1024 ** 2  # left free on the card for the driver and other programs
OS_SHARE = 0.85  # of total RAM, the most a model can ever get: the OS and desktop keep the rest
# effective bytes/s a token's weights are read at, to class the expected speed; on the CPU the
# machine's measured read rate (hardware.read_rate) times the share of it generation reaches
# (0.57-0.75 measured: RWKV-7 and RWKV-6 with 8-bit weights), else CPU_READ
CPU_READ, GPU_READ, MPS_READ = 15e9, 400e9, 80e9
CPU_SHARE = 0.6
CPU_SHARE_AVX2 = 0.4  # on AVX2 CPUs (no AVX-512): 0.38-0.41 measured, RWKV-6 and RWKV-7 in 8 bits (Zen 3)
# with the compiled kernels (hardware.Machine.kernels), measured with 8-bit weights, 2 threads (Intel
# Xeon, 21.5 GB/s): 0.85 with AVX512-VNNI (v7 1.5B, 83 ms a token), 0.66 with AVX2 only (9.4 tok/s)
CPU_SHARE_KERNELS = {"AVX512-VNNI": 0.8, "other": 0.65}
# what the models list says about speed, from the expected tokens per second
FAST, COMFORTABLE, SLOW, TIGHT, WONT_FIT = "fast", "comfortable", "slow", "tight", "won't fit"
FAST_TPS, COMFORTABLE_TPS = 15.0, 5.0
RUNS_WELL, CLOSE_OTHERS, WILL_NOT_FIT = "runs well", "runs, close other programs first", "will not fit"
INT4_BYTES = 0.65  # bytes per weight read with cpu int4 (4-bit groups; the head and block 0 in int8)
# a cpu int8 token's share of time in its big products, the rest being small operations (profiled
# on Zen 4: 58% with the RWKV-7 1.5B shape, 74% with RWKV-6 1.6B, whose 8-bit products are also
# faster there); and how much faster the 4-bit kernel runs a product where unmeasured
# (engine.int4.speed_against_int8: 1.6-1.75x on Zen 4 and per matrix on an Intel AVX-512 CPU; 0.9x
# on Zen 3, AVX2)
MATRIX_SHARE = 0.65
INT4_RATIO = {"AVX512": 1.7, "other": 0.9}
LABELS_ZH = {RUNS_WELL: "运行流畅", CLOSE_OTHERS: "可运行，请先关闭其他程序", WILL_NOT_FIT: "内存不足，无法运行"}
# the one set of words for how a model does on this computer (Advice.fit), in the app and the commands
FIT_WORDS = {FAST: ("Fast", "流畅"), COMFORTABLE: ("Comfortable", "可以接受"), SLOW: ("Slow", "较慢"),
             TIGHT: ("Close other programs first", "需先关闭其他程序"), WONT_FIT: ("Won't fit", "内存不够")}


@dataclass(frozen=True)
class ModelShape:
    version: int
    n_layer: int
    n_embd: int
    vocab_size: int = 65536

    def config(self) -> ModelConfig:
        arch = {4: "v4", 5: "v5.2", 6: "v6.0", 7: "v7.0"}[self.version]
        return official_config(arch, self.n_layer, self.n_embd, self.vocab_size)


@dataclass(frozen=True)
class Advice:
    strategy: str
    label: str
    tokens_per_second: float  # a rough expectation, for the speed class
    reason: str
    reason_zh: str
    need: dict  # bytes per device

    @property
    def fit(self) -> str:
        """One word for the models list: fast, comfortable or slow (by the expected speed), tight
        (it fits only once other programs are closed) or won't fit."""
        if self.label == WILL_NOT_FIT:
            return WONT_FIT
        if self.label == CLOSE_OTHERS:
            return TIGHT
        t = self.tokens_per_second
        return FAST if t >= FAST_TPS else COMFORTABLE if t >= COMFORTABLE_TPS else SLOW

    @property
    def fit_words(self) -> tuple[str, str]:
        """The fit in words: (English, Chinese)."""
        return FIT_WORDS[self.fit]

    @property
    def expected_speed(self) -> tuple[str, str]:
        """What to expect, (English, Chinese): "about 7 tokens/s" (a rough estimate from this
        computer's measured memory speed); "" where it will not run."""
        if self.fit == WONT_FIT or self.tokens_per_second <= 0:
            return "", ""
        t = self.tokens_per_second
        n = f"{t:.0f}" if t >= 10 else f"{t:.1f}"
        return f"about {n} tokens/s", f"约每秒 {n} 个词元"

    @property
    def label_zh(self) -> str:
        return LABELS_ZH[self.label]


def need_for(shape: ModelShape, strategy: str) -> dict[str, int]:
    from roost.engine import native

    # (with the compiled kernels an 8-bit weight takes 1/16 more: its fp16 scale per 32)
    est = estimate(None, shape.config(), parse_strategy(strategy), blocks=native.available()).per_device
    return {("cuda:0" if k == "cuda" else k): v for k, v in est.items()}


def int4_speed_bytes(machine: Machine, shape: ModelShape) -> float:
    """A `cpu int4` token's time against a `cpu int8` one's (as 8-bit bytes per weight, for
    :func:`_bytes_per_token`): the big products, ``MATRIX_SHARE`` of an 8-bit token, run
    ``machine.int4_ratio`` times faster (measured on this CPU) where their weights are 4-bit, the
    rest of the token (the head and block 0 stay 8-bit; the small operations) takes as long.
    PyTorch's 4-bit kernel is bound by its arithmetic on some CPUs (AVX2; Zen 4 despite AVX-512),
    where its half bytes gain little: cpu int4 generation measured 1.31-1.45x int8 on an Intel
    AVX-512 CPU, 0.9-1.2x on Zen 4, 1.0x on Zen 3 (1.5B shapes). Unmeasured, the ratio is taken
    from the CPU's vector instructions (``INT4_RATIO``)."""
    ratio = machine.int4_ratio if machine.int4_ratio > 0 else \
        INT4_RATIO["AVX512"] if machine.cpu_capability.startswith("AVX512") else INT4_RATIO["other"]
    ratio = min(max(ratio, 0.25), 4.0)  # a reading disturbed by other work must not run away
    cfg = shape.config()
    big = [b for b, *_ in shape_numels(cfg)]
    four = sum(big[1:]) / (sum(big) + cfg.vocab_size * cfg.n_embd)  # of the 8-bit bytes, those in 4 bits
    return 1 - MATRIX_SHARE + MATRIX_SHARE * (1 - four + four / ratio)


def cpu_read(machine: Machine) -> float:
    """Effective bytes/s generation reads weights at on this machine's CPU."""
    if machine.kernels:
        share = CPU_SHARE_KERNELS.get(machine.kernels, CPU_SHARE_KERNELS["other"])
    else:
        share = CPU_SHARE_AVX2 if machine.cpu_capability == "AVX2" else CPU_SHARE
    return machine.read_rate * share if machine.read_rate > 0 else CPU_READ * share / CPU_SHARE


def _bytes_per_token(shape: ModelShape, bytes_per_weight: float) -> float:
    cfg = shape.config()
    big = sum(b for b, *_ in shape_numels(cfg))
    return (big + cfg.vocab_size * cfg.n_embd) * bytes_per_weight


def _label(need: dict[str, int], machine: Machine) -> str:
    worst = RUNS_WELL
    for dev, n in need.items():
        if dev in ("cpu", "mps"):
            free, total = machine.ram_free, machine.ram_total * OS_SHARE
        else:
            gpu = machine.gpus[int(dev.split(":")[1])]
            free, total = gpu.free_bytes - GPU_RESERVE, gpu.total_bytes - GPU_RESERVE
        if n > total:
            return WILL_NOT_FIT
        if n > free:
            worst = CLOSE_OTHERS
    return worst


def choose_strategy(shape: ModelShape, machine: Machine) -> Advice:
    """The fastest strategy that fits, with its label and a one-sentence reason."""
    gpu = machine.usable_gpu
    if gpu is not None:
        room = gpu.free_bytes - GPU_RESERVE
        for strategy, bpw, what, what_zh in (
            ("cuda fp16", 2, "the whole model fits in the GPU's free memory in half precision",
             "整个模型以半精度放入显卡空闲显存"),
            ("cuda fp16i8", 1, "the model fits in the GPU's free memory with 8-bit weights",
             "模型以 8 位权重放入显卡空闲显存"),
        ):
            need = need_for(shape, strategy)
            if need.get("cuda:0", 0) <= room and need.get("cpu", 0) <= machine.ram_free:
                tps = GPU_READ / _bytes_per_token(shape, bpw)
                return Advice(strategy, RUNS_WELL, tps,
                              f"{gpu.name}: {what} ({gib(need['cuda:0'])} of {gib(room)} free).",
                              f"{gpu.name}：{what_zh}（需要 {gib(need['cuda:0'])}，空闲 {gib(room)}）。", need)
        k = _gpu_layers(shape, room)
        if k >= 1:
            for cpu_part, bpw in (("fp32i8", 1), ("fp32i4", INT4_BYTES)):  # 4 bits only where 8 do not fit
                strategy = f"cuda fp16i8 *{k} -> cpu {cpu_part}"
                need = need_for(shape, strategy)
                label = _label(need, machine)
                if label == WILL_NOT_FIT:
                    continue
                frac = k / (shape.n_layer + 1)
                cpu_bpw = int4_speed_bytes(machine, shape) if bpw != 1 else 1
                tps = 1 / (frac * _bytes_per_token(shape, 1) / GPU_READ + (1 - frac) * _bytes_per_token(shape, cpu_bpw) / cpu_read(machine))
                four, four_zh = ((" with 4-bit weights (noticeably less exact than 8 bits: 8-bit ones do not fit "
                                  "in RAM)", "，以 4 位权重运行（8 位权重放不进内存；准确度明显降低）") if bpw != 1 else ("", ""))
                return Advice(strategy, label, tps,
                              f"{gpu.name} has {gib(room)} free: {k} of {shape.n_layer + 1} layers run on it "
                              f"with 8-bit weights, the rest on the CPU{four}.",
                              f"{gpu.name} 空闲显存 {gib(room)}：{k}/{shape.n_layer + 1} 层在显卡上以 8 位权重运行，"
                              f"其余在 CPU 上{four_zh}。", need)
    if machine.mps:
        need = need_for(shape, "mps fp32")
        if need.get("mps", 0) + need.get("cpu", 0) <= machine.ram_free:
            return Advice("mps fp32", RUNS_WELL, MPS_READ / _bytes_per_token(shape, 4),
                          "Apple Silicon GPU (MPS), in full precision: it fits in the free unified memory.",
                          "使用 Apple 芯片的 GPU（MPS），全精度，可放入空闲的统一内存。", need)
    need = need_for(shape, "cpu int8")
    label = _label(need, machine)
    why_no_gpu = ("no usable GPU" if gpu is None and not machine.mps else "the GPU is too small")
    why_no_gpu_zh = "没有可用的显卡" if gpu is None and not machine.mps else "显卡显存不足"
    if label == WILL_NOT_FIT:  # 4-bit weights where 8-bit ones do not fit, said so: quality is lower
        need4 = need_for(shape, "cpu int4")
        label4 = _label(need4, machine)
        if label4 != WILL_NOT_FIT:
            return Advice("cpu int4", label4, cpu_read(machine) / _bytes_per_token(shape, int4_speed_bytes(machine, shape)),
                          f"On the CPU with 4-bit weights: 8-bit weights would need {gib(need['cpu'])} of RAM "
                          f"({gib(machine.ram_free)} free), 4-bit ones need {gib(need4['cpu'])}. Answers are "
                          "noticeably less exact than with 8 bits.",
                          f"在 CPU 上以 4 位权重运行：8 位权重需要内存 {gib(need['cpu'])}（空闲 {gib(machine.ram_free)}），"
                          f"4 位权重需要 {gib(need4['cpu'])}。回答的准确度明显低于 8 位。", need4)
    return Advice("cpu int8", label, cpu_read(machine) / _bytes_per_token(shape, 1),
                  f"On the CPU with 8-bit weights ({why_no_gpu}): needs {gib(need['cpu'])} of RAM, "
                  f"{gib(machine.ram_free)} free.",
                  f"在 CPU 上以 8 位权重运行（{why_no_gpu_zh}）：需要内存 {gib(need['cpu'])}，空闲 {gib(machine.ram_free)}。",
                  need)


def _gpu_layers(shape: ModelShape, room: int) -> int:
    """How many leading layers fit on the GPU with int8 weights (0 if none)."""
    lo, hi = 0, shape.n_layer  # the head stays on the CPU stage
    while lo < hi:
        mid = (lo + hi + 1) // 2
        need = need_for(shape, f"cuda fp16i8 *{mid} -> cpu fp32i8")
        if need.get("cuda:0", 0) <= room:
            lo = mid
        else:
            hi = mid - 1
    return lo


def advise_file(path) -> Advice:
    """The advice for a model file on this machine (its shape read from the tensors, not loaded)."""
    from roost.core.hardware import probe
    from roost.engine.checkpoint import open_checkpoint

    tensors, cfg = open_checkpoint(path)
    tensors.close()
    return choose_strategy(ModelShape(cfg.version, cfg.n_layer, cfg.n_embd, cfg.vocab_size), probe())
