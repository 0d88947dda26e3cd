"""Tokenizers: the RWKV World tokenizer (v5/v6/v7 and World v4), GPT-NeoX 20B (RWKV-4 Raven), any
``tokenizer.json`` of the Hugging Face ``tokenizers`` library, and bytes (vocabulary 256).

All expose ``vocab_size``, ``eos_token`` (None: no end-of-text token), ``encode(str) -> list[int]``,
``decode(list[int]) -> str``, ``decode_bytes(list[int]) -> bytes``, and the bytes of each token:
``token_bytes(id) -> bytes`` and ``tokens_bytes`` (a list of ``vocab_size`` entries, built on first
use; b"" for ids that stand for no text). :class:`StreamDecoder` turns a stream of tokens into text
without ever emitting half a UTF-8 character (a Chinese character or an emoji often spans tokens).

Which tokenizer a model gets (:func:`tokenizer_for_vocab`) follows from its vocabulary size: World
for 65529..65536, NeoX for 50277/50304, else the ``tokenizer.json`` beside the model file, else bytes
for a vocabulary of 256.
"""

from __future__ import annotations

import ast
import codecs
import json
import logging
import os
import re
import threading
from pathlib import Path

from roost.engine.errors import TokenizerError

log = logging.getLogger(__name__)
WORLD_VOCAB_FILE = "rwkv_vocab_v20230424.txt"


class _Tokenizer:
    """What every tokenizer shares: text from bytes, and the table of every token's bytes."""

    vocab_size: int
    eos_token: int | None

    def token_bytes(self, token: int) -> bytes:
        """The bytes token ``token`` stands for (b"" for none, and for ids past the vocabulary)."""
        raise NotImplementedError

    @property
    def tokens_bytes(self) -> list[bytes]:
        """``token_bytes`` of every id below ``vocab_size``, built once on first use (for a grammar
        that has to know which tokens can come next)."""
        table = self.__dict__.get("_tokens_bytes")
        if table is None:
            table = self.__dict__["_tokens_bytes"] = [self.token_bytes(i) for i in range(self.vocab_size)]
        return table

    def decode_bytes(self, tokens) -> bytes:
        return b"".join(self.token_bytes(int(t)) for t in tokens)

    def decode(self, tokens) -> str:
        return self.decode_bytes(tokens).decode("utf-8", errors="replace")


class WorldTokenizer(_Tokenizer):
    """Greedy longest match over the UTF-8 bytes of the text, with a byte trie."""

    eos_token = 0

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.id_to_bytes: dict[int, bytes] = {}
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError as e:
            raise TokenizerError(f"Cannot read the World tokenizer vocabulary {self.path}: {e}") from None
        rows = []  # (id, Python literal of its text or bytes, length in bytes)
        for line in text.splitlines():
            line = line.rstrip("\r")
            if not line:
                continue
            try:
                idx, rest = line.split(" ", 1)
                literal, length = rest.rsplit(" ", 1)
                rows.append((int(idx), literal, int(length)))
            except ValueError:
                raise TokenizerError(f"{self.path} is damaged near: {line[:40]!r}.") from None
        # literal_eval over batches of literals: called per line, each call leaves a reference cycle
        # behind (its recursive helper), ~700k objects of garbage for the collector to walk; called
        # once on the whole file, its parser holds the GIL for ~100 ms (a stall of the app's window)
        try:
            values = []
            for b in range(0, len(rows), 1000):
                values += ast.literal_eval("[" + ",".join(lit for _i, lit, _n in rows[b:b + 1000]) + "]")
        except (ValueError, SyntaxError):
            values = None
        if values is None or len(values) != len(rows):
            for idx, literal, _n in rows:  # find the line to name
                try:
                    ast.literal_eval(literal)
                except (ValueError, SyntaxError):
                    raise TokenizerError(f"{self.path} is damaged near token {idx}.") from None
            raise TokenizerError(f"{self.path} is damaged.")
        for (idx, _literal, length), value in zip(rows, values):
            data = value.encode("utf-8") if isinstance(value, str) else value
            if not isinstance(data, bytes) or len(data) != length:
                raise TokenizerError(f"{self.path} is damaged near token {idx}.")
            self.id_to_bytes[idx] = data
        self.vocab_size = 65536
        # The byte trie as two flat dicts of ints (node * 256 + byte -> child node; node -> the token
        # ending there) rather than a dict per node: ~200k fewer objects for the garbage collector to
        # walk, whose full passes otherwise stall every thread for ~100 ms while the vocabulary loads.
        self._next: dict[int, int] = {}
        self._token_at: dict[int, int] = {}
        nodes = 1  # node 0 is the root
        for idx, data in self.id_to_bytes.items():
            node = 0
            for byte in data:
                key = node * 256 + byte
                child = self._next.get(key)
                if child is None:
                    child = self._next[key] = nodes
                    nodes += 1
                node = child
            self._token_at[node] = idx

    def encode(self, text: str) -> list[int]:
        data = text.encode("utf-8")
        out: list[int] = []
        step, token_at, i, n = self._next.get, self._token_at.get, 0, len(data)
        while i < n:
            node, j, best, best_end = 0, i, None, i + 1
            while j < n:
                node = step(node * 256 + data[j])
                if node is None:
                    break
                j += 1
                tok = token_at(node)
                if tok is not None:
                    best, best_end = tok, j
            if best is None:  # every single byte is a token, so this cannot happen with a full vocab
                raise TokenizerError(f"byte {data[i]} has no token in {self.path.name}")
            out.append(best)
            i = best_end
        return out

    def token_bytes(self, token: int) -> bytes:
        return self.id_to_bytes.get(int(token), b"")

    def decode_bytes(self, tokens) -> bytes:
        get = self.id_to_bytes.get
        return b"".join(get(int(t), b"") for t in tokens)


