"""Tool (function) calling in the format RWKV-7 G1 models were trained on.

The tools are listed in the System turn as a JSON array (name, description, arguments) followed by
an instruction; a call is the reply ```json {"name": ..., "arguments": {...}} ```; a tool's result
comes back as a User turn "Function output:\\n...". (RWKV-LM, RWKV-v7/RWKV7-G1x-templates.txt.)

`tool_choice`: "none" (tools are not shown, no call is read), "auto" (the model may answer or
call; a reply in the call form is read as a call), "required" and a named tool (the reply is begun
in the call form, for a named tool with its name, and constrained by a grammar to a call of one of
the tools with arguments that fit its parameters' schema: :meth:`Tools.grammar`). With "auto" the
model writes freely: a reply that does not parse as a call is returned as text.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from roost.server.fields import ApiError

FORCE = "Return only a JSON function call."
OFFER = "To use a tool, return only a JSON function call; otherwise answer normally."
FENCE = "```json\n"


@dataclass(frozen=True)
class Tools:
    specs: tuple[dict, ...]  # {"name", "description", "parameters"}
    choice: str  # "auto" | "required" | "none" | a tool's name

    @property
    def names(self) -> set[str]:
        return {t["name"] for t in self.specs}

    @property
    def active(self) -> bool:
        return bool(self.specs) and self.choice != "none"

    def system_text(self) -> str:
        """What the System turn says of the tools (nothing when none are offered)."""
        if not self.active:
            return ""
        listed = [{"name": t["name"], "description": t["description"],
                   "arguments": (t["parameters"] or {}).get("properties", {})} for t in self.specs]
        lines = ",\n".join(json.dumps(t, ensure_ascii=False, separators=(",", ":")) for t in listed)
        return f"Tools:\n[\n{lines}\n]\n{OFFER if self.choice == 'auto' else FORCE}"

    def reply_lead(self) -> str:
        """The text the reply is begun with: the call form when a call is required."""
        if not self.active or self.choice == "auto":
            return ""
        if self.choice == "required":
            return FENCE
        return FENCE + '{"name":' + json.dumps(self.choice, ensure_ascii=False) + ',"arguments":'


    def grammar(self) -> str | None:
        """The grammar of the rest of a required call, after :meth:`reply_lead` (None for "auto"
        and "none"): one call object ({"name": one of the tools, "arguments": fitting its
        parameters}) for "required", the named tool's arguments for a named one; then the fence's
        end. ApiError (400) when a tool's parameters are not a schema the grammar engine takes."""
        if not self.active or self.choice == "auto":
            return None
        from roost.engine import grammar

        if not grammar.available():
            return None  # the call is begun in the call form and read as before, unconstrained
        if self.choice == "required":
            calls = [{"type": "object", "properties": {"name": {"const": t["name"]},
                                                       "arguments": t["parameters"] or {"type": "object"}},
                      "required": ["name", "arguments"], "additionalProperties": False} for t in self.specs]
            schema, after = (calls[0] if len(calls) == 1 else {"anyOf": calls}), "\n```"
        else:
            spec = next(t for t in self.specs if t["name"] == self.choice)
            schema, after = spec["parameters"] or {"type": "object"}, "}\n```"
        try:
            return grammar.json_schema_grammar(schema, after=after)
        except ValueError as e:
            raise ApiError(400, f"A tool's parameters cannot be used: {e}.", param="tools",
                           code="invalid_value") from None


def parse(body: dict) -> Tools | None:
    """The request's tools and tool_choice (also the older functions / function_call), checked."""
    raw = body.get("tools")
    legacy = body.get("functions")
    if raw is None and legacy is None:
        if body.get("tool_choice") not in (None, "none", "auto"):
            raise ApiError(400, "'tool_choice' needs 'tools'.", param="tool_choice", code="invalid_value")
        return None
    specs = []
    if raw is not None:
        if not isinstance(raw, list):
            raise ApiError(400, "'tools' must be an array of tools.", param="tools", code="invalid_type")
        for i, tool in enumerate(raw):
            if not isinstance(tool, dict) or tool.get("type", "function") != "function" \
                    or not isinstance(tool.get("function"), dict):
                raise ApiError(400, f"'tools[{i}]' must be {{\"type\": \"function\", \"function\": {{...}}}}.",
                               param=f"tools[{i}]", code="invalid_value")
            specs.append(_spec(tool["function"], f"tools[{i}].function"))
    if legacy is not None:
        if not isinstance(legacy, list):
            raise ApiError(400, "'functions' must be an array.", param="functions", code="invalid_type")
        specs += [_spec(f, f"functions[{i}]") for i, f in enumerate(legacy)]
    choice = body.get("tool_choice", body.get("function_call", "auto"))
    if choice is None:
        choice = "auto"
    if isinstance(choice, dict):
        fn = choice.get("function") if "function" in choice else choice
        name = fn.get("name") if isinstance(fn, dict) else None
        if name not in {s["name"] for s in specs}:
            raise ApiError(400, f"'tool_choice' names a tool that is not in 'tools': {name!r}.",
                           param="tool_choice", code="invalid_value")
        choice = name
    elif choice not in ("auto", "none", "required"):
        raise ApiError(400, "'tool_choice' must be 'none', 'auto', 'required' or a named function.",
                       param="tool_choice", code="invalid_value")
    if choice == "required" and not specs:
        raise ApiError(400, "'tool_choice' is 'required' but no tools were given.", param="tool_choice",
                       code="invalid_value")
    return Tools(tuple(specs), choice)


def _spec(fn, where: str) -> dict:
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"].strip():
        raise ApiError(400, f"'{where}.name' is missing.", param=f"{where}.name", code="missing_required_parameter")
    params = fn.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise ApiError(400, f"'{where}.parameters' must be a JSON schema object.", param=f"{where}.parameters",
                       code="invalid_type")
    description = fn.get("description") or ""
    return {"name": fn["name"].strip(), "description": str(description), "parameters": params}


def call_text(name: str, arguments) -> str:
    """An earlier call of the assistant, as the model writes one."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            pass
    return FENCE + json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False, separators=(",", ":")) \
        + "\n```"


def read_calls(text: str, tools: Tools) -> list[dict] | None:
    """The tool calls in a reply written in the call form (the OpenAI `tool_calls` list), or None
    when the reply is not one (it is then text)."""
    body = text.strip()
    if body.startswith("<think"):  # a reasoning model's thought before the call
        end = body.find("</think>")
        body = body[end + len("</think>"):].strip() if end >= 0 else body
    if body.startswith("```"):
        body = body[3:]
        if body.lower().startswith("json"):
            body = body[4:]
        close = body.find("```")
        body = body[:close] if close >= 0 else body
    body = body.strip()
    if not body.startswith(("{", "[")):
        return None
    try:
        value, _end = json.JSONDecoder().raw_decode(body)
    except ValueError:
        return None
    items = value if isinstance(value, list) else [value]
    calls = []
    for item in items:
        if not isinstance(item, dict) or item.get("name") not in tools.names:
            return None
        args = item.get("arguments", item.get("parameters", {}))
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except ValueError:
                return None
        if not isinstance(args, dict):
            return None
        calls.append({"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                      "function": {"name": item["name"], "arguments": json.dumps(args, ensure_ascii=False)}})
    return calls or None


def might_be_a_call(text: str) -> bool:
    """While a reply streams: could what has come so far still be the start of a call?"""
    body = text.lstrip()
    if not body:
        return True
    return body.startswith(("{", "[", "<think", "```json")) or "```json".startswith(body[:7])
