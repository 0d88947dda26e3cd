"""Tool calling in the RWKV-7 G1 format, through the official openai client.

The model's reply is scripted (its generation replaced) so that each test knows what the model
"wrote"; the prompt the model was given is captured and checked against the G1 template."""

from __future__ import annotations

import json

import openai
import pytest

from roost.core.runtime import Runtime
from roost.server import tools
from roost.server.fields import ApiError
from roost.server.run import ApiServer

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CLOCK = {"type": "function", "function": {"name": "get_time", "description": "The time now", "parameters": {}}}


ARCH = "v7.0"  # the module's model (tests/server/conftest.py)


@pytest.fixture
def scripted(monkeypatch):
    """The model 'writes' `reply["text"]` (in pieces); `reply["prompt"]` is the prompt it was given."""
    from roost.engine.generate import GenerationResult
    from roost.server import jobs

    reply = {"text": "", "prompt": ""}

    class Scripted:  # stands in for roost.engine.generate.Decoder: the text comes from the test
        def __init__(self, *_args):
            self.result = GenerationResult()
            text = reply["text"]
            self.pieces = [text[i:i + 7] for i in range(0, len(text), 7)]

        def step(self, _logits):
            if not self.pieces:
                self.result.finish_reason = "stop"
                return "", None
            piece = self.pieces.pop(0)
            self.result.text += piece
            self.result.tokens.append(1)
            return piece, 1

        def cancel(self):
            self.result.finish_reason = "cancelled"
            return ""

    real_admit = jobs.Worker._admit

    def admit(self, model):
        for job in self._reading_new:
            reply["prompt"] = model.tokenizer.decode(list(job.prompt(model, self.runtime.info)))
        return real_admit(self, model)

    monkeypatch.setattr(jobs, "_decoder", Scripted)
    monkeypatch.setattr(jobs.Worker, "_admit", admit)
    return reply


def test_a_call_in_the_g1_form_comes_back_as_tool_calls(client, scripted, runtime):
    scripted["text"] = ' ```json\n{"name":"get_weather","arguments":{"city":"Hangzhou"}}\n```'
    r = client.chat.completions.create(model="any", tools=[WEATHER, CLOCK],
                                       messages=[{"role": "user", "content": "Weather in Hangzhou?"}])
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Hangzhou"}
    prompt = scripted["prompt"]  # the tools listed in the System turn, as the template shows
    assert prompt.startswith("System: Tools:\n[\n{\"name\":\"get_weather\"")
    assert '"arguments":{"city":{"type":"string"}}' in prompt and tools.OFFER in prompt
    assert prompt.endswith("User: Weather in Hangzhou?\n\nAssistant:")

    # the result goes back as a "Function output:" user turn, the call as the assistant wrote it
    scripted["text"] = " It is sunny in Hangzhou."
    r = client.chat.completions.create(model="any", tools=[WEATHER], messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Hangzhou?"},
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"sky":"sunny"}'}])
    assert r.choices[0].finish_reason == "stop" and r.choices[0].message.content == "It is sunny in Hangzhou."
    prompt = scripted["prompt"]
    assert prompt.startswith("System: Be brief.\nTools:")
    assert 'Assistant: ```json\n{"name":"get_weather","arguments":{"city":"Hangzhou"}}\n```' in prompt
    assert prompt.endswith('User: Function output:\n{"sky":"sunny"}\n\nAssistant:')


def test_auto_lets_the_model_answer_and_none_hides_the_tools(client, scripted):
    scripted["text"] = " Hello! How can I help?"
    r = client.chat.completions.create(model="any", tools=[WEATHER], messages=[{"role": "user", "content": "Hi"}])
    assert r.choices[0].finish_reason == "stop" and r.choices[0].message.content == "Hello! How can I help?"
    assert not r.choices[0].message.tool_calls
    scripted["text"] = ' {"name":"get_weather","arguments":{"city":"Paris"}}'
    r = client.chat.completions.create(model="any", tools=[WEATHER], tool_choice="none",
                                       messages=[{"role": "user", "content": "Hi"}])
    assert r.choices[0].finish_reason == "stop" and not r.choices[0].message.tool_calls
    assert "Tools:" not in scripted["prompt"]