class ByteTokenizer(_Tokenizer):
    """Byte-level models (vocabulary 256: small research models, ABC-notation music models): token
    id = byte value of the UTF-8 text, so any text encodes and every id decodes.

    ``eos_token`` is 0 (NUL, never part of text). That is RWKV's end-of-text id: RWKV-LM's
    ``make_data.py`` appends token 0 ("end_of_doc") to every document whatever the tokenizer, so a
    byte model trained through that pipeline ends its documents with 0. BlinkDL's ABC music
    models are framed otherwise: ChatRWKV's ``music/run.py`` (and RWKV-Runner's ``MusicAbcRWKV``)
    feed ``[2] + tune + [3]`` and stop at token 3 (ETX, ``eos_token_id = 3``; 0 is their padding).
    A caller generating ABC music adds 3 to its stop tokens; neither 0 nor 3 occurs in text.
    """

    vocab_size = 256
    eos_token = 0
    _BYTES = tuple(bytes([b]) for b in range(256))

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def token_bytes(self, token: int) -> bytes:
        return self._BYTES[token] if 0 <= token < 256 else b""

    def decode_bytes(self, tokens) -> bytes:
        return bytes(t for t in map(int, tokens) if 0 <= t < 256)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (byte-level BPE)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


_UNMAP = {c: b for b, c in _bytes_to_unicode().items()}
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # SentencePiece's byte fallback pieces
# end-of-text tokens by the names the common vocabularies give them, in order of preference
END_OF_TEXT_NAMES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>")


def _parts(node) -> list[dict]:
    """A tokenizer.json component (decoder, pre-tokenizer) and the ones a Sequence of it holds."""
    if not isinstance(node, dict):
        return []
    out = [node]
    for key in ("decoders", "pretokenizers"):
        for sub in node.get(key) or ():
            out += _parts(sub)
    return out


