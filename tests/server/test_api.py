"""The OpenAI-compatible server, driven by the official `openai` client against a real uvicorn
server on 127.0.0.1 (a free port) with a small random-weight model. Random weights write gibberish,
which is fine: the tests check the protocol, the token counts, the cache and the concurrency."""

from __future__ import annotations

import json
import threading
import time

import openai
import pytest

try:  # the HTTP client the openai package brings: httpx2 (openai 3.x) or httpx (1.x, 2.x)
    import httpx2
except ImportError:  # pragma: no cover
    import httpx as httpx2

from roost.core.runtime import Runtime
from roost.engine.resume import PrefixCache
from roost.server.jobs import chat_tokens
from roost.server.run import ApiServer, ServerError, check_bind, is_loopback
from roost.engine.sampling import SamplingParams

LONG = 3000  # a max_tokens that takes far longer than any test waits


@pytest.fixture(scope="module")
def model(runtime) -> str:
    return runtime.info.path.stem


def wait_idle(worker, timeout=20.0) -> None:
    deadline = time.monotonic() + timeout
    while worker.busy or worker.waiting:
        assert time.monotonic() < deadline, "the server did not become idle"
        time.sleep(0.02)


def chat(client, model, messages, **kw):
    kw = {"max_tokens": 8, "seed": 7, **kw}
    return client.chat.completions.create(model=model, messages=messages, **kw)


# --- endpoints -------------------------------------------------------------------------------------
def test_models_are_listed(client, model, runtime):
    listed = client.models.list()
    assert [m.id for m in listed.data] == [model]
    assert listed.data[0].owned_by == "roost"
    assert client.models.retrieve(model).id == model
    assert client.models.retrieve(runtime.info.name).id == model  # the file name works too


