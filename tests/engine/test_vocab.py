"""Models of other vocabularies: byte-level (256), any tokenizer.json beside the model, and a plain
error when neither applies."""

from __future__ import annotations

import random

import pytest
import torch

from roost.engine import load_model
from roost.engine.errors import TokenizerError
from roost.engine.generate import generate
from roost.engine.sampling import SamplingParams
from roost.engine.synthetic import save_checkpoint
from roost.engine.tokenizer import (ByteTokenizer, HFTokenizer, StreamDecoder, WorldTokenizer, tokenizer_for_vocab,
                                    tokenizer_files)
from tests.conftest import run_reference

GREEDY = SamplingParams(temperature=0, presence_penalty=0, frequency_penalty=0)
TEXTS = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "你好，世界！RWKV 是一种循环神经网络。\n\n用户：今天天气怎么样？",
    "emoji 🎉🧑‍💻👍🏽 flags 🇨🇳🇺🇸 and math ∑∫√, tabs\t\tand\r\nnewlines",
]
TOL = 1e-3  # max|a-b| / max|b| in fp32, as tests/engine/test_parity.py


def random_unicode(n: int, seed: int) -> str:
    rnd = random.Random(seed)
    ranges = [(32, 126), (0x4E00, 0x9FFF), (0x3040, 0x30FF), (0x1F300, 0x1F64F), (0xA0, 0x24F), (10, 10)]
    return "".join(chr(rnd.randint(*rnd.choice(ranges))) for _ in range(n))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def streamed(tok, ids) -> list[str]:
    dec = StreamDecoder(tok)
    return [dec.feed(t) for t in ids] + [dec.flush()]


# --- byte-level models ------------------------------------------------------------------------------
BYTE_TOKENS = list("Hi 你好🎉\n".encode()) + [0, 3, 255, 128]
SPLIT = 7


@pytest.fixture(scope="module", params=["v7.0", "v5.2"])
def byte_case(request, make_checkpoint, tmp_path_factory):
    arch = request.param
    path = make_checkpoint(arch, n_layer=2, n_embd=128, vocab=256)
    ref = run_reference(path, tmp_path_factory.mktemp("ref") / "ref.pt", BYTE_TOKENS, SPLIT, v7=arch == "v7.0")
    return path, ref


def test_a_byte_level_model_loads_and_matches_the_reference(byte_case):
    path, ref = byte_case
    model = load_model(path, "cpu fp32")
    assert isinstance(model.tokenizer, ByteTokenizer) and model.vocab_size == 256
    logits, _ = model.forward_all(BYTE_TOKENS)
    assert logits.shape == ref["seq"].shape == (len(BYTE_TOKENS), 256)
    assert rel_err(logits, ref["seq"]) <= TOL
    _, mid = model.forward(BYTE_TOKENS[:SPLIT])
    last, _ = model.forward(BYTE_TOKENS[SPLIT:], mid)
    assert rel_err(last, ref["resume"]) <= TOL
    # text goes in through the byte tokenizer: the same ids as the bytes
    text = "Hi 你好"
    by_text, _ = model.forward(model.tokenizer.encode(text))
    assert rel_err(by_text, ref["seq"][len(text.encode()) - 1]) <= TOL


def test_a_byte_level_model_generates_text(make_checkpoint):
    model = load_model(make_checkpoint("v7.0", n_layer=2, n_embd=128, vocab=256), "cpu fp32")
    r = generate(model, "Once upon a time", GREEDY.replace(max_tokens=12, banned_tokens=(0,)))
    assert r.finish_reason == "length" and len(r.tokens) == 12
    assert all(0 < t < 256 for t in r.tokens)
    assert r.text == model.tokenizer.decode(r.tokens) and r.text


