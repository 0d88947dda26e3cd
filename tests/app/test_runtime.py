from __future__ import annotations

import pytest

from roost.core.runtime import Runtime
from roost.engine.errors import RoostError
from roost.engine.generate import StopFlag
from roost.engine.sampling import SamplingParams

PARAMS = SamplingParams(max_tokens=12, seed=1)


def test_chat_keeps_the_state_between_turns(make_checkpoint):
    rt = Runtime()
    info = rt.load(make_checkpoint("v6.0"), "cpu fp32")
    assert info.version == 6 and not info.reasoning
    pieces = []
    r1 = rt.chat(1, [], "Hello there, how are you today?", params=PARAMS, on_piece=pieces.append)
    assert "".join(pieces).strip() == r1.text and r1.tokens > 0
    hist = [("user", "Hello there, how are you today?"), ("assistant", r1.text)]
    r2 = rt.chat(1, hist, "Fine.", params=PARAMS)
    fresh = rt.chat(2, hist, "Fine.", params=PARAMS)  # the same turn without a cached state
    assert r2.fed_tokens + r1.tokens <= fresh.fed_tokens  # only the new turn was fed
    assert r2.context_tokens > r1.context_tokens
    # an edited history (or a restart) starts over and still answers
    r3 = rt.chat(1, [("user", "Something else entirely")], "Fine.", params=PARAMS)
    assert r3.fed_tokens > r2.fed_tokens


def test_stop_flag_and_no_model(make_checkpoint):
    rt = Runtime()
    with pytest.raises(RoostError, match="No model is loaded"):
        rt.complete("Once", params=PARAMS)
    rt.load(make_checkpoint("v7.0"), "cpu fp32")
    flag = StopFlag()
    seen = []

    def on_piece(p):
        seen.append(p)
        flag.set()

    r = rt.complete("Once upon a time", params=PARAMS.replace(max_tokens=50), on_piece=on_piece, stop_flag=flag)
    assert r.finish_reason == "cancelled" and r.tokens <= 2
    rt.unload()
    assert rt.model is None and rt.info is None


def test_unloading_on_a_worker_thread_frees_the_model_without_collecting(make_checkpoint, monkeypatch):
    """The GUI loads and unloads on its worker thread: a gc.collect() there can finalise Qt
    objects off the UI thread (a crash seen once in CI), so the model must go by reference
    counting alone."""
    import gc
    import threading
    import weakref

    rt = Runtime()
    rt.load(make_checkpoint("v7.0"), "cpu int8")
    rt.chat(1, [], "Hello", params=PARAMS.replace(max_tokens=2))  # a kept conversation state too
    model = weakref.ref(rt.model)
    collected = []
    monkeypatch.setattr(gc, "collect", lambda *a: collected.append(threading.current_thread().name) or 0)
    gc.disable()
    try:
        worker = threading.Thread(target=rt.unload, name="engine-worker")
        worker.start()
        worker.join()
        assert model() is None  # freed, with automatic collection off as in the app
    finally:
        gc.enable()
    assert "engine-worker" not in collected


# --- one resume mechanism: the state cache (roost.engine.resume) ------------------------------------
def test_regenerating_and_editing_resume_from_the_nearest_state(make_checkpoint):
    rt = Runtime()
    rt.load(make_checkpoint("v6.0"), "cpu fp32")
    first = "Hello there, how are you today? Tell me about the sea."
    r1 = rt.chat(1, [], first, params=PARAMS)
    regen = rt.chat(1, [], first, params=PARAMS)  # regenerate: the same prompt again
    assert regen.fed_tokens == 1  # resumed from the state before the prompt's last token
    hist = [("user", first), ("assistant", regen.text)]
    r2 = rt.chat(1, hist, "And the mountains, in a long answer please?", params=PARAMS)
    edited = rt.chat(1, hist, "And the rivers?", params=PARAMS)  # the last message edited
    fresh = Runtime()
    fresh.load(rt.info.path, "cpu fp32")
    whole = fresh.chat(9, hist, "And the rivers?", params=PARAMS)
    assert edited.fed_tokens < whole.fed_tokens // 2  # only the edited turn was read again
    assert r2.fed_tokens < whole.fed_tokens


