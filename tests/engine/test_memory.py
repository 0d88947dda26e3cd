"""Memory estimates from the shapes, the refusal message, and loading without a RAM spike."""

from __future__ import annotations

import pytest

from engine import load_model
from engine.checkpoint import open_checkpoint
from engine.errors import OutOfMemoryError
from engine.memory import check_fits, estimate
from engine.strategy import parse_strategy


def test_estimate_scales_with_precision(make_checkpoint):
    t, cfg = open_checkpoint(make_checkpoint("v7.0", n_layer=4, n_embd=256))
    fp32 = estimate(t, cfg, parse_strategy("cpu fp32")).per_device["cpu"]
    bf16 = estimate(t, cfg, parse_strategy("cpu bf16")).per_device["cpu"]
    int8 = estimate(t, cfg, parse_strategy("cpu int8")).per_device["cpu"]
    assert fp32 > bf16 > int8


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
    import engine.memory

    monkeypatch.setattr(engine.memory, "available", lambda: {"cpu": 10 * 1024 ** 2})
    with pytest.raises(OutOfMemoryError, match="Close other programs"):
        load_model(make_checkpoint("v5.2"), "cpu fp32")