@pytest.mark.parametrize("text", TEXTS + [random_unicode(2000, 5)])
def test_text_round_trips_through_the_byte_tokenizer(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert all(0 <= t < 256 for t in ids)
    if not text.isascii():  # then characters span tokens, which the stream must hold back
        assert any("\ufffd" in tok.decode([t]) for t in ids)
    assert tok.decode(ids) == text and tok.decode_bytes(ids) == text.encode("utf-8")
    pieces = streamed(tok, ids)
    assert all("\ufffd" not in p for p in pieces) and "".join(pieces) == text


def test_byte_tokenizer_interface():
    tok = ByteTokenizer()
    assert tok.vocab_size == 256 and tok.eos_token == 0
    assert tok.tokens_bytes == [bytes([i]) for i in range(256)]
    assert tok.token_bytes(0xE4) == b"\xe4" and tok.token_bytes(256) == b"" and tok.token_bytes(-1) == b""
    assert tok.decode([0xE4]) == "\ufffd"  # half a character alone is replaced, never raised
    assert isinstance(tokenizer_for_vocab(256), ByteTokenizer)


# --- a tokenizer.json beside the model ---------------------------------------------------------------
CORPUS = [
    "Once upon a time there was a little model that learned to read.",
    "The quick brown fox jumps over the lazy dog, again and again.",
    "RWKV is an RNN with transformer-level performance.",
    "你好，世界！今天天气很好。我们去公园散步吧。",
    "def main():\n    print('hello world')\n    return 0\n",
]


def byte_bpe(vocab_size: int = 400, added: tuple[str, ...] = ()):
    """A small byte-level BPE (GPT-2 style) trained on CORPUS, with "<|endoftext|>" as token 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 30, trainer)
    if added:
        tok.add_tokens(list(added))
    return tok


@pytest.fixture(scope="module")
def bpe_model(tmp_path_factory):
    """A random RWKV-7 checkpoint whose vocabulary is a byte-level BPE's, padded to a multiple of 64
    as training code pads it, with the tokenizer.json beside it."""
    folder = tmp_path_factory.mktemp("bpe")
    lib = byte_bpe(added=("<|user|>",))
    lib.save(str(folder / "tokenizer.json"))
    vocab = -(-lib.get_vocab_size() // 64) * 64
    assert vocab not in (256, 50277, 50304) and not 65529 <= vocab <= 65536
    path = save_checkpoint(folder / "tiny-bpe.pth", "v7.0", n_layer=2, n_embd=64, vocab=vocab)
    return path, lib


@pytest.mark.parametrize("text", TEXTS + CORPUS[3:] + [random_unicode(1500, 7)])
def test_a_model_with_its_tokenizer_json_loads_and_round_trips(bpe_model, text):
    path, lib = bpe_model
    model = load_model(path, "cpu fp32")
    tok = model.tokenizer
    assert isinstance(tok, HFTokenizer) and tok.path.name == "tokenizer.json"
    # the model's ids past the file's tokens (padding rows) are part of the vocabulary, as no text
    assert lib.get_vocab_size() < model.vocab_size == tok.vocab_size == len(tok.tokens_bytes)
    assert tok.tokens_bytes[-1] == b"" and HFTokenizer(tok.path).vocab_size == lib.get_vocab_size()
    ids = tok.encode(text)
    assert ids == lib.encode(text, add_special_tokens=False).ids
    assert tok.decode(ids) == lib.decode(ids) == text
    assert b"".join(tok.tokens_bytes[i] for i in ids) == text.encode("utf-8")
    pieces = streamed(tok, ids)
    assert all("\ufffd" not in p for p in pieces) and "".join(pieces) == text
    logits, _ = model.forward(ids)
    assert logits.shape == (model.vocab_size,) and torch.isfinite(logits).all()


def test_token_bytes_of_a_tokenizer_json(bpe_model):
    path, lib = bpe_model
    tok = HFTokenizer(path.with_name("tokenizer.json"))
    assert tok.vocab_size == lib.get_vocab_size()
    eot, user = lib.token_to_id("<|endoftext|>"), lib.token_to_id("<|user|>")
    assert tok.eos_token == eot == 0
    assert tok.token_bytes(eot) == b"<|endoftext|>" and tok.token_bytes(user) == b"<|user|>"
    # byte-level pieces stand for bytes: "Ġ" is a space, and every single byte has its token
    assert tok.token_bytes(lib.token_to_id("Ġ")) == b" "
    singles = {tok.token_bytes(i) for i in range(tok.vocab_size) if len(tok.token_bytes(i)) == 1}
    assert singles == {bytes([b]) for b in range(256)}
    assert len(tok.tokens_bytes) == tok.vocab_size and tok.token_bytes(tok.vocab_size + 5) == b""
    ids = tok.encode("hi<|user|>there")
    assert user in ids and tok.decode(ids) == "hi<|user|>there"
    # every piece that is whole UTF-8 decodes as the library decodes it alone
    checked = 0
    for i in range(tok.vocab_size):
        try:
            text = tok.token_bytes(i).decode("utf-8")
        except UnicodeDecodeError:
            continue
        if i != eot:  # the library leaves special tokens out
            assert text == lib.decode([i]), i
            checked += 1
    assert checked > 200


def test_generation_runs_on_a_tokenizer_json_model(bpe_model):
    path, _lib = bpe_model
    model = load_model(path, "cpu fp32")
    tok = model.tokenizer
    r = generate(model, "Once upon a time", GREEDY.replace(max_tokens=6, banned_tokens=(tok.eos_token,)))
    assert r.finish_reason == "length" and len(r.tokens) == 6
    assert all(0 <= t < model.vocab_size for t in r.tokens)
    assert r.text == tok.decode(r.tokens)


def test_sentencepiece_style_token_bytes(tmp_path):
    """Metaspace "▁" is a space and byte-fallback pieces are their byte (Llama/Mistral style)."""
    from tokenizers import Tokenizer, decoders, models, normalizers

    vocab = {f"<0x{b:02X}>": b for b in range(256)}
    for piece in ("</s>", "\u2581", "a", "b", "\u2581a", "\u2581ab", "好"):
        vocab[piece] = len(vocab)
    lib = Tokenizer(models.BPE(vocab=vocab, merges=[("\u2581", "a"), ("\u2581a", "b")], byte_fallback=True))
    lib.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    lib.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    lib.add_special_tokens(["</s>"])
    lib.save(str(tmp_path / "tokenizer.json"))
    tok = HFTokenizer(tmp_path / "tokenizer.json")
    assert tok.eos_token == vocab["</s>"] and tok.vocab_size == len(vocab)
    assert tok.token_bytes(vocab["<0xE4>"]) == b"\xe4" and tok.token_bytes(vocab["\u2581ab"]) == b" ab"
    text = "ab 你好 a"
    ids = tok.encode(text)
    assert vocab["<0xE4>"] in ids and vocab["好"] in ids  # 你 by its bytes, 好 whole
    # the SentencePiece prefix space stays (the library's decoder strips it from the whole text)
    assert tok.decode(ids) == " " + text == " " + lib.decode(ids)
    assert "".join(streamed(tok, ids)) == " " + text


def test_a_small_vocabulary_runs_in_bf16(tmp_path):
    """Fewer tokens than the head re-checks in float32 (64) must not break a bf16 head."""
    from tokenizers import Tokenizer, models

    chars = sorted(set("abcdefghijklmnopqrstuvwxyz .,!?"))
    lib = Tokenizer(models.WordLevel({c: i for i, c in enumerate(["<unk>"] + chars)}, unk_token="<unk>"))
    lib.save(str(tmp_path / "tokenizer.json"))
    path = save_checkpoint(tmp_path / "chars.pth", "v7.0", n_layer=2, n_embd=64, vocab=len(chars) + 1)
    exact = load_model(path, "cpu fp32")
    model = load_model(path, "cpu bf16")
    assert model.vocab_size == len(chars) + 1 < 64 and isinstance(model.tokenizer, HFTokenizer)
    assert model.tokenizer.eos_token is None
    ids = [lib.token_to_id(c) for c in "hello world"]
    got, _ = model.forward(ids)
    want, _ = exact.forward(ids)
    assert got.shape == (len(chars) + 1,) and rel_err(got, want) < 0.05
    r = generate(model, ids, GREEDY.replace(max_tokens=4))
    assert len(r.tokens) == 4 and r.finish_reason == "length"


# --- which tokenizer, and what is said when there is none --------------------------------------------
def test_an_unknown_vocabulary_without_tokenizer_json_is_explained(tmp_path):
    path = save_checkpoint(tmp_path / "odd.pth", "v7.0", n_layer=1, n_embd=64, vocab=1000)
    with pytest.raises(TokenizerError) as err:
        load_model(path, "cpu fp32")
    msg = str(err.value)
    assert "1000 tokens" in msg and "tokenizer.json" in msg and "odd.tokenizer.json" in msg
    assert str(tmp_path) in msg


def test_a_tokenizer_json_of_another_model_is_refused(tmp_path):
    byte_bpe().save(str(tmp_path / "tokenizer.json"))  # more tokens than the model has
    path = save_checkpoint(tmp_path / "small.pth", "v7.0", n_layer=1, n_embd=64, vocab=300)
    assert HFTokenizer(tmp_path / "tokenizer.json").vocab_size > 300
    with pytest.raises(TokenizerError, match="300") as err:
        load_model(path, "cpu fp32")
    assert "tokenizer.json" in str(err.value)
    # a byte-level model beside it keeps its bytes (a shared models folder)
    assert isinstance(tokenizer_for_vocab(256, tmp_path / "bytes.pth"), ByteTokenizer)


def test_the_model_s_own_tokenizer_file_comes_first(tmp_path):
    byte_bpe(vocab_size=300).save(str(tmp_path / "small.tokenizer.json"))
    byte_bpe(vocab_size=400).save(str(tmp_path / "tokenizer.json"))
    assert tokenizer_files(tmp_path / "small.pth") == [tmp_path / "small.tokenizer.json", tmp_path / "tokenizer.json"]
    own = tokenizer_for_vocab(320, tmp_path / "small.pth")
    assert own.path.name == "small.tokenizer.json" and own.vocab_size == 320
    other = tokenizer_for_vocab(400, tmp_path / "big.pth")
    assert other.path.name == "tokenizer.json"
    # an explicit tokenizer path wins; the World size stays World whatever lies beside the model
    assert tokenizer_for_vocab(400, tmp_path / "small.pth", tmp_path / "tokenizer.json").path.name == "tokenizer.json"
    assert isinstance(tokenizer_for_vocab(65536, tmp_path / "world.pth"), WorldTokenizer)
