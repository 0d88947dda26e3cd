"""Strategy strings: the one place where they are parsed.

A strategy says where each layer of a model runs and in which precision. Roost accepts ChatRWKV's
grammar verbatim, plus readable aliases::

    cpu fp32                      every layer on the CPU in float32
    cpu bf16                      bfloat16 weights and activations
    cpu fp32i8 | cpu int8         int8 weights, float32 activations
    cpu fp32i4 | cpu int4         4-bit weights in groups (half the bytes of int8, lower quality)
    cuda fp16 | cuda:1 fp16       one GPU, half precision
    cuda fp16i8 | cuda int8       one GPU, int8 weights
    cuda:0 fp16 *20 -> cpu fp32   the first 20 layers on the GPU, the rest on the CPU
    cuda fp16 *10+                10 layers kept on the GPU, the rest streamed to it per token
    mps fp32                      Apple GPU

Parsing needs no model and no torch device; :func:`plan_layers` places the layers of a model with
``n_layer`` blocks (the output head counts as one more layer, as in ChatRWKV), and
:func:`check_devices` checks the devices against what a machine has.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from roost.engine.errors import StrategyError

DEVICES = ("cpu", "cuda", "mps")
PRECISIONS = ("fp32", "fp16", "bf16")
# readable aliases -> ChatRWKV precision token, per device
_ALIASES = {
    ("cpu", "int8"): "fp32i8",
    ("cuda", "int8"): "fp16i8",
    ("mps", "int8"): "fp32i8",
    ("cpu", "int4"): "fp32i4",
    ("cuda", "int4"): "fp16i4",  # refused below with the reason
    ("mps", "int4"): "fp32i4",
    ("cpu", "float32"): "fp32",
    ("cpu", "bfloat16"): "bf16",
    ("cuda", "float16"): "fp16",
}
_STAGE_RE = re.compile(
    r"^(?P<device>[a-z]+)(?::(?P<index>\d+))?\s+(?P<prec>[a-z0-9]+)"
    r"(?:\s+\*(?P<layers>\d+)(?P<stream>\+)?)?$"
)


@dataclass(frozen=True)
class Stage:
    """One ``device precision [*N[+]]`` part of a strategy."""

    device: str  # "cpu" | "cuda" | "mps"
    index: int | None  # cuda:N -> N
    dtype: str  # activation/weight float type: "fp32" | "fp16" | "bf16"
    int8: bool  # weights quantised to int8 with per-channel scales
    layers: int | None  # "*N": how many layers this stage holds (None: share the rest)
    stream: bool  # "*N+": the layers beyond N are streamed to this device per forward
    int4: bool = False  # weights quantised to 4 bits in groups (CPU only)

    @property
    def quant(self) -> str:
        """The weights' suffix in ChatRWKV's grammar: "i8", "i4" or ""."""
        return "i8" if self.int8 else "i4" if self.int4 else ""

    @property
    def torch_device(self) -> str:
        return f"{self.device}:{self.index}" if self.index is not None else self.device

    def __str__(self) -> str:
        s = f"{self.torch_device} {self.dtype}{self.quant}"
        if self.layers is not None:
            s += f" *{self.layers}{'+' if self.stream else ''}"
        return s


@dataclass(frozen=True)
class Strategy:
    stages: tuple[Stage, ...]

    def __str__(self) -> str:
        return " -> ".join(str(s) for s in self.stages)

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.device for s in self.stages))

    @property
    def single(self) -> Stage | None:
        """The stage when the whole model sits on one device in one precision."""
        return self.stages[0] if len(self.stages) == 1 and not self.stages[0].stream else None


@dataclass(frozen=True)
class Placement:
    """Where one layer runs: the stage it belongs to and whether it is streamed."""

    stage: Stage
    stream: bool = False


def parse_strategy(text: str) -> Strategy:
    """Parse a strategy string; raise :class:`StrategyError` with the reason in plain words."""
    if not isinstance(text, str) or not text.strip():
        raise StrategyError("The strategy is empty. Example: 'cpu fp32' or 'cuda fp16'.")
    parts = [p.strip() for p in text.strip().lower().split("->")]
    stages = []
    for part in parts:
        stages.append(_parse_stage(" ".join(part.split()), text))
    if sum(1 for s in stages if s.stream) > 1:
        raise StrategyError(f"'{text}': only one stage may stream layers ('*N+').")
    for s in stages[:-1]:
        if s.layers is None and not s.stream:
            raise StrategyError(
                f"'{text}': every stage but the last needs a layer count, as in "
                "'cuda fp16 *20 -> cpu fp32'."
            )
    return Strategy(tuple(stages))


def _parse_stage(part: str, whole: str) -> Stage:
    m = _STAGE_RE.match(part)
    if not m:
        raise StrategyError(
            f"Cannot read '{part}' in strategy '{whole}'. Each part is 'DEVICE PRECISION' "
            "with an optional '*LAYERS', for example 'cpu fp32', 'cuda fp16 *20 -> cpu fp32'."
        )
    device, prec = m["device"], m["prec"]
    if device not in DEVICES:
        raise StrategyError(
            f"Unknown device '{device}' in strategy '{whole}'. Devices: {', '.join(DEVICES)}."
        )
    if m["index"] is not None and device != "cuda":
        raise StrategyError(f"'{part}': only cuda devices take an index (cuda:0, cuda:1).")
    prec = _ALIASES.get((device, prec), prec)
    int8, int4 = prec.endswith("i8"), prec.endswith("i4")
    dtype = prec[:-2] if int8 or int4 else prec
    if dtype not in PRECISIONS:
        raise StrategyError(
            f"Unknown precision '{m['prec']}' in strategy '{whole}'. Precisions: fp32, fp16, "
            "bf16, int8 weights as fp32i8 / fp16i8 / bf16i8 (or simply 'int8'), and on the CPU "
            "4-bit weights as 'int4'."
        )
    if int4 and device != "cpu":
        raise StrategyError(
            f"'{part}': 4-bit weights (int4) run on the CPU only; on a GPU use 8-bit weights, "
            f"'{device} fp16i8'."
        )
    if device == "cpu" and dtype == "fp16":
        raise StrategyError(
            f"'{part}': half precision (fp16) is too slow and inexact on a CPU; use 'cpu bf16', "
            "'cpu fp32' or 'cpu int8'."
        )
    layers = int(m["layers"]) if m["layers"] is not None else None
    stream = m["stream"] is not None
    if stream and device == "cpu":
        raise StrategyError(f"'{part}': streaming layers ('*N+') is for GPUs, not the CPU.")
    return Stage(device, int(m["index"]) if m["index"] else None, dtype, int8, layers, stream, int4)


def plan_layers(strategy: Strategy, n_layer: int) -> list[Placement]:
    """Place ``n_layer`` blocks plus the output head (index ``n_layer``) on the stages.

    Follows ChatRWKV: stages with ``*N`` take N layers in order; stages without a count share what
    is left; with ``*N+`` the stage keeps N layers and streams every layer nobody else holds.
    """
    total = n_layer + 1
    fixed = sum(s.layers or 0 for s in strategy.stages)
    if fixed > total:
        raise StrategyError(
            f"The strategy '{strategy}' places {fixed} layers but this model has {n_layer} "
            f"layers plus the output head ({total} in all)."
        )
    counts = [s.layers or 0 for s in strategy.stages]
    streamed = 0
    stream_i = next((i for i, s in enumerate(strategy.stages) if s.stream), None)
    if stream_i is not None:
        streamed = total - fixed
        counts[stream_i] += streamed
    else:
        free = [i for i, s in enumerate(strategy.stages) if s.layers is None]
        left = total - fixed
        for n, i in enumerate(free):
            share = left // (len(free) - n)
            counts[i] += share
            left -= share
        counts[-1] += left
    placements: list[Placement] = []
    for i, (stage, count) in enumerate(zip(strategy.stages, counts)):
        kept = count - (streamed if i == stream_i else 0)
        placements += [Placement(stage)] * kept
        if i == stream_i:
            placements += [Placement(stage, stream=True)] * streamed
    return placements[:total]


def check_devices(strategy: Strategy, *, cuda_count: int, mps: bool) -> None:
    """Raise :class:`StrategyError` when the strategy names a device this machine lacks."""
    available = ["cpu"] + [f"cuda:{i}" for i in range(cuda_count)] + (["mps"] if mps else [])
    for s in strategy.stages:
        if s.device == "cuda" and (s.index or 0) >= cuda_count:
            raise StrategyError(
                f"The strategy '{strategy}' needs {s.torch_device}, but "
                + ("this machine has no usable NVIDIA GPU" if cuda_count == 0
                   else f"this machine has {cuda_count} NVIDIA GPU(s)")
                + f". Available devices: {', '.join(available)}."
            )
        if s.device == "mps" and not mps:
            raise StrategyError(
                f"The strategy '{strategy}' needs Apple's MPS GPU, which this machine lacks. "
                f"Available devices: {', '.join(available)}."
            )


def machine_devices() -> dict:
    """What torch can use on this machine, as keyword arguments for :func:`check_devices`."""
    import torch

    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    return {"cuda_count": torch.cuda.device_count() if torch.cuda.is_available() else 0, "mps": mps}
