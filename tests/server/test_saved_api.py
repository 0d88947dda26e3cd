"""Long API conversations go on from a saved state after a restart: the state after a long
request's reply is written to disk, and a later request whose tokens begin with it resumes there."""

from __future__ import annotations

import openai
import pytest

from roost.core import saved_states
from roost.core.conversations import ConversationStore
from roost.core.runtime import Runtime
from roost.core.saved_states import SavedStates, token_hashes
from roost.server import jobs
from roost.server.run import ApiServer

GREEDY = {"temperature": 0, "presence_penalty": 0, "frequency_penalty": 0}
FIRST = [{"role": "user", "content": "Tell me about the rivers of the north, the long ones and the short ones."}]


@pytest.fixture
def small_limits(monkeypatch):
    monkeypatch.setattr(saved_states, "API_MIN_TOKENS", 16)  # the test's conversation counts as long
    monkeypatch.setattr(jobs.Worker, "READ_CHUNK", 8)  # and as worth a look on disk


def serve(path, db, states: bool):
    rt = Runtime()
    rt.load(path, "cpu fp32")
    if states:
        rt.states = SavedStates(db)
    srv = ApiServer(rt, port=0).start()
    return rt, srv, openai.OpenAI(base_url=srv.base_url, api_key="x", max_retries=0, timeout=60)


def test_a_long_request_resumes_from_its_saved_state_after_a_restart(make_checkpoint, tmp_path, small_limits):
    path = make_checkpoint("v7.0")
    db = tmp_path / "conversations.sqlite"
    ConversationStore(db).close()  # the app's file, at the current schema
    rt, srv, client = serve(path, db, states=True)
    try:
        r1 = client.chat.completions.create(model="m", messages=FIRST, max_tokens=8, extra_body=GREEDY)
        assert rt.states.saved == 1 and rt.states.usage().files == 1
    finally:
        srv.stop()
    follow = FIRST + [{"role": "assistant", "content": r1.choices[0].message.content},
                      {"role": "user", "content": "And the short ones?"}]
    rt, srv, client = serve(path, db, states=True)  # a new process: nothing in memory
    try:
        r2 = client.chat.completions.create(model="m", messages=follow, max_tokens=8, extra_body=GREEDY)
        assert rt.states.resumed == 1
        cached = r2.usage.prompt_tokens_details.cached_tokens
        assert 0 < cached < r2.usage.prompt_tokens
    finally:
        srv.stop()
    rt, srv, client = serve(path, db, states=False)  # the same request read from scratch answers the same
    try:
        r3 = client.chat.completions.create(model="m", messages=follow, max_tokens=8, extra_body=GREEDY)
        assert r3.usage.prompt_tokens_details.cached_tokens == 0
        assert r3.choices[0].message.content == r2.choices[0].message.content
    finally:
        srv.stop()


def test_prefix_hashes_and_lookup_by_tokens(make_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(saved_states, "API_MIN_TOKENS", 4)
    from roost.engine import load_model
    from roost.engine.state_io import identity

    model = load_model(make_checkpoint("v7.0"), "cpu fp32")
    db = tmp_path / "c.sqlite"
    ConversationStore(db).close()
    states = SavedStates(db)
    ids = list(range(1, 40))
    h = token_hashes(ids, [5, 10, 39, 99])
    assert set(h) == {5, 10, 39} and h[5] == token_hashes(ids[:5], [5])[5] and h[5] != h[10]
    _, st10 = model.forward(ids[:10])
    _, st20 = model.forward(ids[:20])
    states.keep_tokens(ids[:10], st10, model=identity(model))
    states.keep_tokens(ids[:20], st20, model=identity(model))
    n, st = states.longest_prefix(ids, model, identity(model))
    assert n == 20 and st.n_tokens == 20
    assert states.longest_prefix(ids[:20], model, identity(model))[0] == 10  # a proper prefix only
    assert states.longest_prefix(ids, model, identity(model), longer_than=20) is None
    assert states.longest_prefix([7, *ids], model, identity(model)) is None  # other tokens
    assert states.longest_prefix(ids, model, "another model") is None
    assert states.keep_tokens(ids[:3], st10, model=identity(model)) is None  # too short to keep


def test_roost_serve_uses_the_apps_states_file_only_once_the_app_made_it(tmp_path, monkeypatch):
    import sqlite3

    from roost.core.conversation_schema import SCHEMA_VERSION
    from roost.server.run import _saved_states

    monkeypatch.setenv("ROOST_HOME", str(tmp_path))
    from roost.core import paths

    db = paths.data_dir() / "conversations.sqlite"
    assert _saved_states(100) is None and not db.exists()  # never creates or migrates the chats
    ConversationStore(db).close()
    states = _saved_states(100)
    assert states is not None and states.db_path == db and states.budget == 100 * 2 ** 20
    states.close()
    con = sqlite3.connect(db)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")  # a newer Roost's file: left alone
    con.commit()
    con.close()
    assert _saved_states(100) is None
