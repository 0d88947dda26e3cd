"""OpenAI-compatible endpoints over Roost's Runtime (the same loaded model as the app's chat).

    GET  /v1/models              the loaded model
    POST /v1/chat/completions    chat, streamed (server-sent events) or not
    POST /v1/completions         raw text continuation, streamed or not
    GET  /roost/stats            queue, counters and the prefix cache (not an OpenAI endpoint)

Requests wait in order for the single model; at most ``max_queue`` may wait, more get 503.
Generation runs on a worker thread (see :mod:`app.server.jobs`), never on the event loop. A
client that disconnects stops its generation within one token. Every error is an OpenAI-style
JSON object ``{"error": {"message", "type", "param", "code"}}`` with a 4xx/5xx status, never a
traceback. RWKV extensions to the request: ``top_k`` and ``penalty_decay``. The usage object
tells how many prompt tokens came from the state cache in ``prompt_tokens_details.cached_tokens``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.server.cache import PrefixCache
from app.server.jobs import (
    Cancelled,
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
MAX_STOP_STRINGS = 16
KEEPALIVE_SECONDS = 15.0  # an SSE comment while a streaming request waits its turn

# ChatRWKV / RWKV-Runner defaults (the app's); a request overrides any of them
CHAT_DEFAULTS = {"temperature": 1.0, "top_p": 0.3, "top_k": 0, "presence_penalty": 0.5,
                 "frequency_penalty": 0.5, "penalty_decay": 0.996}
COMPLETION_DEFAULTS = {"temperature": 1.0, "top_p": 0.7, "top_k": 0, "presence_penalty": 0.0,
                       "frequency_penalty": 0.3, "penalty_decay": 0.996}
FINISH = {"stop": "stop", "length": "length", "cancelled": "stop"}
# web pages this computer serves (a local chat UI); without an API key, pages from anywhere else
# may not drive the model through the visitor's browser
LOCAL_ORIGIN = r"[a-z][a-z0-9+.-]*://(localhost|127(\.[0-9]{1,3}){3}|\[::1\])(:[0-9]+)?"


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def create_app(runtime, *, model_id: str | None = None, api_key: str | None = None, max_queue: int = 64,
               max_body_bytes: int = MAX_BODY_BYTES, max_tokens_limit: int = MAX_TOKENS_LIMIT,
               chat_max_tokens: int = CHAT_MAX_TOKENS, cache: PrefixCache | None = None,
               cache_entries: int = 32, cache_bytes: int = 512 * 2 ** 20,
               chat_defaults: dict | None = None, completion_defaults: dict | None = None) -> FastAPI:
    """The API over ``runtime`` (its loaded model, whichever that is at each request).

    ``model_id`` is the name clients use (default: the loaded file's name without extension; the
    full file name is accepted too). With ``api_key`` every request must carry
    ``Authorization: Bearer <api_key>``. ``app.state.roost`` is the :class:`Worker` (stats)."""
    worker = Worker(runtime, cache if cache is not None else PrefixCache(cache_entries, cache_bytes),
                    max_queue=max_queue)
    chat_defaults = {**CHAT_DEFAULTS, **(chat_defaults or {})}
    completion_defaults = {**COMPLETION_DEFAULTS, **(completion_defaults or {})}
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        worker.close()

    app = FastAPI(title="Roost", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.roost = worker
    if api_key is None:
        app.add_middleware(CORSMiddleware, allow_origin_regex=LOCAL_ORIGIN, allow_methods=["*"], allow_headers=["*"])
        app.add_middleware(_LocalOriginsOnly)
    else:  # the key protects it: any page that has the key may call it
        app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"])

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
        if not header:
            raise ApiError(401, "You didn't provide an API key. Send it in an Authorization header "
                                "using Bearer auth (Authorization: Bearer YOUR_KEY).", code="invalid_api_key")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")

    def current_id() -> str | None:
        info = runtime.info
        if info is None:
            return None
        return model_id or info.path.stem

    def check_model(body: dict) -> str:
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise ApiError(400, "You must provide a model parameter.", param="model", code="missing_required_parameter")
        info = runtime.info
        if info is None:
            raise ApiError(503, "No model is loaded in Roost. Load one first.", type="server_error",
                           code="model_not_loaded")
        if name not in (current_id(), info.name):
            raise ApiError(404, f"The model `{name}` does not exist. This server serves `{current_id()}`.",
                           param="model", code="model_not_found")
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
        if not isinstance(body, dict):
            raise ApiError(400, "The request body must be a JSON object.", code="invalid_json")
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
            async with contextlib.aclosing(_events(job, request)) as events:
                async for kind, value in events:
                    if kind == "done":
                        return value
                    if kind == "error":
                        raise _job_error(value)
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
    @app.get("/v1/models")
    async def list_models(request: Request):
        authorize(request)
        mid = current_id()
        data = [] if mid is None else [{"id": mid, "object": "model", "created": created, "owned_by": "roost"}]
        return {"object": "list", "data": data}

    @app.get("/v1/models/{name:path}")
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
    async def chat_completions(request: Request):
        authorize(request)
        body = await read_json(request)
        name = check_model(body)
        messages = _messages(body.get("messages"))
        _unsupported(body, chat=True)
        stream, include_usage = _stream_flags(body)
        params = _sampling(body, chat_defaults, default_max=min(chat_max_tokens, max_tokens_limit),
                           limit=max_tokens_limit, chat=True)
        job = Job(lambda model, info: chat_tokens(model, info, messages), params, stops=chat_stops,
                  stream=stream)
        submit(job)
        rid, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(delta: dict, finish: str | None = None) -> str:
            return _sse({"id": rid, "object": "chat.completion.chunk", "created": now, "model": name,
                         "system_fingerprint": None,
                         "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})

        if not stream:
            outcome = await outcome_of(job, request)
            if outcome is None:
                raise ApiError(499, "The client closed the request.", code="client_closed_request")
            return {"id": rid, "object": "chat.completion", "created": now, "model": name, "system_fingerprint": None,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": outcome.text.lstrip(),
                                                         "refusal": None},
                                 "logprobs": None, "finish_reason": FINISH[outcome.finish_reason]}],
                    "usage": usage(outcome)}

        async def events() -> AsyncIterator[str]:
            begun = False  # the reply's leading space (after "Assistant:") is not part of it
            async for kind, value in _stream_events(job, request):
                if kind == "started":
                    yield chunk({"role": "assistant", "content": ""})
                elif kind == "piece":
                    text = value if begun else value.lstrip()
                    if text:
                        begun = True
                        yield chunk({"content": text})
                elif kind == "done":
                    yield chunk({}, FINISH[value.finish_reason])
                    if include_usage:
                        yield _sse({"id": rid, "object": "chat.completion.chunk", "created": now, "model": name,
                                    "system_fingerprint": None, "choices": [], "usage": usage(value)})
                    yield "data: [DONE]\n\n"
                else:  # a keep-alive comment or an error event
                    yield value

        return sse_response(events())

    @app.post("/v1/completions")
    async def completions(request: Request):
        authorize(request)
        body = await read_json(request)
        name = check_model(body)
        prompt = _prompt(body.get("prompt"), runtime)
        _unsupported(body, chat=False)
        stream, include_usage = _stream_flags(body)
        echo = _flag(body, "echo")
        params = _sampling(body, completion_defaults, default_max=min(COMPLETION_MAX_TOKENS, max_tokens_limit),
                           limit=max_tokens_limit, chat=False)
        if isinstance(prompt, str):
            def tokens(model, _info):
                return model.tokenizer.encode(prompt)
        else:
            def tokens(_model, _info):
                return prompt
        job = Job(tokens, params, stream=stream)
        submit(job)
        rid, now = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        shown = (prompt if isinstance(prompt, str) else runtime.model.tokenizer.decode(prompt)) if echo else ""

        def chunk(text: str, finish: str | None = None) -> str:
            return _sse({"id": rid, "object": "text_completion", "created": now, "model": name,
                         "system_fingerprint": None,
                         "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]})

        if not stream:
            outcome = await outcome_of(job, request)
            if outcome is None:
                raise ApiError(499, "The client closed the request.", code="client_closed_request")
            return {"id": rid, "object": "text_completion", "created": now, "model": name, "system_fingerprint": None,
                    "choices": [{"text": shown + outcome.text, "index": 0, "logprobs": None,
                                 "finish_reason": FINISH[outcome.finish_reason]}],
                    "usage": usage(outcome)}

        async def events() -> AsyncIterator[str]:
            async for kind, value in _stream_events(job, request):
                if kind == "started":
                    if shown:
                        yield chunk(shown)
                elif kind == "piece":
                    yield chunk(value)
                elif kind == "done":
                    yield chunk("", FINISH[value.finish_reason])
                    if include_usage:
                        yield _sse({"id": rid, "object": "text_completion", "created": now, "model": name,
                                    "system_fingerprint": None, "choices": [], "usage": usage(value)})
                    yield "data: [DONE]\n\n"
                else:
                    yield value

        return sse_response(events())

    return app


class _LocalOriginsOnly:
    """Refuse requests that a web page from another site makes through the visitor's browser
    (they carry its Origin): otherwise any site could use the model of whoever visits it."""

    def __init__(self, app):
        self.app = app
        self.local = re.compile(LOCAL_ORIGIN, re.IGNORECASE)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            origin = dict(scope.get("headers") or ()).get(b"origin", b"").decode("latin-1")
            if origin and not self.local.fullmatch(origin):
                error = ApiError(403, f"Requests from web pages of {origin} are refused. Pages served from this "
                                      "computer may call the API; set an API key to allow others.",
                                 code="origin_not_allowed")
                await error.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


# --- events ------------------------------------------------------------------------------------
async def _events(job: Job, request: Request, idle: float = 0.5):
    """The job's events as they come; ("idle", None) every `idle` seconds without one. Ends after
    "done" or "error", or (stopping the job) when the client has disconnected."""
    getter, checked = None, time.monotonic()
    try:
        while True:
            if getter is None:
                getter = asyncio.ensure_future(job.events.get())
            done, _ = await asyncio.wait({getter}, timeout=idle)
            if not done or time.monotonic() - checked >= idle:  # also between a stream's pieces
                checked = time.monotonic()
                if await request.is_disconnected():
                    job.cancel()
                    return
            if not done:
                yield "idle", None
                continue
            item, getter = getter.result(), None
            yield item
            if item[0] in ("done", "error"):
                return
    finally:
        if getter is not None:
            getter.cancel()


async def _stream_events(job: Job, request: Request):
    """Events for a streaming response: errors and keep-alives already turned into SSE text
    (("error"|"keepalive", text)). The job is stopped whenever the stream ends early: the client
    disconnected, or the response task was cancelled."""
    last = time.monotonic()
    try:
        async with contextlib.aclosing(_events(job, request)) as events:
            async for kind, value in events:
                if kind == "idle":
                    if time.monotonic() - last >= KEEPALIVE_SECONDS:
                        last = time.monotonic()
                        yield "keepalive", ": keep-alive\n\n"
                    continue
                last = time.monotonic()
                if kind == "error":
                    yield "error", _sse(_job_error(value).body())
                    return
                yield kind, value
    finally:
        job.cancel()


def _job_error(exc: BaseException) -> ApiError:
    from engine.errors import RoostError

    if isinstance(exc, Cancelled):
        return ApiError(503, "The request was cancelled (the server is stopping).", type="server_error",
                        code="cancelled")
    if isinstance(exc, RoostError):
        message = str(exc).splitlines()[0]
        return ApiError(503, message, type="server_error", code="model_not_loaded" if "No model" in message else None)
    if isinstance(exc, ValueError):
        return ApiError(400, str(exc))
    return ApiError(500, f"The server had an error while generating ({type(exc).__name__}).", type="server_error")


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


# --- request fields ------------------------------------------------------------------------------
def _type_name(value) -> str:
    return {bool: "a boolean", str: "a string", list: "an array", dict: "an object", type(None): "null",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def _number(body: dict, name: str, *, integer: bool = False):
    value = body.get(name)
    if value is None:
        return None
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok:
        raise ApiError(400, f"Invalid type for '{name}': expected {'an integer' if integer else 'a number'}, "
                            f"but got {_type_name(value)} instead.", param=name, code="invalid_type")
    return value


def _flag(body: dict, name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(400, f"Invalid type for '{name}': expected a boolean, but got {_type_name(value)} instead.",
                       param=name, code="invalid_type")
    return value


def _stream_flags(body: dict) -> tuple[bool, bool]:
    stream = _flag(body, "stream")
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not isinstance(options, dict):
        raise ApiError(400, "Invalid type for 'stream_options': expected an object.", param="stream_options",
                       code="invalid_type")
    if not stream:
        raise ApiError(400, "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                       param="stream_options", code="invalid_value")
    return stream, _flag(options, "include_usage")


def _sampling(body: dict, defaults: dict, *, default_max: int, limit: int, chat: bool):
    from engine.sampling import SamplingParams

    values = dict(defaults)
    for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty", "penalty_decay"):
        value = _number(body, name)
        if value is not None:
            values[name] = float(value)
    top_k = _number(body, "top_k", integer=True)
    if top_k is not None:
        values["top_k"] = top_k
    seed = _number(body, "seed", integer=True)
    if seed is not None:
        values["seed"] = seed
    key = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _number(body, key, integer=True)
    if max_tokens is None:
        max_tokens = default_max
    elif max_tokens < 1:
        raise ApiError(400, f"Invalid '{key}': it must be at least 1, but got {max_tokens}.", param=key,
                       code="invalid_value")
    elif max_tokens > limit:
        raise ApiError(400, f"'{key}' is too large: {max_tokens}. This server allows at most {limit} tokens "
                            "per request.", param=key, code="invalid_value")
    values["max_tokens"] = max_tokens
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise ApiError(400, "Invalid 'stop': expected a string or an array of strings.", param="stop",
                       code="invalid_type")
    if len(stop) > MAX_STOP_STRINGS:
        raise ApiError(400, f"Invalid 'stop': at most {MAX_STOP_STRINGS} stop strings.", param="stop",
                       code="invalid_value")
    values["stop"] = tuple(s for s in stop if s)
    try:
        return SamplingParams(**values)
    except ValueError as e:  # the engine's range checks: "temperature must be between 0 and 5" etc.
        message = str(e)
        raise ApiError(400, f"Invalid value: {message}.", param=message.split(" ")[0], code="invalid_value") from None


def _messages(raw) -> list[tuple[str, str]]:
    if not isinstance(raw, list) or not raw:
        raise ApiError(400, "'messages' must be a non-empty array of messages.", param="messages",
                       code="invalid_value" if isinstance(raw, list) else "invalid_type")
    out = []
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise ApiError(400, f"Invalid type for '{where}': expected an object.", param=where, code="invalid_type")
        role = m.get("role")
        if role == "developer":
            role = "system"
        if role not in ("system", "user", "assistant"):
            if role in ("tool", "function"):
                raise ApiError(400, f"'{where}.role' is '{role}': this server has no tool calling; use system, "
                                    "user and assistant messages.", param=f"{where}.role", code="invalid_value")
            raise ApiError(400, f"Invalid value for '{where}.role': {role!r}. Supported values are: 'system', "
                                "'developer', 'user' and 'assistant'.", param=f"{where}.role", code="invalid_value")
        out.append((role, _content(m.get("content"), f"{where}.content", role)))
    return out


def _content(content, where: str, role: str) -> str:
    if content is None and role == "assistant":
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif isinstance(part, dict) and part.get("type") in ("refusal",):
                continue
            else:
                kind = part.get("type") if isinstance(part, dict) else _type_name(part)
                raise ApiError(400, f"'{where}' has a part of type {kind!r}: this model reads text only.",
                               param=where, code="invalid_value")
        return "\n".join(texts)
    raise ApiError(400, f"Invalid type for '{where}': expected a string or an array of text parts, but got "
                        f"{_type_name(content)} instead.", param=where, code="invalid_type")


def _prompt(raw, runtime):
    """A completion prompt: a string, or token ids; a batch of one is accepted."""
    if isinstance(raw, list) and len(raw) == 1 and isinstance(raw[0], (str, list)):
        raw = raw[0]
    if isinstance(raw, str):
        return raw
    if isinstance(raw, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in raw):
        vocab = runtime.model.vocab_size if runtime.model is not None else 1 << 31
        bad = [t for t in raw if not 0 <= t < vocab]
        if bad:
            raise ApiError(400, f"Invalid token id {bad[0]} in 'prompt' (the vocabulary has {vocab} tokens).",
                           param="prompt", code="invalid_value")
        return list(raw)
    if isinstance(raw, list) and raw and all(isinstance(p, (str, list)) for p in raw):
        raise ApiError(400, "This server takes one prompt per request; send the prompts as separate requests.",
                       param="prompt", code="invalid_value")
    if raw is None:
        raise ApiError(400, "You must provide a prompt parameter.", param="prompt", code="missing_required_parameter")
    raise ApiError(400, f"Invalid type for 'prompt': expected a string or an array of token ids, but got "
                        f"{_type_name(raw)} instead.", param="prompt", code="invalid_type")


def _unsupported(body: dict, *, chat: bool) -> None:
    """Refuse, with a clear 400, what this server cannot do rather than quietly ignoring it."""
    n = _number(body, "n", integer=True)
    if n is not None and n != 1:
        raise ApiError(400, "This server generates one choice per request ('n' must be 1).", param="n",
                       code="invalid_value")
    checks: list[tuple[str, Callable[[object], bool], str]] = [
        ("logprobs", lambda v: v not in (None, False), "Log probabilities are not supported."),
        ("top_logprobs", lambda v: v not in (None, 0), "Log probabilities are not supported."),
    ]
    if chat:
        checks += [
            ("tools", lambda v: bool(v), "Tool calling is not supported by this server."),
            ("functions", lambda v: bool(v), "Function calling is not supported by this server."),
            ("response_format", lambda v: isinstance(v, dict) and v.get("type") not in (None, "text"),
             "Only the 'text' response format is supported."),
        ]
    else:
        checks += [
            ("best_of", lambda v: v not in (None, 1), "'best_of' must be 1 on this server."),
            ("suffix", lambda v: bool(v), "'suffix' (insertion) is not supported."),
        ]
    for name, bad, message in checks:
        if bad(body.get(name)):
            raise ApiError(400, message, param=name, code="unsupported_parameter")
