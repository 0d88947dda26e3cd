"""Tokenizers against the reference ones, and streaming decode that never breaks a character."""

from __future__ import annotations

import hashlib
import random

import pytest

from roost.engine.errors import TokenizerError
from roost.engine.tokenizer import (NeoXTokenizer, StreamDecoder, WorldTokenizer, tokenizer_for_vocab, world_tokenizer,
                                    world_vocab_path)

SAMPLES = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "你好，世界！RWKV 是一种循环神经网络。\n\n用户：今天天气怎么样？",
    "こんにちは、世界。カタカナとひらがな。",
    "def f(x):\n\treturn x ** 2  # comment\r\n\n    indented = {'a': [1, 2, 3]}\n",
    "emoji 🎉🧑‍💻👍🏽 flags 🇨🇳🇺🇸 and math ∑∫√",
    "          long run of spaces and\t\t\ttabs\n\n\n\n",
    "User: hi\n\nAssistant: Hello! How can I help you today?\n\n",
]


def random_unicode(n: int, seed: int) -> str:
    rnd = random.Random(seed)
    ranges = [(32, 126), (0x4E00, 0x9FFF), (0x3040, 0x30FF), (0x1F300, 0x1F64F), (0xA0, 0x24F), (10, 10)]
    return "".join(chr(rnd.randint(*rnd.choice(ranges))) for _ in range(n))


# sha256 of the World vocabulary as published in BlinkDL/ChatRWKV (LF line endings); the copy in the
# rwkv package has CRLF line endings and the same content
WORLD_VOCAB_SHA256 = "e6dee3d4e31b4d5c40ac99508ac6c701ceef4bed681bf2167ce9a908552bca89"


@pytest.fixture(scope="module")
def reference_world(world_vocab_file):
    from rwkv.rwkv_tokenizer import TRIE_TOKENIZER  # the reference, in tests only

    return TRIE_TOKENIZER(str(world_vocab_file))


@pytest.fixture(scope="module")
def neox(neox_tokenizer_file):
    return NeoXTokenizer(neox_tokenizer_file)


@pytest.mark.parametrize("text", SAMPLES + [random_unicode(3000, s) for s in range(3)])
def test_world_ids_match_the_reference_and_round_trip(reference_world, text):
    tok = world_tokenizer()
    ids = tok.encode(text)
    assert ids == reference_world.encode(text)
    assert tok.decode(ids) == text


def test_the_product_vocab_is_the_published_one(tmp_path):
    product_file = world_vocab_path()
    data = product_file.read_bytes().replace(b"\r\n", b"\n")
    assert hashlib.sha256(data).hexdigest() == WORLD_VOCAB_SHA256
    # line endings do not change what is read
    (tmp_path / "lf.txt").write_bytes(data)
    product = world_tokenizer()
    assert WorldTokenizer(tmp_path / "lf.txt").id_to_bytes == product.id_to_bytes
    assert product.vocab_size == 65536 and product.eos_token == 0


@pytest.mark.parametrize("text", SAMPLES + [random_unicode(2000, 9)])
def test_neox_matches_the_tokenizers_library(neox, neox_tokenizer_file, text):
    from tokenizers import Tokenizer

    ref = Tokenizer.from_file(str(neox_tokenizer_file))
    ids = neox.encode(text)
    assert ids == ref.encode(text).ids
    assert neox.decode(ids) == ref.decode(ids) == text
    assert neox.vocab_size == 50277 and neox.eos_token == 0


@pytest.mark.parametrize("which", ["world", "neox"])
def test_streaming_never_emits_half_a_character(neox, which):
    tok = world_tokenizer() if which == "world" else neox
    text = "中文和表情：🎉🧑‍💻👍🏽 混在一起 " * 5 + random_unicode(500, 3)
    ids = tok.encode(text)
    # the test only means something if some character really spans tokens
    assert any("\ufffd" in tok.decode([t]) for t in ids)
    dec = StreamDecoder(tok)
    pieces = [dec.feed(t) for t in ids]
    pieces.append(dec.flush())
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == text


def test_invalid_bytes_are_replaced_not_held_forever():
    tok = world_tokenizer()
    lone = next(i for i in range(1, 300) if tok.decode_bytes([i]) == b"\xe4")  # a UTF-8 lead byte
    dec = StreamDecoder(tok)
    out = dec.feed(lone) + dec.feed(tok.encode("A")[0]) + dec.flush()
    assert out == "\ufffdA"


def test_tokenizer_choice_by_vocabulary(tmp_path, neox_tokenizer_file):
    assert isinstance(tokenizer_for_vocab(65536), WorldTokenizer)
    (tmp_path / "20B_tokenizer.json").write_bytes(neox_tokenizer_file.read_bytes())
    assert isinstance(tokenizer_for_vocab(50277, tmp_path / "raven.pth"), NeoXTokenizer)


def test_missing_or_unknown_tokenizers_are_explained(tmp_path):
    with pytest.raises(TokenizerError, match="20B_tokenizer.json"):
        tokenizer_for_vocab(50277, tmp_path / "raven.pth")
    with pytest.raises(TokenizerError, match="12345 tokens"):
        tokenizer_for_vocab(12345)
    (tmp_path / "bad.json").write_text("not json")
    with pytest.raises(TokenizerError, match="bad.json"):
        NeoXTokenizer(tmp_path / "bad.json")


def test_a_load_reads_the_world_vocabulary_beside_the_weights(make_checkpoint, monkeypatch):
    """The World vocabulary takes ~0.3 s of Python to read: a load reads it on a thread while the
    weights load (a fifth of a second load of a 1.5B int4 model from the weight cache); a missing
    vocabulary still fails before any weight is read."""
    import threading

    import roost.engine.tokenizer as et
    from roost.engine import load_model

    path = make_checkpoint("v6.0", n_layer=1, n_embd=64)
    monkeypatch.setattr(et, "_WORLD", None)
    readers = []
    real_init = et.WorldTokenizer.__init__

    def init(self, vocab_path):
        readers.append(threading.current_thread().name)
        real_init(self, vocab_path)

    monkeypatch.setattr(et.WorldTokenizer, "__init__", init)
    model = load_model(path, "cpu fp32")
    assert readers == ["roost-vocab"]
    assert model.tokenizer.decode(model.tokenizer.encode(SAMPLES[1])) == SAMPLES[1]
    assert load_model(path, "cpu fp32").tokenizer is model.tokenizer and readers == ["roost-vocab"]  # once

    def missing():
        raise TokenizerError("The RWKV World tokenizer vocabulary is missing")

    monkeypatch.setattr(et, "_WORLD", None)
    monkeypatch.setattr(et, "world_vocab_path", missing)
    with pytest.raises(TokenizerError, match="missing"):
        load_model(path, "cpu fp32", progress=lambda f: pytest.fail(f"the load went on ({f:.0%})"))