def test_required_and_named_begin_the_reply_in_the_call_form(client, scripted):
    scripted["text"] = '{"name":"get_time","arguments":{}}\n```'
    r = client.chat.completions.create(model="any", tools=[WEATHER, CLOCK], tool_choice="required",
                                       messages=[{"role": "user", "content": "What time is it?"}])
    assert r.choices[0].message.tool_calls[0].function.name == "get_time"
    assert scripted["prompt"].endswith("Assistant: ```json\n") and tools.FORCE in scripted["prompt"]
    scripted["text"] = '{"city":"Oslo"}}\n```'
    r = client.chat.completions.create(model="any", tools=[WEATHER, CLOCK],
                                       tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                       messages=[{"role": "user", "content": "Oslo?"}])
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Oslo"}
    assert scripted["prompt"].endswith('Assistant: ```json\n{"name":"get_weather","arguments":')


BOOKING = {"type": "function", "function": {
    "name": "book_table", "description": "Book a table",
    "parameters": {"type": "object", "properties": {
        "people": {"type": "integer", "minimum": 1, "maximum": 12},
        "time": {"enum": ["18:00", "19:00", "20:00"]},
        "note": {"type": "string", "maxLength": 10}},
        "required": ["people", "time"], "additionalProperties": False}}}


def test_a_required_call_is_constrained_to_the_tools_schemas(client):
    """The real (random-weight) model, not a script: a required or named call always parses, names
    one of the tools and has arguments that validate against that tool's parameters."""
    import jsonschema

    schemas = {t["function"]["name"]: t["function"]["parameters"] or {"type": "object"}
               for t in (WEATHER, BOOKING, CLOCK)}
    for choice in ("required", {"type": "function", "function": {"name": "book_table"}}):
        for seed in range(3):
            r = client.chat.completions.create(model="any", tools=[WEATHER, BOOKING, CLOCK], tool_choice=choice,
                                               messages=[{"role": "user", "content": "Dinner for 4 at 7"}],
                                               seed=seed, max_tokens=120, temperature=1.3)
            out = r.choices[0]
            assert out.finish_reason == "tool_calls", out
            call = out.message.tool_calls[0].function
            if isinstance(choice, dict):
                assert call.name == "book_table"
            jsonschema.validate(json.loads(call.arguments), schemas[call.name])


def test_a_streamed_call_arrives_as_tool_call_deltas(client, scripted):
    scripted["text"] = ' ```json\n{"name":"get_weather","arguments":{"city":"Rome"}}\n```'
    stream = client.chat.completions.create(model="any", tools=[WEATHER], stream=True,
                                            messages=[{"role": "user", "content": "Rome?"}])
    name, args, finish, content = "", "", None, ""
    for ev in stream:
        if not ev.choices:
            continue
        delta = ev.choices[0].delta
        content += delta.content or ""
        for tc in delta.tool_calls or []:
            name += tc.function.name or "" if tc.function else ""
            args += tc.function.arguments or "" if tc.function else ""
        finish = ev.choices[0].finish_reason or finish
    assert finish == "tool_calls" and name == "get_weather" and json.loads(args) == {"city": "Rome"}
    assert content == ""
    scripted["text"] = " Plain words, streamed as they come."
    stream = client.chat.completions.create(model="any", tools=[WEATHER], stream=True,
                                            messages=[{"role": "user", "content": "Hi"}])
    text = "".join(ev.choices[0].delta.content or "" for ev in stream if ev.choices)
    assert text == "Plain words, streamed as they come."


def test_bad_tool_requests_are_refused_plainly(client):
    cases = [
        ({"tools": "get_weather"}, "tools"),
        ({"tools": [{"type": "retrieval"}]}, "tools[0]"),
        ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools[0].function.name"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
    ]
    for extra, param in cases:
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="any", messages=[{"role": "user", "content": "Hi"}], **extra)
        assert e.value.body["param"] == param, (extra, e.value.body)


