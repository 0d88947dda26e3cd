"""Many requests at once: decoded together (continuous batching), each as if it ran alone."""

from __future__ import annotations

import threading
import time

GREEDY = {"temperature": 0, "presence_penalty": 0, "frequency_penalty": 0}
PROMPTS = ["Once upon a time", "The river", "In a quiet village far from the sea, there lived", "Hi", "你好，世界",
           "A list of fruits:", "Dear friend,", "Chapter one"]


def test_concurrent_requests_are_decoded_together_and_each_gets_its_own_reply(client, server):
    alone = {p: client.completions.create(model="m", prompt=p, max_tokens=12, extra_body=GREEDY).choices[0].text
             for p in PROMPTS}
    worker = server.worker
    before = worker.largest_batch
    got, errors = {}, []

    def ask(p):
        try:
            got[p] = client.completions.create(model="m", prompt=p, max_tokens=12, extra_body=GREEDY).choices[0].text
        except Exception as e:  # noqa: BLE001 -- collected for the assertion
            errors.append(e)

    threads = [threading.Thread(target=ask, args=(p,)) for p in PROMPTS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and got == alone  # the same replies as one at a time (greedy)
    assert worker.largest_batch > max(before, 1)  # and they were decoded together
    assert worker.failed == 0


def test_a_short_request_does_not_wait_for_a_long_one(client, server):
    done = {}

    def long():
        done["long"] = client.completions.create(model="m", prompt="Far away", max_tokens=400, extra_body=GREEDY)
        done["long_at"] = time.monotonic()

    t = threading.Thread(target=long)
    t.start()
    time.sleep(0.3)  # the long one is decoding
    short = client.completions.create(model="m", prompt="Hi", max_tokens=3, extra_body=GREEDY)
    short_at = time.monotonic()
    t.join(120)
    assert short.choices[0].text and done["long"].choices[0].finish_reason == "length"
    assert short_at < done["long_at"]  # it joined the batch and left first


def test_cancelling_one_stream_leaves_the_others(client, server):
    worker = server.worker
    cancelled = worker.cancelled
    results = {}

    def ask(p):
        results[p] = client.completions.create(model="m", prompt=p, max_tokens=30, extra_body=GREEDY).choices[0].text

    threads = [threading.Thread(target=ask, args=(p,)) for p in PROMPTS[:3]]
    for t in threads:
        t.start()
    stream = client.completions.create(model="m", prompt="Far away", max_tokens=3000, stream=True)
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    for t in threads:
        t.join(60)
    deadline = time.monotonic() + 15
    while worker.busy and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(results) == 3 and all(results.values())
    assert worker.cancelled == cancelled + 1 and worker.failed == 0


def test_the_worker_thread_ends_when_idle_and_comes_back(client, server):
    """No thread of the server stays alive between requests: a thread that has computed keeps an
    OpenMP worker pool, which would slow the app's own replies (roost.engine.threads)."""
    worker = server.worker
    first = client.completions.create(model="m", prompt="Hi", max_tokens=4, extra_body=GREEDY).choices[0].text
    deadline = time.monotonic() + 10
    alive = lambda: any(t.name == "roost-api-worker" for t in threading.enumerate())  # noqa: E731
    while (worker._thread is not None or alive()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert worker._thread is None and not alive()
    again = client.completions.create(model="m", prompt="Hi", max_tokens=4, extra_body=GREEDY).choices[0].text
    assert again == first and worker.failed == 0
