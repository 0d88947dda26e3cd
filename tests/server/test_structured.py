"""response_format json_object / json_schema by constrained decoding, through the official client.
A random-weight model writes gibberish, but within the grammar: its replies parse and validate."""

from __future__ import annotations

import json
import shutil

import jsonschema
import openai
import pydantic
import pytest

from roost.core.runtime import Runtime
from roost.server.run import ApiServer

ARCH = "v7.0"
HI = [{"role": "user", "content": "Describe a pet as JSON."}]
PET = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "kind": {"enum": ["cat", "dog", "parrot"]},
        "age": {"type": "integer", "minimum": 0, "maximum": 30},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3},
        "indoor": {"type": "boolean"},
    },
    "required": ["name", "kind", "age", "tags", "indoor"],
    "additionalProperties": False,
}


def schema_format(schema, name="pet"):
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def test_json_schema_replies_parse_and_validate(client):
    for seed in range(4):
        r = client.chat.completions.create(model="any", messages=HI, seed=seed, max_tokens=200, temperature=1.2,
                                           response_format=schema_format(PET))
        choice = r.choices[0]
        assert choice.finish_reason == "stop", choice
        value = json.loads(choice.message.content)
        jsonschema.validate(value, PET)
        assert choice.message.content == json.dumps(value, ensure_ascii=False, separators=(",", ":"))  # compact


def test_json_object_replies_are_objects_and_streams_agree(client):
    kw = dict(model="any", messages=HI, seed=3, max_tokens=300, response_format={"type": "json_object"})
    r = client.chat.completions.create(**kw)
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**kw, stream=True)
                       if c.choices)
    assert streamed == r.choices[0].message.content
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    else:  # ran out of tokens inside the value: said so, and what was written is a prefix of an object
        assert r.choices[0].finish_reason == "length" and r.choices[0].message.content.startswith("{")


def test_running_out_of_tokens_inside_the_value_says_length(client):
    r = client.chat.completions.create(model="any", messages=HI, max_tokens=3, response_format=schema_format(PET))
    assert r.choices[0].finish_reason == "length"
    with pytest.raises(ValueError):
        json.loads(r.choices[0].message.content)


def test_the_sdk_parse_helper_gets_a_validated_object(client):
    class Pet(pydantic.BaseModel):
        kind: str = pydantic.Field(json_schema_extra={"enum": ["cat", "dog"]})
        legs: int = pydantic.Field(ge=0, le=8)
        good: bool

    r = client.chat.completions.parse(model="any", messages=HI, response_format=Pet, max_tokens=100, seed=1)
    pet = r.choices[0].message.parsed
    assert isinstance(pet, Pet) and pet.kind in ("cat", "dog") and 0 <= pet.legs <= 8


def test_bad_response_formats_are_refused(client):
    cases = [
        ({"type": "xml"}, "response_format.type"),
        ({"type": "json_schema"}, "response_format.json_schema"),
        (schema_format({"type": "objectx"}), "response_format.json_schema"),
        ("json", "response_format"),
    ]
    for fmt, param in cases:
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="any", messages=HI, response_format=fmt, max_tokens=5)
        assert e.value.body["param"] == param, (fmt, e.value.body)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="any", messages=HI, response_format={"type": "json_object"},
                                       tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])
    assert e.value.body["param"] == "response_format"


def test_a_g1_model_closes_its_empty_thought_then_writes_the_value(make_checkpoint, tmp_path):
    path = tmp_path / "rwkv7-g1-test.pth"
    shutil.copy(make_checkpoint("v7.0"), path)
    rt = Runtime()
    assert rt.load(path, "cpu fp32").reasoning
    srv = ApiServer(rt, port=0).start()
    try:
        client = openai.OpenAI(base_url=srv.base_url, api_key="x", max_retries=0, timeout=60)
        for seed in range(3):
            r = client.chat.completions.create(model="any", messages=HI, seed=seed, max_tokens=200,
                                               reasoning_effort="high", response_format=schema_format(PET))
            message = r.choices[0].message
            jsonschema.validate(json.loads(message.content), PET)
            assert not getattr(message, "reasoning_content", None)  # no thought before the value
    finally:
        srv.stop()
        rt.unload()
