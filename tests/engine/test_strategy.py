"""The strategy grammar, without any model."""

from __future__ import annotations

import pytest

from roost.engine.errors import StrategyError
from roost.engine.strategy import check_devices, parse_strategy, plan_layers


@pytest.mark.parametrize("text, canonical", [
    ("cpu fp32", "cpu fp32"),
    ("cpu bf16", "cpu bf16"),
    ("cpu fp32i8", "cpu fp32i8"),
    ("cpu int8", "cpu fp32i8"),
    ("cuda fp16", "cuda fp16"),
    ("cuda fp16i8", "cuda fp16i8"),
    ("cuda int8", "cuda fp16i8"),
    ("cpu int4", "cpu fp32i4"),
    ("cpu bf16i4", "cpu bf16i4"),
    ("cuda fp16i8 *10 -> cpu int4", "cuda fp16i8 *10 -> cpu fp32i4"),
    ("cuda:0 fp16 *20 -> cpu fp32", "cuda:0 fp16 *20 -> cpu fp32"),
    ("cuda:0 fp16 *20->cpu fp32", "cuda:0 fp16 *20 -> cpu fp32"),
    ("cuda fp16 *10+", "cuda fp16 *10+"),
    ("mps fp32", "mps fp32"),
    ("  CPU   FP32 ", "cpu fp32"),
])
def test_chatrwkv_strings_and_aliases_parse(text, canonical):
    assert str(parse_strategy(text)) == canonical


@pytest.mark.parametrize("text, words", [
    ("", "empty"),
    ("gpu fp16", "Unknown device 'gpu'"),
    ("cpu fp8", "Unknown precision 'fp8'"),
    ("cpu fp16", "too slow"),
    ("cpu", "Cannot read"),
    ("cuda fp16 -> cpu fp32", "needs a layer count"),
    ("cpu fp32 *2+", "for GPUs"),
    ("cuda:0 fp16 *2+ -> cuda:1 fp16 *3+", "only one stage"),
    ("mps:1 fp32", "only cuda devices"),
    ("cuda int4", "CPU only"),
    ("cuda fp16i4", "CPU only"),
])
def test_bad_strategies_say_what_is_wrong(text, words):
    with pytest.raises(StrategyError, match=words):
        parse_strategy(text)


def test_plan_places_counted_layers_first_and_the_rest_last():
    plan = plan_layers(parse_strategy("cuda fp16 *20 -> cpu fp32"), 24)
    assert len(plan) == 25  # 24 blocks and the head
    assert [p.stage.device for p in plan] == ["cuda"] * 20 + ["cpu"] * 5


def test_plan_streams_the_layers_beyond_the_kept_ones():
    plan = plan_layers(parse_strategy("cuda fp16 *10+"), 24)
    assert [p.stream for p in plan] == [False] * 10 + [True] * 15


def test_plan_splits_layers_evenly_between_uncounted_stages():
    plan = plan_layers(parse_strategy("cpu fp32"), 12)
    assert len(plan) == 13 and all(p.stage.device == "cpu" for p in plan)


def test_plan_refuses_more_layers_than_the_model_has():
    with pytest.raises(StrategyError, match="this model has 24 layers"):
        plan_layers(parse_strategy("cuda fp16 *30 -> cpu fp32"), 24)


def test_devices_missing_on_this_machine_are_named():
    with pytest.raises(StrategyError, match="no usable NVIDIA GPU.*Available devices: cpu"):
        check_devices(parse_strategy("cuda fp16"), cuda_count=0, mps=False)
    with pytest.raises(StrategyError, match="cuda:1.*1 NVIDIA GPU"):
        check_devices(parse_strategy("cuda:1 fp16"), cuda_count=1, mps=False)
    with pytest.raises(StrategyError, match="MPS"):
        check_devices(parse_strategy("mps fp32"), cuda_count=0, mps=False)
    check_devices(parse_strategy("cuda:0 fp16 *4 -> cpu fp32"), cuda_count=1, mps=False)


def test_int4_stages_say_so():
    stage = parse_strategy("cpu int4").single
    assert stage.int4 and not stage.int8 and stage.dtype == "fp32" and stage.quant == "i4"
    assert parse_strategy("cpu int8").single.quant == "i8" and parse_strategy("cpu fp32").single.quant == ""