class HFTokenizer(_Tokenizer):
    """Any ``tokenizer.json`` of the Hugging Face ``tokenizers`` library.

    Text is encoded by the library (without the special tokens a post-processor would add); tokens
    are decoded from their bytes, so that a stream of tokens decodes piece by piece exactly as the
    whole (see :class:`StreamDecoder`). A token's bytes: an added or special token's text; for
    byte-level BPE (GPT-2, NeoX, Llama 3, Qwen) the bytes its characters stand for; SentencePiece
    byte-fallback pieces ``<0xE4>`` the byte; a Metaspace ``▁`` a space; otherwise the piece's
    UTF-8 (WordPiece's ``##`` continuation marks are not undone). ``eos_token``: the first of
    :data:`END_OF_TEXT_NAMES` the vocabulary has, else None.
    """

    hint = "The model needs a tokenizer.json that the 'tokenizers' library can read beside it."

    def __init__(self, path: str | os.PathLike):
        from tokenizers import Tokenizer

        self.path = Path(path)
        try:
            text = self.path.read_text(encoding="utf-8")
            self._tok = Tokenizer.from_str(text)
            spec = json.loads(text)
        except Exception as e:  # the library raises plain Exceptions for unreadable files
            raise TokenizerError(f"Cannot read the tokenizer {self.path.name}: {e}. {self.hint}") from None
        decoder, pre = _parts(spec.get("decoder")), _parts(spec.get("pre_tokenizer"))
        kinds = {p.get("type") for p in decoder + pre}
        self._byte_level = "ByteLevel" in kinds
        self._byte_fallback = bool((spec.get("model") or {}).get("byte_fallback")) or "ByteFallback" in kinds
        self._space = next((p.get("replacement") or "\u2581" for p in decoder + pre if p.get("type") == "Metaspace"),
                           None)
        if self._space is None and any(p.get("type") == "Replace" and p.get("content") == " "
                                       and (p.get("pattern") or {}).get("String") == "\u2581" for p in decoder):
            self._space = "\u2581"  # Llama/Mistral style: the decoder turns "▁" back into spaces
        added = self._tok.get_added_tokens_decoder()
        self._added = {int(i): t.content.encode("utf-8") for i, t in added.items()}
        self.vocab_size = max([self._tok.get_vocab_size(with_added_tokens=True)] + [i + 1 for i in self._added])
        self.eos_token = next((i for i in map(self._tok.token_to_id, END_OF_TEXT_NAMES) if i is not None), None)
        self._cache: dict[int, bytes] = {}

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def token_bytes(self, token: int) -> bytes:
        token = int(token)
        data = self._cache.get(token)
        if data is None:
            data = self._cache[token] = self._piece_bytes(token)
        return data

    def _piece_bytes(self, token: int) -> bytes:
        if token in self._added:
            return self._added[token]
        piece = self._tok.id_to_token(token) if 0 <= token < 1 << 32 else None
        if piece is None:
            return b""
        if self._byte_fallback and (m := _BYTE_PIECE.fullmatch(piece)):
            return bytes([int(m.group(1), 16)])
        if self._byte_level:
            try:
                return bytes(_UNMAP[c] for c in piece)
            except KeyError:  # not in the byte alphabet: its own text (as the library's decoder does)
                return piece.encode("utf-8")
        if self._space:
            piece = piece.replace(self._space, " ")
        return piece.encode("utf-8")


class NeoXTokenizer(HFTokenizer):
    """The GPT-NeoX 20B tokenizer (``20B_tokenizer.json``) of RWKV-4 Raven/Pile models."""

    hint = ("RWKV-4 Raven models need 20B_tokenizer.json beside the model file (Roost downloads it "
            "with the model).")


