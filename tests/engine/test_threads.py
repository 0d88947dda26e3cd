"""How many threads the model uses: a fixed count, or automatic (engine.threads)."""

from __future__ import annotations

import torch

from roost.engine import threads


def test_the_automatic_count_leaves_other_programs_their_cores():
    assert threads.choose(0.0, 2) == 2
    assert threads.choose(0.3, 2) == 2  # a browser idling
    assert threads.choose(1.0, 2) == 1  # a build keeping one core busy
    assert threads.choose(3.7, 2) == 1  # never fewer than one
    assert threads.choose(2.6, 8) == 5


def test_adapt_follows_the_machines_load_only_in_automatic_mode(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "physical_cores", lambda: 2)
    readings = iter([(0.0, 0.0, 0.0), (1.0, 2.0, 1.0),  # 2 cores busy, 1 of them ours: 1 left
                     (2.0, 3.0, 2.0)])  # only ours: 2

    def sample():
        return next(readings)

    try:
        assert threads.configure(0) == 2 and threads.automatic()
        threads.adapt(sample)  # the first look: nothing to compare with yet
        assert torch.get_num_threads() == 2
        threads.adapt(sample)
        assert torch.get_num_threads() == 1
        threads.adapt(sample)
        assert torch.get_num_threads() == 2
        threads.configure(2)  # fixed: the load is not looked at
        threads.adapt(lambda: (_ for _ in ()).throw(AssertionError("looked at the load")))
        assert torch.get_num_threads() == 2 and not threads.automatic()
    finally:
        threads.configure(before)


def test_the_real_reading_of_the_load_is_a_number_of_cores():
    threads._last = None
    assert threads.others_busy() is None
    sum(range(200000))
    busy = threads.others_busy()
    assert busy is not None and 0.0 <= busy < 1024
