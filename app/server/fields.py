"""The fields of an OpenAI request, checked and turned into what the engine takes, and the
OpenAI-style error raised (as a 400) when one is wrong."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.responses import JSONResponse

MAX_STOP_STRINGS = 16


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



def type_name(value) -> str:
    return {bool: "a boolean", str: "a string", list: "an array", dict: "an object", type(None): "null",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def number(body: dict, name: str, *, integer: bool = False):
    value = body.get(name)
    if value is None:
        return None
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok:
        raise ApiError(400, f"Invalid type for '{name}': expected {'an integer' if integer else 'a number'}, "
                            f"but got {type_name(value)} instead.", param=name, code="invalid_type")
    return value


def flag(body: dict, name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(400, f"Invalid type for '{name}': expected a boolean, but got {type_name(value)} instead.",
                       param=name, code="invalid_type")
    return value


def stream_flags(body: dict) -> tuple[bool, bool]:
    stream = flag(body, "stream")
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not isinstance(options, dict):
        raise ApiError(400, "Invalid type for 'stream_options': expected an object.", param="stream_options",
                       code="invalid_type")
    if not stream:
        raise ApiError(400, "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                       param="stream_options", code="invalid_value")
    return stream, flag(options, "include_usage")


def sampling(body: dict, defaults: dict, *, default_max: int, limit: int, chat: bool,
             vocab_size: int | None = None):
    from roost.engine.sampling import SamplingParams

    values = dict(defaults)
    for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty", "penalty_decay"):
        value = number(body, name)
        if value is not None:
            values[name] = float(value)
    top_k = number(body, "top_k", integer=True)
    if top_k is not None:
        values["top_k"] = top_k
    seed = number(body, "seed", integer=True)
    if seed is not None:
        if not -2 ** 63 <= seed < 2 ** 64:  # (what a 64-bit generator takes; decided before any stream starts)
            raise ApiError(400, f"Invalid 'seed': {seed} is out of range; a seed is a whole number from -2^63 to "
                                "2^64 - 1.", param="seed", code="invalid_value")
        values["seed"] = seed
    key = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = number(body, key, integer=True)
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
    values["logit_bias"] = logit_bias(body, vocab_size)
    try:
        return SamplingParams(**values)
    except ValueError as e:  # the engine's range checks: "temperature must be between 0 and 5" etc.
        message = str(e)
        raise ApiError(400, f"Invalid value: {message}.", param=message.split(" ")[0], code="invalid_value") from None


def messages(raw) -> list[tuple[str, str]]:
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
        if role in ("tool", "function"):  # a tool's result: the G1 format's "Function output:" user turn
            text = content(m.get("content"), f"{where}.content", role)
            if out and out[-1][0] == "user" and out[-1][1].startswith(FUNCTION_OUTPUT):
                out[-1] = ("user", out[-1][1] + "\n" + text)
            else:
                out.append(("user", FUNCTION_OUTPUT + text))
            continue
        if role not in ("system", "user", "assistant"):
            raise ApiError(400, f"Invalid value for '{where}.role': {role!r}. Supported values are: 'system', "
                                "'developer', 'user', 'assistant' and 'tool'.", param=f"{where}.role",
                           code="invalid_value")
        text = content(m.get("content"), f"{where}.content", role)
        if role == "assistant" and (m.get("tool_calls") or m.get("function_call")):
            text = "\n".join(filter(None, [text, *_calls(m, where)]))
        out.append((role, text))
    return out


FUNCTION_OUTPUT = "Function output:\n"


def _calls(m: dict, where: str) -> list[str]:
    """An assistant message's earlier tool calls, as the model writes them."""
    from roost.server.tools import call_text

    calls = m.get("tool_calls") or []
    if m.get("function_call"):
        calls = [{"function": m["function_call"]}]
    if not isinstance(calls, list):
        raise ApiError(400, f"'{where}.tool_calls' must be an array.", param=f"{where}.tool_calls",
                       code="invalid_type")
    out = []
    for i, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise ApiError(400, f"'{where}.tool_calls[{i}]' needs a function with a name.",
                           param=f"{where}.tool_calls[{i}]", code="invalid_value")
        out.append(call_text(fn["name"], fn.get("arguments") or {}))
    return out


def content(content, where: str, role: str) -> str:
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
                kind = part.get("type") if isinstance(part, dict) else type_name(part)
                raise ApiError(400, f"'{where}' has a part of type {kind!r}: this model reads text only.",
                               param=where, code="invalid_value")
        return "\n".join(texts)
    raise ApiError(400, f"Invalid type for '{where}': expected a string or an array of text parts, but got "
                        f"{type_name(content)} instead.", param=where, code="invalid_type")


def prompt(raw, runtime):
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
                        f"{type_name(raw)} instead.", param="prompt", code="invalid_type")


EFFORTS = {"none": False, "minimal": False, "low": "low", "medium": "medium", "high": "high"}


def reasoning_effort(body: dict):
    """A G1 model's thinking for `reasoning_effort` (OpenAI's values): None when not asked (answer at
    once), False for none/minimal, else the level "low" / "medium" / "high"."""
    effort = body.get("reasoning_effort")
    if effort is None:
        return None
    if effort not in EFFORTS:
        raise ApiError(400, f"Invalid value for 'reasoning_effort': {effort!r}. Supported values are: "
                            "'none', 'minimal', 'low', 'medium' and 'high'.", param="reasoning_effort",
                       code="invalid_value")
    return EFFORTS[effort]


