"""OpenAI-compatible endpoints over Roost's Runtime (the same loaded model as the app's chat).

    GET  /v1/models              the loaded model
    POST /v1/chat/completions    chat, streamed (server-sent events) or not
    POST /v1/completions         raw text continuation, streamed or not
    GET  /health                 200 when a model is loaded, 503 when not; open without a key
    GET  /roost/stats            queue, counters and the prefix cache (not an OpenAI endpoint)

The OpenAI paths answer without the ``/v1`` prefix too, and with a trailing slash (no redirect:
some clients do not follow one for a POST). The key goes in ``Authorization: Bearer`` or
``X-Api-Key``.

Requests are decoded together, up to ``max_batch`` replies in one pass over the weights
(continuous batching, roost.server.jobs); more wait in order, at most ``max_queue``; more get 503.
Generation runs on a worker thread (see :mod:`roost.server.jobs`), never on the event loop. A
client that disconnects stops its generation within one token. Every error is an OpenAI-style
JSON object ``{"error": {"message", "type", "param", "code"}}`` with a 4xx/5xx status, never a
traceback. RWKV extensions to the request: ``top_k`` and ``penalty_decay``. The usage object
tells how many prompt tokens came from the state cache in ``prompt_tokens_details.cached_tokens``.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from roost.engine.sampling import CHAT_SAMPLING, COMPLETION_SAMPLING
from roost.server import fields, tools
from roost.engine.resume import PrefixCache
from roost.server.fields import ApiError, lone_surrogate
from roost.server.stream import ThoughtSplitter, job_error, job_events, sse, stream_events
from roost.server.web import CLIENT_ORIGINS, ClientOriginsOnly, LoopbackHostsOnly, NoTrailingSlash
from roost.server.jobs import (
    Closed,
    Job,
    QueueFull,
    Worker,
    chat_stops,
    chat_tokens,
)

MAX_BODY_BYTES = 4 * 2 ** 20
MAX_TOKENS_LIMIT = 4096  # the most a request may ask for
CHAT_MAX_TOKENS = 1024  # when a chat request does not say
COMPLETION_MAX_TOKENS = 16  # when a completion request does not say (as OpenAI's)

# the engine's one set of sampling defaults (the app's too); a request overrides any of them
CHAT_DEFAULTS, COMPLETION_DEFAULTS = CHAT_SAMPLING, COMPLETION_SAMPLING
FINISH = {"stop": "stop", "length": "length", "cancelled": "stop"}
def create_app(runtime, *, model_id: str | None = None, api_key: str | None = None, max_queue: int = 64,
               max_batch: int = 16,
               allow_origins: tuple[str, ...] = (), loopback_only: bool = False,
               max_body_bytes: int = MAX_BODY_BYTES, max_tokens_limit: int = MAX_TOKENS_LIMIT,
               chat_max_tokens: int = CHAT_MAX_TOKENS, cache: PrefixCache | None = None,
               cache_entries: int | None = None, cache_bytes: int | None = None,
               chat_defaults: dict | None = None, completion_defaults: dict | None = None) -> FastAPI:
    """The API over ``runtime`` (its loaded model, whichever that is at each request).

    ``model_id`` is the name clients use (default: the loaded file's name without extension; the
    full file name is accepted too). With ``api_key`` every request must carry
    ``Authorization: Bearer <api_key>``. ``allow_origins``: web origins allowed besides
    CLIENT_ORIGINS (exact, e.g. ``https://chat.example.org`` or ``null``); with an API key every
    origin is. ``loopback_only`` (a server on a loopback address without a key): requests must be
    addressed to a loopback name (web.LoopbackHostsOnly). ``app.state.roost`` is the
    :class:`Worker` (stats)."""
    if cache is None and (cache_entries is not None or cache_bytes is not None):  # limits of its own
        cache = PrefixCache(32 if cache_entries is None else cache_entries,
                            512 * 2 ** 20 if cache_bytes is None else cache_bytes)
    worker = Worker(runtime, cache,  # None: the Runtime's, shared with the app's chats
                    max_queue=max_queue, max_batch=max_batch)
    chat_defaults = {**CHAT_DEFAULTS, **(chat_defaults or {})}
    completion_defaults = {**COMPLETION_DEFAULTS, **(completion_defaults or {})}
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        worker.close()

    app = FastAPI(title="Roost", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None,
                  redirect_slashes=False)
    app.add_middleware(NoTrailingSlash)
    app.state.roost = worker
    # Chrome's Private Network Access: a page asks before it may reach this computer; say yes to those allowed
    if api_key is None:
        extra = tuple(o.strip() for o in allow_origins if o.strip())
        app.add_middleware(CORSMiddleware, allow_origin_regex=f"(?i:{CLIENT_ORIGINS})", allow_origins=extra,
                           allow_methods=["*"], allow_headers=["*"], allow_private_network=True)
        app.add_middleware(ClientOriginsOnly, extra)
        if loopback_only:
            app.add_middleware(LoopbackHostsOnly)
    else:  # the key protects it: any page that has the key may call it
        app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"],
                           allow_private_network=True)

    # --- errors: always OpenAI-style JSON ------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(_request, exc: ApiError):
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            message = f"Unknown request URL: {request.method} {request.url.path}."
        elif exc.status_code == 405:
            message = f"Method {request.method} is not allowed for {request.url.path}."
        else:
            message = str(exc.detail)
        return ApiError(exc.status_code, message, code="unknown_url" if exc.status_code == 404 else None).response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request, exc: RequestValidationError):
        return ApiError(400, f"Invalid request: {exc.errors()[:1]}").response()

    @app.exception_handler(Exception)
    async def _unexpected(_request, exc: Exception):  # logged by the server; no traceback to the client
        return ApiError(500, f"The server had an error while processing the request ({type(exc).__name__}).",
                        type="server_error").response()

    # --- helpers -------------------------------------------------------------------------------
    def authorize(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if not header:  # Anthropic-style and some proxies' clients send the key in X-Api-Key
            token, scheme = request.headers.get("x-api-key", ""), "bearer"
            if not token:
                raise ApiError(401, "You didn't provide an API key. Send it in an Authorization header "
                                    "using Bearer auth (Authorization: Bearer YOUR_KEY), or in X-Api-Key.",
                               code="invalid_api_key")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")

    def current_id() -> str | None:
        info = runtime.info
        if info is None:
            return None
        return model_id or info.path.stem

    def fingerprint() -> str | None:
        """What produced a reply (OpenAI's system_fingerprint): Roost's version, the model file and
        the strategy; it changes when any of them does, as a seed's replies may then differ."""
        info = runtime.info
        if info is None:
            return None
        from roost import __version__

        what = f"{__version__}|{runtime.identity}|{info.strategy}"  # the file as saved states know it: no I/O here
        return "fp_" + hashlib.sha256(what.encode()).hexdigest()[:10]

    def decoder():
        """The loaded model's bytes of token ids (for logprobs)."""
        model = runtime.model
        return model.tokenizer.decode_bytes if model is not None else (lambda _ids: b"")

    def chat_logprobs(entries, top: int | None):
        """A chat choice's (or chunk's) logprobs: {"content": [one per token], "refusal": None}."""
        if top is None:
            return None
        decode, content = decoder(), []
        for e in entries or ():
            item = _logprob_item(decode, e.token, e.logprob)
            item["top_logprobs"] = [_logprob_item(decode, t, lp) for t, lp in e.top[:top]]
            content.append(item)
        return {"content": content, "refusal": None}

    def vocab_size() -> int | None:
        model = runtime.model
        return model.vocab_size if model is not None else None

    def check_model(body: dict) -> str:
        """The model that answers: Roost serves one, so any name (a client's default such as
        gpt-3.5-turbo, a name the user typed) or none gets it, and the response carries its real id."""
        name = body.get("model")
        if name is not None and not isinstance(name, str):
            raise ApiError(400, "model must be a string (the name of a model; any name gets the loaded one).",
                           param="model", code="invalid_type")
        if runtime.info is None:
            raise ApiError(503, "No model is loaded in Roost. Load one first.", type="server_error",
                           code="model_not_loaded")
        return current_id()

    async def read_json(request: Request) -> dict:
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > max_body_bytes:
            raise ApiError(413, f"The request body is too large ({int(length)} bytes; at most {max_body_bytes}).",
                           code="request_too_large")
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > max_body_bytes:
                raise ApiError(413, f"The request body is too large (at most {max_body_bytes} bytes).",
                               code="request_too_large")
        try:
            body = json.loads(bytes(data))
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "We could not parse the JSON body of your request. The API expects a JSON "
                                "object, but what was sent was not valid JSON.", code="invalid_json") from None
        except RecursionError:  # (arrays or objects nested thousands deep)
            raise ApiError(400, "The JSON body of your request is nested too deeply to read.",
                           code="invalid_json") from None
        if not isinstance(body, dict):
            raise ApiError(400, "The request body must be a JSON object.", code="invalid_json")
        unpaired = lone_surrogate(body)
        if unpaired is not None:
            raise ApiError(400, f"Invalid '{unpaired}': it contains a lone UTF-16 surrogate (such as \\ud800), "
                                "which is no character; send text as valid Unicode.", param=unpaired,
                           code="invalid_value")
        return body

    def submit(job: Job) -> None:
        try:
            worker.submit(job)
        except QueueFull:
            raise ApiError(503, f"The server is busy: {worker.max_queue} requests are already waiting for the "
                                "model. Try again in a moment.", type="server_error", code="queue_full") from None
        except Closed:
            raise ApiError(503, "The server is shutting down.", type="server_error",
                           code="server_shutting_down") from None

    async def outcome_of(job: Job, request: Request):
        """Wait for a non-streaming job; None when the client left (its job is then stopped)."""
        try:
            async with contextlib.aclosing(job_events(job, request)) as events:
                async for kind, value in events:
                    if kind == "done":
                        return value
                    if kind == "error":
                        raise job_error(value)
            return None
        finally:
            job.cancel()  # a no-op once done; stops the generation when the client has gone

    def usage(outcome) -> dict:
        return {"prompt_tokens": outcome.prompt_tokens, "completion_tokens": outcome.completion_tokens,
                "total_tokens": outcome.prompt_tokens + outcome.completion_tokens,
                "prompt_tokens_details": {"cached_tokens": outcome.cached_tokens}}

    def sse_response(stream: AsyncIterator[str]) -> StreamingResponse:
        return StreamingResponse(stream, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # --- endpoints -----------------------------------------------------------------------------
    @app.get("/health")
    @app.get("/v1/health")
    async def health():  # open without a key: it says only whether the server can answer
        if runtime.info is None:
            return ApiError(503, "No model is loaded in Roost. Load one first.", type="unavailable_error",
                            code="model_not_loaded").response()
        return {"status": "ok", "model": current_id()}

    @app.get("/v1/models")
    @app.get("/models")
    async def list_models(request: Request):
        authorize(request)
        mid = current_id()
        data = [] if mid is None else [{"id": mid, "object": "model", "created": created, "owned_by": "roost"}]
        return {"object": "list", "data": data}

    @app.get("/v1/models/{name:path}")
    @app.get("/models/{name:path}")
    async def get_model(name: str, request: Request):
        authorize(request)
        info = runtime.info
        if info is None or name not in (current_id(), info.name):
            raise ApiError(404, f"The model `{name}` does not exist.", param="model", code="model_not_found")
        return {"id": current_id(), "object": "model", "created": created, "owned_by": "roost"}

    @app.get("/roost/stats")
    async def stats(request: Request):
        authorize(request)
        return {"model": current_id(), **worker.stats()}

    @app.post("/v1/chat/completions")
    @app.post("/chat/completions")
    async def chat_completions(request: Request):
        authorize(request)
        body = await read_json(request)
        name = check_model(body)
        messages = fields.messages(body.get("messages"))
        fields.unsupported(body, chat=True)
        offered = tools.parse(body)
        think = fields.reasoning_effort(body)  # G1 models: how much to think first (None: not at all)
        lead = ""
        if offered is not None and offered.active:  # listed in the System turn, as G1 models learned
            messages = with_system(messages, offered.system_text())
            lead = offered.reply_lead()
        reasoning_model = runtime.info is not None and runtime.info.reasoning
        grammar = fields.response_format(body, reasoning=reasoning_model)
        if grammar is not None and offered is not None and offered.active:
            raise ApiError(400, "'response_format' and 'tools' cannot be used together here: send one or the other "
                                "(or tool_choice 'none').", param="response_format", code="unsupported_parameter")
        if offered is not None:  # a required call: its arguments fit the tool's schema
            grammar = offered.grammar() or grammar
        if lead or grammar is not None:
            think = None  # a call required, or JSON: no thought before it
        stream, include_usage = fields.stream_flags(body)
        n, top = fields.choices(body), fields.logprobs(body, chat=True)
        params = fields.sampling(body, chat_defaults, default_max=min(chat_max_tokens, max_tokens_limit),
                                 limit=max_tokens_limit, chat=True, vocab_size=vocab_size())
        constraint = None
        if grammar is not None:  # the grammar ends the reply, not the chat's stop strings
            from roost.engine.grammar import JsonConstraint

            constraint = lambda model: JsonConstraint(model.tokenizer, grammar)  # noqa: E731
        job = Job(lambda model, info: chat_tokens(model, info, messages, lead, think), params,
                  stops=chat_stops if grammar is None else None, stream=stream, n=n, logprobs=top,
                  constraint=constraint)
        submit(job)
        rid, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        fp = fingerprint()

        def chunk(index: int, delta: dict, finish: str | None = None, logprobs=None) -> str:
            return sse({"id": rid, "object": "chat.completion.chunk", "created": now, "model": name,
                         "system_fingerprint": fp,
                         "choices": [{"index": index, "delta": delta, "logprobs": chat_logprobs(logprobs, top),
                                      "finish_reason": finish}]})

        def reply_of(text: str):
            """(message fields, finish reason) of a whole reply: tool calls when it is written as one."""
            calls = tools.read_calls(text, offered) if offered is not None and offered.active else None
            if calls:
                return {"content": None, "tool_calls": calls}, "tool_calls"
            return {"content": text.strip() if lead else text.lstrip()}, None

        if not stream:
            outcome = await outcome_of(job, request)
            if outcome is None:
                raise ApiError(499, "The client closed the request.", code="client_closed_request")
            out = []
            for i, choice in enumerate(outcome.choices):
                thought, answer = "", choice.text
                if reasoning_model and not lead:  # the thought apart (reasoning_content), the answer as content
                    from roost.engine.prompts import split_reasoning

                    thought, answer = split_reasoning(answer, thinking=think not in (None, False))
                message, finish = reply_of(lead + answer)
                if thought:
                    message["reasoning_content"] = thought
                out.append({"index": i, "message": {"role": "assistant", **message, "refusal": None},
                            "logprobs": chat_logprobs(choice.logprobs, top),
                            "finish_reason": finish or FINISH[choice.finish_reason]})
            return {"id": rid, "object": "chat.completion", "created": now, "model": name, "system_fingerprint": fp,
                    "choices": out, "usage": usage(outcome)}

        class Reply:
            """One choice of a streamed reply: its text told apart (thought, answer, a tool call
            held until it is whole) and its chunks, the logprobs riding on the next chunk sent."""

            def __init__(self, index: int):
                self.index = index
                self.begun = False  # the reply's leading space (after "Assistant:") is not part of it
                self.thought_begun = False
                self.held = lead if offered is not None and offered.active else None  # may be a call: wait
                self.split = ThoughtSplitter(think not in (None, False)) if reasoning_model and not lead else None
                self.logprobs: list = []

            def send(self, delta: dict, finish: str | None = None) -> str:
                entries, self.logprobs = self.logprobs, []
                return chunk(self.index, delta, finish, entries)

            def pieces(self, parts):
                for part, value in parts:
                    if part == "reasoning":
                        text = value if self.thought_begun else value.lstrip()
                        if text:
                            self.thought_begun = True
                            yield self.send({"reasoning_content": text})
                        continue
                    if self.held is not None:
                        self.held += value
                        if tools.might_be_a_call(self.held):
                            continue
                        value, self.held = self.held, None  # plain text after all: send what was held
                    text = value if self.begun else value.lstrip()
                    if text:
                        self.begun = True
                        yield self.send({"content": text})

            def feed(self, text: str, entries):
                self.logprobs += entries
                yield from self.pieces(self.split.feed(text) if self.split else [("content", text)])

            def finish(self, choice):
                if self.split is not None:
                    yield from self.pieces(self.split.flush())
                finish = FINISH[choice.finish_reason]
                if self.held is not None:
                    message, called = reply_of(self.held)
                    if called:
                        for i, call in enumerate(message["tool_calls"]):
                            yield self.send({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                                             "function": {"name": call["function"]["name"],
                                                                          "arguments": ""}}]})
                            yield self.send({"tool_calls": [{"index": i, "function": {
                                "arguments": call["function"]["arguments"]}}]})
                        finish = called
                    elif message["content"]:
                        yield self.send({"content": message["content"]})
                yield self.send({}, finish)

        async def events() -> AsyncIterator[str]:
            replies = [Reply(i) for i in range(n)]
            async for kind, value in stream_events(job, request):
                if kind == "started":
                    for reply in replies:
                        yield chunk(reply.index, {"role": "assistant", "content": ""})
                elif kind == "piece":
                    index, text, entries = value
                    for out in replies[index].feed(text, entries):
                        yield out
                elif kind == "done":
                    for reply, choice in zip(replies, value.choices):
                        for out in reply.finish(choice):
                            yield out
                    if include_usage:
                        yield sse({"id": rid, "object": "chat.completion.chunk", "created": now, "model": name,
                                    "system_fingerprint": fp, "choices": [], "usage": usage(value)})
                    yield "data: [DONE]\n\n"
                else:  # a keep-alive comment or an error event
                    yield value

        return sse_response(events())

    @app.post("/v1/completions")
    @app.post("/completions")
    async def completions(request: Request):
        authorize(request)
        body = await read_json(request)
        name = check_model(body)
        prompt = fields.prompt(body.get("prompt"), runtime)
        fields.unsupported(body, chat=False)
        stream, include_usage = fields.stream_flags(body)
        echo = fields.flag(body, "echo")
        n, top = fields.choices(body), fields.logprobs(body, chat=False)
        params = fields.sampling(body, completion_defaults, default_max=min(COMPLETION_MAX_TOKENS, max_tokens_limit),
                                 limit=max_tokens_limit, chat=False, vocab_size=vocab_size())
        if isinstance(prompt, str):
            def tokens(model, _info):
                return model.tokenizer.encode(prompt)
        else:
            def tokens(_model, _info):
                return prompt
        job = Job(tokens, params, stream=stream, n=n, logprobs=top)
        submit(job)
        rid, now = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        fp = fingerprint()
        shown = (prompt if isinstance(prompt, str) else runtime.model.tokenizer.decode(prompt)) if echo else ""
        offsets = [len(shown)] * n  # where each choice's next token's text begins (text_offset)

        def legacy_logprobs(index: int, entries):
            if top is None:
                return None
            out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
            decode = decoder()
            for e in entries:
                token = decode([e.token]).decode("utf-8", errors="replace")
                out["tokens"].append(token)
                out["token_logprobs"].append(e.logprob)
                out["top_logprobs"].append({decode([t]).decode("utf-8", errors="replace"): lp
                                            for t, lp in e.top[:top]})
                out["text_offset"].append(offsets[index])
                offsets[index] += len(token)
            return out

        def chunk(index: int, text: str, finish: str | None = None, entries=()) -> str:
            return sse({"id": rid, "object": "text_completion", "created": now, "model": name,
                         "system_fingerprint": fp,
                         "choices": [{"text": text, "index": index, "logprobs": legacy_logprobs(index, entries),
                                      "finish_reason": finish}]})

        if not stream:
            outcome = await outcome_of(job, request)
            if outcome is None:
                raise ApiError(499, "The client closed the request.", code="client_closed_request")
            return {"id": rid, "object": "text_completion", "created": now, "model": name, "system_fingerprint": fp,
                    "choices": [{"text": shown + c.text, "index": i, "logprobs": legacy_logprobs(i, c.logprobs),
                                 "finish_reason": FINISH[c.finish_reason]} for i, c in enumerate(outcome.choices)],
                    "usage": usage(outcome)}

        async def events() -> AsyncIterator[str]:
            async for kind, value in stream_events(job, request):
                if kind == "started":
                    if shown:
                        for i in range(n):
                            yield chunk(i, shown)
                elif kind == "piece":
                    index, text, entries = value
                    yield chunk(index, text, entries=entries)
                elif kind == "done":
                    for i, c in enumerate(value.choices):
                        yield chunk(i, "", FINISH[c.finish_reason])
                    if include_usage:
                        yield sse({"id": rid, "object": "text_completion", "created": now, "model": name,
                                    "system_fingerprint": fp, "choices": [], "usage": usage(value)})
                    yield "data: [DONE]\n\n"
                else:
                    yield value

        return sse_response(events())

    return app


def _logprob_item(decode_bytes, token: int, logprob: float) -> dict:
    data = decode_bytes([token])
    return {"token": data.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(data)}


def with_system(messages: list[tuple[str, str]], text: str) -> list[tuple[str, str]]:
    """`text` added to the conversation's system prompt (a System turn of its own if it has none)."""
    if not text:
        return messages
    if messages and messages[0][0] == "system":
        return [("system", f"{messages[0][1].strip()}\n{text}".strip()), *messages[1:]]
    return [("system", text), *messages]