def test_chat_non_streaming_and_streaming_agree(client, model, runtime):
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello there!"}]
    r = chat(client, model, messages, max_tokens=6)
    choice = r.choices[0]
    assert r.object == "chat.completion" and r.model == model and r.id.startswith("chatcmpl-")
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    want_prompt = len(chat_tokens(runtime.model, runtime.info, [("system", "You are terse."), ("user", "Hello there!")]))
    assert r.usage.prompt_tokens == want_prompt
    assert 1 <= r.usage.completion_tokens <= 6
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    if choice.finish_reason == "length":
        assert r.usage.completion_tokens == 6

    chunks = list(chat(client, model, messages, max_tokens=6, stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    with_choice = [c for c in chunks if c.choices]
    assert [c.choices[0].finish_reason for c in with_choice][-1] == choice.finish_reason
    assert all(c.choices[0].finish_reason is None for c in with_choice[:-1])
    text = "".join(c.choices[0].delta.content or "" for c in with_choice)
    assert text == choice.message.content  # the same seed: the same reply, streamed or not
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == r.usage.prompt_tokens


def test_raw_sse_framing(server, model):
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "stream": True}
    with httpx2.stream("POST", f"{server.base_url}/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [e for e in r.read().decode().split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    last = json.loads(events[-2][6:])
    assert last["choices"][0]["finish_reason"] in ("stop", "length") and last["choices"][0]["delta"] == {}


def test_completions(client, model, runtime):
    prompt = "The quick brown fox"
    r = client.completions.create(model=model, prompt=prompt, max_tokens=5, seed=3)
    assert r.object == "text_completion" and r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens == len(runtime.model.tokenizer.encode(prompt))
    if r.choices[0].finish_reason == "length":
        assert r.usage.completion_tokens == 5
    streamed = list(client.completions.create(model=model, prompt=prompt, max_tokens=5, seed=3, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == r.choices[0].text
    assert streamed[-1].choices[0].finish_reason == r.choices[0].finish_reason
    echoed = client.completions.create(model=model, prompt=prompt, max_tokens=5, seed=3, echo=True)
    assert echoed.choices[0].text == prompt + r.choices[0].text
    ids = runtime.model.tokenizer.encode(prompt)
    by_ids = client.completions.create(model=model, prompt=ids, max_tokens=5, seed=3)
    assert by_ids.choices[0].text == r.choices[0].text
    default = client.completions.create(model=model, prompt=prompt, seed=3)  # OpenAI's default: 16 tokens
    assert default.usage.completion_tokens <= 16


def test_stop_strings(client, model):
    prompt = "Once upon a time"
    full = client.completions.create(model=model, prompt=prompt, max_tokens=24, seed=11, temperature=0.8)
    text = full.choices[0].text
    stop = next(text[i:i + 2] for i in range(3, len(text) - 2) if text[i:i + 2].strip() and "\ufffd" not in text[i:i + 2])
    cut = client.completions.create(model=model, prompt=prompt, max_tokens=24, seed=11, temperature=0.8, stop=[stop])
    assert cut.choices[0].text == text[:text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model=model, prompt=prompt, max_tokens=24, seed=11, temperature=0.8,
                                         stop=stop, stream=True)
    pieces = list(streamed)
    assert "".join(c.choices[0].text for c in pieces) == cut.choices[0].text
    assert pieces[-1].choices[0].finish_reason == "stop"


def test_continued_chat_resumes_from_the_cached_state(client, model, server, runtime):
    worker = server.worker
    history = [{"role": "user", "content": "Tell me about the sea, please."}]
    first = chat(client, model, history, max_tokens=10, temperature=0)
    history += [{"role": "assistant", "content": first.choices[0].message.content},
                {"role": "user", "content": "And the mountains?"}]
    before = worker.cache.stats()
    second = chat(client, model, history, max_tokens=10, temperature=0)
    after = worker.cache.stats()
    cached = second.usage.prompt_tokens_details.cached_tokens
    # the whole previous prompt (at least) came from the cache; only the rest was processed
    assert cached >= first.usage.prompt_tokens - 1
    assert after.hits == before.hits + 1
    assert after.processed_tokens - before.processed_tokens == second.usage.prompt_tokens - cached
    assert second.usage.prompt_tokens - cached < second.usage.prompt_tokens // 2

    # the resumed state gives the reply a fresh state gives (greedy, so the same tokens)
    fresh_rt = Runtime()
    fresh_rt.load(runtime.info.path, "cpu fp32")
    fresh = ApiServer(fresh_rt, port=0, cache_entries=0).start()
    try:
        other = openai.OpenAI(base_url=fresh.base_url, api_key="x", max_retries=0)
        again = chat(other, model, history, max_tokens=10, temperature=0)
        assert again.usage.prompt_tokens_details.cached_tokens == 0
        assert again.choices[0].message.content == second.choices[0].message.content
    finally:
        fresh.stop()
        fresh_rt.unload()


def test_a_client_that_disconnects_stops_its_generation(client, model, server):
    worker = server.worker
    wait_idle(worker)
    cancelled = worker.cancelled
    stream = client.completions.create(model=model, prompt="Far away", max_tokens=LONG, seed=5, stream=True)
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    wait_idle(worker, timeout=15)
    assert worker.cancelled == cancelled + 1
    assert worker.last.finish_reason == "cancelled" and worker.last.completion_tokens < LONG

    # a non-streaming client that gives up: the same
    with pytest.raises(httpx2.TimeoutException):
        httpx2.post(f"{server.base_url}/completions", timeout=1.0,
                    json={"model": model, "prompt": "Far away", "max_tokens": LONG})
    wait_idle(worker, timeout=15)
    assert worker.cancelled == cancelled + 2
    assert worker.last.completion_tokens < LONG
    # and the model is free for the next request
    assert chat(client, model, [{"role": "user", "content": "Hi"}], max_tokens=2).choices


def test_a_full_queue_answers_503(runtime, model):
    srv = ApiServer(runtime, port=0, max_queue=1, max_batch=1).start()  # one running, one waiting: full
    try:
        c = openai.OpenAI(base_url=srv.base_url, api_key="x", max_retries=0, timeout=60)
        busy = c.completions.create(model=model, prompt="One", max_tokens=LONG, seed=1, stream=True)
        next(iter(busy))  # generating
        waiting: list = []
        t = threading.Thread(target=lambda: waiting.append(
            c.completions.create(model=model, prompt="Two", max_tokens=2)))
        t.start()
        deadline = time.monotonic() + 10
        while srv.worker.waiting < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with pytest.raises(openai.APIStatusError) as e:
            c.completions.create(model=model, prompt="Three", max_tokens=2)
        assert e.value.status_code == 503
        assert e.value.body["code"] == "queue_full" and "busy" in e.value.body["message"]
        busy.close()  # frees the model: the waiting request is served
        t.join(30)
        assert waiting and waiting[0].choices[0].finish_reason in ("stop", "length")
    finally:
        srv.stop()


def test_requests_wait_for_the_app_using_the_same_runtime(client, model, server, runtime):
    """The app's chat and the server share one Runtime: a request waits while the app generates."""
    wait_idle(server.worker)
    done: list = []
    with runtime.exclusive():  # what Runtime.chat holds while the app generates
        t = threading.Thread(target=lambda: done.append(chat(client, model, [{"role": "user", "content": "Hi"}])))
        t.start()
        time.sleep(0.5)
        assert not done and server.worker.busy
    t.join(30)
    assert done and done[0].choices[0].message is not None
    reply = runtime.chat("app", [], "Hello", params=SamplingParams(max_tokens=3, seed=1))  # and the app still works
    assert reply.tokens >= 1


# --- errors ---------------------------------------------------------------------------------------
def test_any_model_name_or_none_gets_the_loaded_model(client, model, server):
    """Clients send their own defaults (gpt-3.5-turbo) or a name the user typed; Roost serves one
    model, answers with it and says which (as llama.cpp does)."""
    for name in ("gpt-3.5-turbo", "my-typed-name"):
        r = client.chat.completions.create(model=name, max_tokens=2, messages=[{"role": "user", "content": "Hi"}])
        assert r.model == model and r.choices[0].message is not None
    r = client.completions.create(model="text-davinci-003", prompt="Once", max_tokens=2)
    assert r.model == model
    for body in ({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
                 {"model": None, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}):
        reply = httpx2.post(f"{server.base_url}/chat/completions", json=body, timeout=60)
        assert reply.status_code == 200 and reply.json()["model"] == model, reply.text


def test_bad_requests_get_openai_error_objects(client, model, server):
    url = server.base_url
    cases = [
        ({"model": 5, "messages": [{"role": "user", "content": "Hi"}]}, 400, "model"),
        ({"model": model, "messages": []}, 400, "messages"),
        ({"model": model, "messages": [{"role": "wizard", "content": "Hi"}]}, 400, "messages[0].role"),
        ({"model": model, "messages": [{"role": "tool", "content": 5}]}, 400, "messages[0].content"),
        ({"model": model, "messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content"),
        ({"model": model, "messages": [{"role": "user", "content": "Hi"}], "temperature": "hot"}, 400, "temperature"),
        ({"model": model, "messages": [{"role": "user", "content": "Hi"}], "temperature": 9}, 400, "temperature"),
        ({"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 10 ** 6}, 400, "max_tokens"),
        ({"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 0}, 400, "max_tokens"),
        ({"model": model, "messages": [{"role": "user", "content": "Hi"}], "n": 30}, 400, "n"),
        ({"model": model, "messages": [{"role": "user", "content": "Hi"}], "top_logprobs": 2}, 400, "top_logprobs"),
        ({"model": model, "messages": [{"role": "user", "content": "Hi"}], "logprobs": True, "top_logprobs": 21},
         400, "top_logprobs"),
        ({"model": model, "messages": [{"role": "user", "content": "Hi"}], "logit_bias": {"x": 1}}, 400, "logit_bias"),
        ({"model": model, "messages": [{"role": "user", "content": "Hi"}], "logit_bias": {"5": 101}}, 400, "logit_bias"),
        ({"model": model, "messages": [{"role": "user", "content": "Hi"}], "logit_bias": {"99999999": 1}}, 400,
         "logit_bias"),
        ({"model": model, "messages": [{"role": "user", "content": "Hi"}], "stop": [1]}, 400, "stop"),
        ({"model": model, "messages": [{"role": "user", "content": "Hi"}], "tools": [{"type": "function"}]},
         400, "tools[0]"),
    ]
    for body, status, param in cases:
        r = httpx2.post(f"{url}/chat/completions", json=body, timeout=30)
        assert r.status_code == status, (body, r.text)
        err = r.json()["error"]
        assert err["param"] == param and err["message"] and err["type"] == "invalid_request_error", (body, err)
    for body in ({"model": model}, {"model": model, "prompt": {"x": 1}}, {"model": model, "prompt": [10 ** 9]},
                 {"model": model, "prompt": ["a", "b"]}, {"model": model, "prompt": "x", "logprobs": 50},
                 {"model": model, "prompt": "x", "logprobs": 2, "echo": True}):
        r = httpx2.post(f"{url}/completions", json=body, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["message"], (body, r.text)
    raw = [
        ("POST", "/chat/completions", b"{not json", 400),
        ("POST", "/chat/completions", b"[1, 2]", 400),
        ("POST", "/chat/completions", b"\xff\xfe", 400),
        ("POST", "/chat/completions", b"{" + b" " * (5 * 2 ** 20) + b"}", 413),
        ("GET", "/chat/completions", b"", 405),
        ("POST", "/engines/davinci/completions", b"{}", 404),
    ]
    for method, path, content, status in raw:
        r = httpx2.request(method, url + path, content=content, timeout=30,
                           headers={"content-type": "application/json"})
        assert r.status_code == status, (path, r.text[:200])
        assert set(r.json()) == {"error"} and "Traceback" not in r.text
    assert server.worker.failed == 0


CLIENT_ORIGINS = ["http://localhost:3000", "http://127.0.0.1:5173", "https://[::1]:8443", "app://obsidian.md",
                  "file://", "tauri://localhost", "http://tauri.localhost", "https://tauri.localhost",
                  "vscode-webview://1c3b5s8q9r", "chrome-extension://jfedfbgedapdagkghmgibemcoggfppbb",
                  "moz-extension://0b9d8f5a-1111-2222-3333-444455556666", "safari-web-extension://ABCD-1234"]


def preflight(url, origin, pna=False):
    headers = {"Origin": origin, "Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": "content-type, authorization"}
    if pna:
        headers["Access-Control-Request-Private-Network"] = "true"
    return httpx2.options(f"{url}/chat/completions", headers=headers, timeout=30)


def test_browser_clients_are_let_in_and_other_websites_refused(server, model):
    """Extensions (Page Assist), Obsidian plugins, VS Code webviews, Tauri apps and local pages call
    the API from a browser engine; any other website, or a sandboxed frame (Origin: null), may not."""
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    url = server.base_url
    for origin in CLIENT_ORIGINS:
        r = preflight(url, origin, pna=True)  # Chrome asks before a page may reach this computer
        assert r.status_code == 200, (origin, r.text)
        assert r.headers["access-control-allow-origin"] == origin
        assert r.headers["access-control-allow-private-network"] == "true"
    r = httpx2.post(f"{url}/chat/completions", json=body, headers={"Origin": "chrome-extension://abc"}, timeout=30)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "chrome-extension://abc"
    for origin in ("https://evil.example", "null", "http://localhost.evil.example", "app://x/../evil"):
        r = httpx2.post(f"{url}/chat/completions", json=body, headers={"Origin": origin}, timeout=30)
        assert r.status_code == 403 and r.json()["error"]["code"] == "origin_not_allowed", origin
        assert "--allow-origin" in r.json()["error"]["message"]
        assert "access-control-allow-origin" not in preflight(url, origin).headers


def test_the_user_may_allow_a_website_and_a_key_allows_any(runtime, model):
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    srv = ApiServer(runtime, port=0, allow_origins=("https://chat.example.org", "null")).start()
    try:
        for origin in ("https://chat.example.org", "null"):
            r = httpx2.post(f"{srv.base_url}/chat/completions", json=body, headers={"Origin": origin}, timeout=30)
            assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin
        r = httpx2.post(f"{srv.base_url}/chat/completions", json=body, headers={"Origin": "https://other.org"})
        assert r.status_code == 403
    finally:
        srv.stop()
    srv = ApiServer(runtime, port=0, api_key="k").start()  # the key protects it: any page with the key
    try:
        r = preflight(srv.base_url, "https://anywhere.example", pna=True)
        assert r.status_code == 200 and r.headers["access-control-allow-private-network"] == "true"
        r = httpx2.post(f"{srv.base_url}/chat/completions", json=body, timeout=30,
                        headers={"Origin": "https://anywhere.example", "Authorization": "Bearer k"})
        assert r.status_code == 200
    finally:
        srv.stop()


def test_api_key(runtime, model):
    srv = ApiServer(runtime, port=0, api_key="s3cret").start()
    try:
        c = openai.OpenAI(base_url=srv.base_url, api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as e:
            c.models.list()
        assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
        for headers in ({}, {"Authorization": "s3cret"}, {"Authorization": "Basic s3cret"}):
            r = httpx2.post(f"{srv.base_url}/chat/completions", json={"model": model, "messages": []},
                            headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"  # before anything else
        c = openai.OpenAI(base_url=srv.base_url, api_key="s3cret", max_retries=0)
        assert [m.id for m in c.models.list().data] == [model]
        assert chat(c, model, [{"role": "user", "content": "Hi"}], max_tokens=2).choices
    finally:
        srv.stop()


def test_url_and_header_variants_real_clients_use(server, model, runtime):
    """Paths without /v1 and with a trailing slash answer (no redirect), /health needs no key, the
    key may come in X-Api-Key, and replies carry a system_fingerprint that follows the model."""
    root = server.base_url.removesuffix("/v1")
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    for path in ("/chat/completions", "/v1/chat/completions/", "/chat/completions/"):
        r = httpx2.post(root + path, json=body, timeout=60, follow_redirects=False)
        assert r.status_code == 200 and r.json()["object"] == "chat.completion", (path, r.text)
        assert r.json()["system_fingerprint"].startswith("fp_")
    for path in ("/completions", "/completions/"):
        r = httpx2.post(root + path, json={"model": model, "prompt": "Hi", "max_tokens": 2}, timeout=60,
                        follow_redirects=False)
        assert r.status_code == 200 and r.json()["object"] == "text_completion", (path, r.text)
    for path in ("/models", "/models/", "/v1/models/", f"/models/{model}"):
        r = httpx2.get(root + path, follow_redirects=False)
        assert r.status_code == 200, (path, r.text)
    for path in ("/health", "/v1/health", "/health/"):
        r = httpx2.get(root + path)
        assert r.status_code == 200 and r.json() == {"status": "ok", "model": model}
    fingerprints = {chat(openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0), model,
                         [{"role": "user", "content": "Hi"}], max_tokens=1).system_fingerprint for _ in range(2)}
    assert len(fingerprints) == 1  # the same model and strategy: the same fingerprint
    srv = ApiServer(runtime, port=0, api_key="s3cret").start()
    try:
        root = srv.base_url.removesuffix("/v1")
        assert httpx2.get(root + "/health").status_code == 200  # open without the key
        assert httpx2.get(root + "/models", headers={"X-Api-Key": "s3cret"}).status_code == 200
        r = httpx2.get(root + "/models", headers={"X-Api-Key": "wrong"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert httpx2.get(root + "/models").status_code == 401
    finally:
        srv.stop()


def test_health_says_when_no_model_is_loaded():
    srv = ApiServer(Runtime(), port=0).start()
    try:
        r = httpx2.get(srv.base_url.removesuffix("/v1") + "/health")
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_not_loaded"
    finally:
        srv.stop()


def test_listening_beyond_loopback_needs_an_api_key(runtime):
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and is_loopback("127.1.2.3")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.20") and not is_loopback("example.org")
    for host in ("0.0.0.0", "192.168.1.20", "::"):
        with pytest.raises(ServerError, match="API key"):
            ApiServer(runtime, host=host, port=0)
        with pytest.raises(ServerError, match="API key"):
            check_bind(host, 8000, "  ")
        check_bind(host, 8000, "a-key")  # allowed with a key
    from roost.cli import main

    assert main(["serve", "--model", "whatever.pth", "--host", "0.0.0.0"]) == 2  # refused before loading


def test_a_busy_port_is_a_clear_error(server, runtime):
    with pytest.raises(ServerError, match="Cannot listen"):
        ApiServer(runtime, port=server.port).start()


def test_the_server_follows_the_model_the_app_loads(make_checkpoint):
    rt = Runtime()
    rt.load(make_checkpoint("v6.0"), "cpu fp32")
    srv = ApiServer(rt, port=0).start()
    try:
        c = openai.OpenAI(base_url=srv.base_url, api_key="x", max_retries=0)
        assert chat(c, c.models.list().data[0].id, [{"role": "user", "content": "Hi"}], max_tokens=2).choices
        assert len(srv.worker.cache) > 0
        rt.unload()
        assert len(srv.worker.cache) == 0  # the unloaded model's states are freed with it
        assert c.models.list().data == []
        with pytest.raises(openai.APIStatusError) as e:
            chat(c, "model-v6.0", [{"role": "user", "content": "Hi"}])
        assert e.value.status_code == 503 and e.value.body["code"] == "model_not_loaded"
        rt.load(make_checkpoint("v7.0"), "cpu fp32")
        new = c.models.list().data[0].id
        assert new == "model-v7.0"
        r = chat(c, new, [{"role": "user", "content": "Hi"}], max_tokens=2)
        assert r.usage.prompt_tokens_details.cached_tokens == 0  # the old model's states were dropped
    finally:
        srv.stop()
        rt.unload()


# --- the cache on its own ------------------------------------------------------------------------
class _Model:
    pass


def test_prefix_cache_lru_and_limits():
    import torch

    m = _Model()
    state = (torch.zeros(256),)  # 1 KiB
    c = PrefixCache(max_entries=3, max_bytes=10 * 1024)
    assert c.lookup(m, [1, 2, 3]) == (0, None)
    c.store(m, [1, 2], state)
    c.store(m, [1, 2, 3, 4], state)
    assert c.lookup(m, [1, 2, 3, 4, 5])[0] == 4
    assert c.lookup(m, [1, 2, 3, 4])[0] == 2  # a proper prefix only: one token is always fed
    assert c.lookup(m, [1, 9])[0] == 0
    c.store(m, [7], state)
    c.lookup(m, [1, 2, 3])  # [1, 2] used: now [1, 2, 3, 4] is the least recently used
    c.store(m, [8], state)
    assert len(c) == 3 and c.lookup(m, [1, 2, 3, 4, 5])[0] == 2 and c.evictions == 1
    s = c.stats()
    assert (s.hits, s.misses, s.entries, s.bytes) == (4, 2, 3, 3 * 1024)
    assert not c.store(m, [5, 5], (torch.zeros(4096),))  # 16 KiB: over the whole budget
    small = PrefixCache(max_entries=100, max_bytes=2 * 1024)
    for i in range(5):
        small.store(m, [i], state)
    assert len(small) == 2 and small.stats().bytes <= 2 * 1024
    small.lookup(_Model(), [0, 1])  # another model: nothing of the first one's applies
    assert len(small) == 0


def test_runtime_generate_continues_from_a_given_state(runtime):
    """Runtime.generate: a token-id prompt from a starting state, holding the Runtime's lock."""
    tok = runtime.model.tokenizer
    head, tail = tok.encode("The sea was calm"), tok.encode(" and the sky was grey.")
    params = SamplingParams(max_tokens=6, seed=2, temperature=0)
    whole = runtime.generate(head + tail, params=params)
    with runtime.exclusive() as model:
        _, state = model.forward(head)
    pieces: list[str] = []
    resumed = runtime.generate(tail, params=params, state=state, on_piece=pieces.append)
    assert resumed.tokens == whole.tokens and "".join(pieces) == resumed.text == whole.text
    assert resumed.prompt_tokens == len(tail)


def test_defects_real_clients_found_get_plain_400s(server, model):
    """A seed beyond 64 bits, a body nested 100k deep and a lone surrogate: each a 400 naming what is
    wrong (they were an overflow message, or a 200 and then an error event when streamed; a 500 with
    a traceback; a raw codec message)."""
    url = server.base_url
    hi = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
    for stream in (False, True):
        r = httpx2.post(f"{url}/chat/completions", json={**hi, "seed": 2 ** 64, "stream": stream}, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"] == "seed", r.text  # before any stream starts
    assert httpx2.post(f"{url}/chat/completions", json={**hi, "seed": 2 ** 64 - 1}, timeout=60).status_code == 200
    deep = b'{"model": "x", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    r = httpx2.post(f"{url}/chat/completions", content=deep, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json" and "Traceback" not in r.text
    body = json.dumps({**hi, "messages": [{"role": "user", "content": "a\ud800b"}]})  # ("\\ud800" in the JSON)
    assert "\\ud800" in body
    r = httpx2.post(f"{url}/chat/completions", content=body, headers={"content-type": "application/json"}, timeout=30)
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == "messages[0].content" and "surrogate" in err["message"]
    assert server.worker.failed == 0


def test_requests_addressed_to_another_name_are_refused_on_loopback(server, model):
    """DNS rebinding: a page that makes its own domain resolve to 127.0.0.1 sends `Host: its-domain`;
    a loopback server without a key answers only loopback names, as Ollama does."""
    url = server.base_url
    for host in ("evil.test", "evil.test:8000", "192.168.1.20"):
        r = httpx2.get(f"{url}/models", headers={"Host": host}, timeout=30)
        assert r.status_code == 403 and r.json()["error"]["code"] == "host_not_allowed", (host, r.text)
    for host in ("localhost", f"localhost:{server.port}", f"127.0.0.1:{server.port}", "[::1]:8000", "roost.localhost"):
        assert httpx2.get(f"{url}/models", headers={"Host": host}, timeout=30).status_code == 200, host