MAX_CHOICES = 16  # replies per request ('n'): each costs a full generation
MAX_TOP_LOGPROBS = 20


def choices(body: dict) -> int:
    n = number(body, "n", integer=True)
    if n is None:
        return 1
    if not 1 <= n <= MAX_CHOICES:
        raise ApiError(400, f"Invalid 'n': {n}. It must be between 1 and {MAX_CHOICES}.", param="n",
                       code="invalid_value")
    return n


def logprobs(body: dict, *, chat: bool) -> int | None:
    """How many alternatives to report with each token's log-probability; None: no logprobs.
    Chat: ``logprobs: true`` and ``top_logprobs`` (0-20); legacy completions: ``logprobs: N``."""
    if chat:
        on = flag(body, "logprobs")
        top = number(body, "top_logprobs", integer=True)
        if top is not None and not on:
            raise ApiError(400, "'top_logprobs' needs 'logprobs' set to true.", param="top_logprobs",
                           code="invalid_value")
        if top is not None and not 0 <= top <= MAX_TOP_LOGPROBS:
            raise ApiError(400, f"Invalid 'top_logprobs': {top}. It must be between 0 and {MAX_TOP_LOGPROBS}.",
                           param="top_logprobs", code="invalid_value")
        return (top or 0) if on else None
    top = number(body, "logprobs", integer=True)
    if top is not None and not 0 <= top <= MAX_TOP_LOGPROBS:
        raise ApiError(400, f"Invalid 'logprobs': {top}. It must be between 0 and {MAX_TOP_LOGPROBS}.",
                       param="logprobs", code="invalid_value")
    return top


def logit_bias(body: dict, vocab_size: int | None) -> dict[int, float]:
    """OpenAI's logit_bias: {"token id": bias from -100 to 100}."""
    raw = body.get("logit_bias")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ApiError(400, f"Invalid type for 'logit_bias': expected an object, but got {type_name(raw)} instead.",
                       param="logit_bias", code="invalid_type")
    out = {}
    for key, value in raw.items():
        token = int(key) if isinstance(key, str) and key.strip().isdigit() else None
        if token is None or (vocab_size is not None and token >= vocab_size):
            raise ApiError(400, f"Invalid key in 'logit_bias': {key!r} is not a token id"
                                + (f" (the vocabulary has {vocab_size} tokens)." if vocab_size else "."),
                           param="logit_bias", code="invalid_value")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not -100 <= value <= 100:
            raise ApiError(400, f"Invalid value in 'logit_bias' for token {key}: {value!r}. It must be a number "
                                "between -100 and 100.", param="logit_bias", code="invalid_value")
        out[token] = float(value)
    return out


def response_format(body: dict, *, reasoning: bool) -> str | None:
    """The grammar a chat reply must follow for `response_format` (json_object: any JSON object;
    json_schema: a value that fits the schema), or None for plain text. A G1 model's reply begins
    by closing the prompt's empty thought (">"); any reply may begin with a space."""
    raw = body.get("response_format")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ApiError(400, f"Invalid type for 'response_format': expected an object, but got {type_name(raw)} "
                            "instead.", param="response_format", code="invalid_type")
    kind = raw.get("type")
    if kind in (None, "text"):
        return None
    if kind not in ("json_object", "json_schema"):
        raise ApiError(400, f"Invalid value for 'response_format.type': {kind!r}. Supported values are: 'text', "
                            "'json_object' and 'json_schema'.", param="response_format.type", code="invalid_value")
    schema = None
    if kind == "json_schema":
        spec = raw.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise ApiError(400, "'response_format.json_schema' must be an object with the schema in 'schema'.",
                           param="response_format.json_schema", code="invalid_value")
        schema = spec.get("schema") or {}
    from roost.engine import grammar

    if not grammar.available():
        raise ApiError(400, "Structured output needs the llguidance package (pip install llguidance).",
                       param="response_format", code="unsupported_parameter")
    try:
        return grammar.json_schema_grammar(schema, lead=">" + " " if reasoning else " ")
    except ValueError as e:
        raise ApiError(400, f"Invalid 'response_format': {e}.", param="response_format.json_schema",
                       code="invalid_value") from None


def unsupported(body: dict, *, chat: bool) -> None:
    """Refuse, with a clear 400, what this server cannot do rather than quietly ignoring it."""
    checks: list[tuple[str, Callable[[object], bool], str]] = []
    if not chat:
        checks += [
            ("best_of", lambda v: v not in (None, 1), "'best_of' must be 1 on this server."),
            ("suffix", lambda v: bool(v), "'suffix' (insertion) is not supported."),
        ]
        if body.get("echo") is True and body.get("logprobs") is not None:
            raise ApiError(400, "'logprobs' with 'echo' (the prompt's own logprobs) is not supported.",
                           param="logprobs", code="unsupported_parameter")
    for name, bad, message in checks:
        if bad(body.get(name)):
            raise ApiError(400, message, param=name, code="unsupported_parameter")


def lone_surrogate(body) -> str | None:
    """Where in a parsed JSON body a string holds a lone UTF-16 surrogate (JSON's "\\ud800"
    escapes parse into such strings, which no tokenizer can encode), as a param path
    ("messages[0].content"); None where there is none."""
    stack = [(body, "")]
    while stack:
        value, where = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return where or "body"
        elif isinstance(value, dict):
            stack += [(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()]
        elif isinstance(value, list):
            stack += [(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return None
