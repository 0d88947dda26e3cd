"""The sampler and the penalties, with ChatRWKV semantics."""

from __future__ import annotations

import pytest
import torch

from roost.engine.sampling import PenaltyTracker, SamplingParams, sample_logits


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_greedy_and_its_equivalents_pick_the_argmax():
    logits = torch.randn(1000, generator=gen(1))
    best = int(logits.argmax())
    assert sample_logits(logits, SamplingParams(temperature=0), gen()) == best
    assert sample_logits(logits, SamplingParams(top_k=1), gen()) == best
    assert sample_logits(logits, SamplingParams(top_p=0.0), gen()) == best


def test_top_p_keeps_only_the_nucleus():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    picks = {sample_logits(logits, SamplingParams(top_p=0.7), gen(s)) for s in range(200)}
    assert picks == {0, 1}
    picks = {sample_logits(logits, SamplingParams(top_p=1.0), gen(s)) for s in range(400)}
    assert picks == {0, 1, 2, 3}


def _full_sort_pick(logits, params, generator):
    # the top-p sampler as written first: the whole vocabulary sorted
    probs, ids = torch.softmax(logits.float(), -1).sort(descending=True)
    keep = int((probs.cumsum(-1) < params.top_p).sum()) + 1
    probs = probs[:keep] ** (1.0 / params.temperature)
    return int(ids[torch.multinomial(probs / probs.sum(), 1, generator=generator)])


@pytest.mark.parametrize("scale", [0.3, 3.0, 12.0])  # flat (thousands in the nucleus) to peaked
@pytest.mark.parametrize("top_p", [0.3, 0.7, 0.95])
def test_top_p_picks_what_sorting_the_whole_vocabulary_picks_without_sorting_it(monkeypatch, scale, top_p):
    params = SamplingParams(top_p=top_p, temperature=0.8, presence_penalty=0, frequency_penalty=0)
    cases = [torch.randn(65536, generator=gen(s)) * scale for s in range(6)]
    want = [_full_sort_pick(lg, params, gen(s)) for s, lg in enumerate(cases)]
    sorts = []
    real_sort = torch.Tensor.sort
    monkeypatch.setattr(torch.Tensor, "sort", lambda self, *a, **k: sorts.append(self.numel()) or real_sort(self, *a, **k))
    assert [sample_logits(lg, params, gen(s)) for s, lg in enumerate(cases)] == want
    if scale >= 12.0 or (scale >= 3.0 and top_p <= 0.7):  # (a nucleus of a few tokens: sorting 65536 took 4 ms)
        assert sorts == []


def test_top_k_limits_the_candidates():
    logits = torch.log(torch.tensor([0.4, 0.3, 0.2, 0.1]))
    picks = {sample_logits(logits, SamplingParams(top_p=1.0, top_k=2), gen(s)) for s in range(200)}
    assert picks == {0, 1}


def test_banned_tokens_are_never_chosen():
    logits = torch.tensor([5.0, 1.0, 0.0])
    assert sample_logits(logits, SamplingParams(temperature=0, banned_tokens=[0]), gen()) == 1
    assert all(sample_logits(logits, SamplingParams(top_p=1, banned_tokens=(0,)), gen(s)) != 0 for s in range(50))


def test_low_temperature_sharpens():
    logits = torch.log(torch.tensor([0.6, 0.4]))
    hot = sum(sample_logits(logits, SamplingParams(top_p=1, temperature=2.0), gen(s)) for s in range(2000))
    cold = sum(sample_logits(logits, SamplingParams(top_p=1, temperature=0.3), gen(s)) for s in range(2000))
    assert cold < hot  # fewer picks of the less likely token when cold


def test_penalties_follow_the_formula_with_decay():
    p = SamplingParams(presence_penalty=0.4, frequency_penalty=0.3, penalty_decay=0.5)
    t = PenaltyTracker(5, p)
    t.update(2)
    t.update(2)
    t.update(3)
    # token 2: count 1 -> decayed 0.5 -> +1 = 1.5 -> decayed 0.75; token 3: 1
    out = t.apply(torch.zeros(5))
    assert out[2].item() == pytest.approx(-(0.4 + 0.75 * 0.3))
    assert out[3].item() == pytest.approx(-(0.4 + 1.0 * 0.3))
    assert out[0].item() == 0 and out[4].item() == 0


def test_a_penalty_changes_the_greedy_choice():
    p = SamplingParams(temperature=0, presence_penalty=1.0, frequency_penalty=0.0)
    t = PenaltyTracker(3, p)
    logits = torch.tensor([2.0, 1.5, 0.0])
    assert sample_logits(t.apply(logits), p) == 0
    t.update(0)
    assert sample_logits(t.apply(logits), p) == 1


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_p=1.5), dict(top_k=-1),
                                 dict(penalty_decay=0), dict(max_tokens=-1), dict(stop=("",))])
def test_invalid_parameters_are_refused(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad)


def test_lists_become_tuples_and_replace_works():
    p = SamplingParams(stop=["a"], banned_tokens=[1, 2])
    assert p.stop == ("a",) and p.banned_tokens == (1, 2)
    assert p.replace(top_k=5).top_k == 5


def test_one_set_of_defaults_for_every_surface(monkeypatch):
    """The app's chat and completion pages, the API and the command line start from the engine's."""
    from roost import cli
    from roost.engine.sampling import CHAT_SAMPLING, COMPLETION_SAMPLING, KNOBS
    from roost.gui import sampling as gui_sampling
    from roost.server import api

    assert CHAT_SAMPLING == {k: getattr(SamplingParams(), k) for k in KNOBS}
    assert {k: gui_sampling.DEFAULTS[k] for k in KNOBS} == CHAT_SAMPLING == api.CHAT_DEFAULTS
    assert api.COMPLETION_DEFAULTS == COMPLETION_SAMPLING
    captured = {}
    real = cli._params

    class Loaded(Exception):
        pass

    def load(args):
        raise Loaded

    monkeypatch.setattr(cli, "_params", lambda a, **values: captured.update(values) or real(a, **values))
    monkeypatch.setattr(cli, "_load", load)  # stop before loading anything
    with pytest.raises(Loaded):
        cli._generate(cli._parser().parse_args(["generate", "--model", "m.pth", "hi"]))
    assert {k: captured[k] for k in KNOBS} == COMPLETION_SAMPLING


def test_stop_strings_merge_once_in_order():
    p = SamplingParams(stop=("END", "\n\n")).with_stops(("\n\nUser:", "\n\n"))
    assert p.stop == ("END", "\n\n", "\n\nUser:")


def test_logit_bias_adds_to_the_logits_before_sampling():
    from roost.engine.sampling import adjust

    logits = torch.tensor([3.0, 1.0, 0.0, -1.0])
    out = adjust(logits, SamplingParams(logit_bias={1: 2.5, 3: -100}))
    assert out.tolist() == [3.0, 3.5, 0.0, -101.0] and logits.tolist() == [3.0, 1.0, 0.0, -1.0]
    assert sample_logits(logits, SamplingParams(temperature=0, logit_bias={2: 5}), gen()) == 2
    assert all(sample_logits(logits, SamplingParams(top_p=1, logit_bias={0: -100}), gen(s)) != 0 for s in range(50))
    assert SamplingParams(logit_bias={"7": 1}).logit_bias == ((7, 1.0),)