def test_reading_calls():
    offered = tools.Tools(({"name": "f", "description": "", "parameters": None},), "auto")
    for text in ('```json\n{"name":"f","arguments":{"x":1}}\n```', ' {"name": "f", "arguments": {"x": 1}}',
                 '<think>\nuse f\n</think>\n```json\n{"name":"f","arguments":"{\\"x\\": 1}"}```',
                 '[{"name":"f","arguments":{"x":1}}]'):
        calls = tools.read_calls(text, offered)
        assert calls and calls[0]["function"]["name"] == "f" and json.loads(calls[0]["function"]["arguments"]) == {"x": 1}
    for text in ("Sure, here it is.", '{"name":"g","arguments":{}}', '```json\n{"name":"f","arguments":[1]}```',
                 '```json\n{"name":"f", "arg'):
        assert tools.read_calls(text, offered) is None, text
    with pytest.raises(ApiError):
        tools.parse({"tools": [WEATHER], "tool_choice": {"function": {"name": "x"}}})
    assert tools.parse({"functions": [WEATHER["function"]], "function_call": {"name": "get_weather"}}).choice == \
        "get_weather"


# --- G1 thinking: reasoning_effort in, reasoning_content out ------------------------------------------
@pytest.fixture(scope="module")
def g1_client(make_checkpoint, tmp_path_factory):
    import shutil

    path = tmp_path_factory.mktemp("g1") / "rwkv7-g1-test.pth"
    shutil.copy(make_checkpoint("v7.0"), path)
    rt = Runtime()
    assert rt.load(path, "cpu fp32").reasoning
    srv = ApiServer(rt, port=0).start()
    yield openai.OpenAI(base_url=srv.base_url, api_key="x", max_retries=0, timeout=60)
    srv.stop()
    rt.unload()


def test_reasoning_effort_asks_g1_to_think_and_the_thought_comes_apart(g1_client, scripted):
    scripted["text"] = ">\nTwo and two make four.\n</think>\nIt is 4."
    r = g1_client.chat.completions.create(model="any", reasoning_effort="high",
                                          messages=[{"role": "user", "content": "What is 2+2?"}])
    msg = r.choices[0].message
    assert msg.content == "It is 4." and msg.reasoning_content == "Two and two make four."
    assert scripted["prompt"].endswith("User: What is 2+2? (think a lot)\n\nAssistant: <think")
    for effort, hint in (("low", " (think a bit)"), ("medium", " (think)")):
        g1_client.chat.completions.create(model="any", reasoning_effort=effort,
                                          messages=[{"role": "user", "content": "Q"}])
        assert scripted["prompt"].endswith(f"User: Q{hint}\n\nAssistant: <think")

    stream = g1_client.chat.completions.create(model="any", reasoning_effort="medium", stream=True,
                                               messages=[{"role": "user", "content": "What is 2+2?"}])
    thought, answer = "", ""
    for ev in stream:
        if ev.choices:
            thought += getattr(ev.choices[0].delta, "reasoning_content", None) or ""
            answer += ev.choices[0].delta.content or ""
    assert thought == "Two and two make four.\n" and answer == "It is 4."

    scripted["text"] = "> Four."  # no effort asked: the template's fake think, then the answer
    for effort in (None, "none"):
        extra = {} if effort is None else {"reasoning_effort": effort}
        r = g1_client.chat.completions.create(model="any", messages=[{"role": "user", "content": "2+2?"}], **extra)
        assert r.choices[0].message.content == "Four." and not getattr(r.choices[0].message, "reasoning_content", None)
        assert scripted["prompt"].endswith("User: 2+2?\n\nAssistant: <think>\n</think")
    with pytest.raises(openai.BadRequestError) as e:
        g1_client.chat.completions.create(model="any", reasoning_effort="extreme", messages=[{"role": "user", "content": "Q"}])
    assert e.value.body["param"] == "reasoning_effort"


def test_the_thought_splitter_holds_back_a_split_end_mark():
    from roost.server.stream import ThoughtSplitter

    s = ThoughtSplitter(thinking=True)
    got = []
    for piece in [">\nfirst", " idea</th", "ink>\nthe ans", "wer"]:
        got += s.feed(piece)
    got += s.flush()
    joined = {k: "".join(t for kk, t in got if kk == k) for k in ("reasoning", "content")}
    assert joined == {"reasoning": "\nfirst idea", "content": "\nthe answer"}