def test_a_g1_thinking_chat_feeds_only_the_new_turn(make_checkpoint, tmp_path):
    import shutil

    path = tmp_path / "rwkv7-g1-test.pth"
    shutil.copy(make_checkpoint("v7.0"), path)
    rt = Runtime()
    assert rt.load(path, "cpu fp32").reasoning
    params = PARAMS.replace(max_tokens=16)
    r1 = rt.chat(1, [], "What is two plus two?", params=params, think=True)
    hist = [("user", "What is two plus two?"), ("assistant", r1.text)]
    r2 = rt.chat(1, hist, "Thanks.", params=params, think=True)
    assert r2.fed_tokens <= len(rt.model.tokenizer.encode("\n\nUser: Thanks.\n\nAssistant: <think")) + 1


def test_the_app_and_the_api_share_one_cache_and_a_new_model_drops_it(make_checkpoint):
    from roost.server.run import ApiServer

    rt = Runtime()
    rt.load(make_checkpoint("v6.0"), "cpu fp32")
    rt.chat(1, [], "Hello", params=PARAMS)
    server = ApiServer(rt, port=0)
    server._prepare().close()  # builds the app without serving
    assert server.worker.cache is rt.cache and len(rt.cache) > 0
    rt.load(make_checkpoint("v7.0"), "cpu fp32")
    assert len(rt.cache) == 0
    again = rt.chat(1, [], "Hello", params=PARAMS)  # the same words, another model: read in full
    assert again.fed_tokens == len(rt.model.tokenizer.encode("User: Hello\n\nAssistant:"))


def test_a_chat_deleted_while_its_reply_runs_is_not_remembered_afterwards(make_checkpoint):
    rt = Runtime()
    rt.load(make_checkpoint("v6.0"), "cpu fp32")
    forgotten = []

    def on_piece(piece):
        if not forgotten:  # the UI thread deletes the chat while the reply streams
            rt.forget(7)
            forgotten.append(True)

    rt.chat(7, [], "Hello there", params=PARAMS, on_piece=on_piece)
    assert forgotten and 7 not in rt._chats
    rt.chat(8, [], "Hello there", params=PARAMS)
    assert 8 in rt._chats


def test_a_thinking_level_asks_with_the_template_hint_and_still_resumes(make_checkpoint, tmp_path, monkeypatch):
    import shutil

    from roost.engine import resume

    path = tmp_path / "rwkv7-g1-test.pth"
    shutil.copy(make_checkpoint("v7.0"), path)
    rt = Runtime()
    rt.load(path, "cpu fp32")
    prompts = []
    real = resume.generate_resumed

    def spy(model, cache, ids, params, **kw):
        prompts.append(kw.get("text"))
        return real(model, cache, ids, params, **kw)

    monkeypatch.setattr(resume, "generate_resumed", spy)
    params = PARAMS.replace(max_tokens=8)
    r1 = rt.chat(7, [], "Why is the sky blue?", params=params, think="high")
    assert prompts[-1].endswith("User: Why is the sky blue? (think a lot)\n\nAssistant: <think")
    hist = [("user", "Why is the sky blue?"), ("assistant", r1.text)]
    r2 = rt.chat(7, hist, "And at sunset?", params=params, think="high")
    assert "User: Why is the sky blue? (think a lot)\n\n" in prompts[-1]  # as the model saw it before
    assert prompts[-1].endswith("User: And at sunset? (think a lot)\n\nAssistant: <think")
    assert r2.fed_tokens <= len(rt.model.tokenizer.encode("\n\nUser: And at sunset? (think a lot)\n\nAssistant: <think")) + 1
    r3 = rt.chat(8, [], "Hi", params=params, think=False)
    assert prompts[-1].endswith("User: Hi\n\nAssistant: <think>\n</think") and r3.reasoning == ""