class StreamDecoder:
    """Decode tokens one at a time; text is released only once its UTF-8 bytes are complete."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token: int) -> str:
        return self._dec.decode(self.tokenizer.decode_bytes([token]))

    def flush(self) -> str:
        return self._dec.decode(b"", final=True)


_WORLD: WorldTokenizer | None = None
_WORLD_LOCK = threading.Lock()


def world_vocab_path() -> Path:
    """The World vocabulary shipped inside the ``rwkv`` PyPI package (data only)."""
    from importlib import resources

    try:
        path = Path(str(resources.files("rwkv") / WORLD_VOCAB_FILE))
    except ModuleNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise TokenizerError(
            "The RWKV World tokenizer vocabulary is missing (it comes with the 'rwkv' Python "
            "package). Reinstall Roost, or run: pip install rwkv==0.8.32"
        )
    return path


def world_tokenizer(path: str | os.PathLike | None = None) -> WorldTokenizer:
    """The World tokenizer, loaded once per process (thread-safe)."""
    global _WORLD
    if path is not None:
        return WorldTokenizer(path)
    with _WORLD_LOCK:
        if _WORLD is None:
            _WORLD = WorldTokenizer(world_vocab_path())
        return _WORLD


def world_tokenizer_soon() -> None:
    """Start reading the World vocabulary on a thread (~0.3 s of Python) unless it is read already:
    a model load goes on meanwhile and :func:`world_tokenizer` waits for it. Raises TokenizerError
    now if the vocabulary file is missing; a thread that fails leaves the error to the next call."""
    with _WORLD_LOCK:
        if _WORLD is not None:
            return
    world_vocab_path()

    def read() -> None:
        try:
            world_tokenizer()
        except TokenizerError:
            pass

    threading.Thread(target=read, name="roost-vocab", daemon=True).start()


NEOX_NAMES = ("20B_tokenizer.json", "tokenizer.json")
WORLD_VOCABS = range(65529, 65537)  # the World vocabulary (65529 tokens), padded up to 65536
NEOX_VOCABS = (50277, 50304)
BYTE_VOCAB = 256


def tokenizer_files(model_path: str | os.PathLike) -> list[Path]:
    """Where the tokenizer.json of a model of another vocabulary may lie: ``NAME.tokenizer.json``
    beside ``NAME.pth`` (for a folder that holds several models), then ``tokenizer.json``."""
    path = Path(model_path)
    return [path.with_name(path.stem + ".tokenizer.json"), path.with_name("tokenizer.json")]


def tokenizer_for_vocab(vocab_size: int, model_path: str | os.PathLike | None = None,
                        tokenizer_path: str | os.PathLike | None = None):
    """The tokenizer a model with ``vocab_size`` tokens needs: World or NeoX by their sizes; for any
    other size ``tokenizer_path`` or the tokenizer.json beside ``model_path`` (see
    :func:`tokenizer_files`), whose tokens must fit in the model's vocabulary (a model's may be
    padded: more rows than tokens); bytes for 256 without one. Raises TokenizerError."""
    if vocab_size in WORLD_VOCABS:
        return world_tokenizer(tokenizer_path)
    if vocab_size in NEOX_VOCABS:
        if tokenizer_path is not None:
            return _fitting(NeoXTokenizer(tokenizer_path), vocab_size)
        folder = Path(model_path).parent if model_path is not None else Path.cwd()
        for name in NEOX_NAMES:
            if (folder / name).is_file():
                return _fitting(NeoXTokenizer(folder / name), vocab_size)
        raise TokenizerError(
            f"This RWKV-4 Raven/Pile model needs the GPT-NeoX tokenizer file 20B_tokenizer.json "
            f"beside it in {folder}. Roost downloads it with the model; if you copied the model by "
            "hand, copy 20B_tokenizer.json too."
        )
    if tokenizer_path is not None:
        return _fitting(HFTokenizer(tokenizer_path), vocab_size)
    for path in tokenizer_files(model_path) if model_path is not None else ():
        if not path.is_file():
            continue
        try:
            return _fitting(HFTokenizer(path), vocab_size)
        except TokenizerError as e:
            if vocab_size != BYTE_VOCAB:
                raise
            # a byte-level model needs none: a tokenizer.json that does not fit is another model's
            log.warning("byte-level model %s: not using %s (%s)", Path(model_path).name, path.name, e)
    if vocab_size == BYTE_VOCAB:
        return ByteTokenizer()
    where = f" in {Path(model_path).parent}" if model_path is not None else ""
    name = f"{Path(model_path).stem}.tokenizer.json or " if model_path is not None else ""
    raise TokenizerError(
        f"The model's vocabulary has {vocab_size} tokens, which matches no tokenizer Roost has built in "
        f"(RWKV World: 65536, GPT-NeoX 20B: 50277, bytes: 256), and there is no tokenizer.json beside "
        f"it{where}. Put the tokenizer.json that came with the model beside the model file (as "
        f"{name}tokenizer.json) and Roost will use it."
    )


def _fitting(tok: HFTokenizer, vocab_size: int) -> HFTokenizer:
    """``tok`` for a model of ``vocab_size`` ids: refused when it has more tokens than that, else
    its ``vocab_size`` becomes the model's (as World's 65529 tokens serve 65536 ids), so that
    ``tokens_bytes`` covers every id the model can produce (b"" for padding rows)."""
    if tok.vocab_size > vocab_size:
        raise TokenizerError(
            f"{tok.path.name} has {tok.vocab_size} tokens but the model's vocabulary has only "
            f"{vocab_size}: it is the tokenizer of another model. Put the model's own tokenizer.json "
            "beside it."
        )
    tok.vocab_size = vocab_size
    return tok
