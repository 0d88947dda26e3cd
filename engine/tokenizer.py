"""Tokenizers: the RWKV World tokenizer (v5/v6/v7 and World v4) and GPT-NeoX 20B (RWKV-4 Raven).

Both expose ``vocab_size``, ``eos_token``, ``encode(str) -> list[int]``, ``decode(list[int]) -> str``
and ``decode_bytes(list[int]) -> bytes``. :class:`StreamDecoder` turns a stream of tokens into text
without ever emitting half a UTF-8 character (a Chinese character or an emoji often spans tokens).
"""

from __future__ import annotations

import ast
import codecs
import os
import threading
from pathlib import Path

from roost.engine.errors import TokenizerError

WORLD_VOCAB_FILE = "rwkv_vocab_v20230424.txt"


class WorldTokenizer:
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

    def decode_bytes(self, tokens) -> bytes:
        get = self.id_to_bytes.get
        return b"".join(get(int(t), b"") for t in tokens)

    def decode(self, tokens) -> str:
        return self.decode_bytes(tokens).decode("utf-8", errors="replace")


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


class NeoXTokenizer:
    """The GPT-NeoX 20B tokenizer (``20B_tokenizer.json``) through the ``tokenizers`` library."""

    def __init__(self, path: str | os.PathLike):
        from tokenizers import Tokenizer

        self.path = Path(path)
        try:
            self._tok = Tokenizer.from_file(str(self.path))
        except Exception as e:  # the library raises plain Exceptions for unreadable files
            raise TokenizerError(
                f"Cannot read the tokenizer {self.path.name}: {e}. RWKV-4 Raven models need "
                "20B_tokenizer.json beside the model file (Roost downloads it with the model)."
            ) from None
        self.vocab_size = self._tok.get_vocab_size()
        self.eos_token = self._tok.token_to_id("<|endoftext|>")
        unmap = {c: b for b, c in _bytes_to_unicode().items()}
        self._bytes: dict[int, bytes] = {}
        special = {t.content for t in self._tok.get_added_tokens_decoder().values()}
        for piece, idx in self._tok.get_vocab(with_added_tokens=True).items():
            if piece in special:
                self._bytes[idx] = piece.encode("utf-8")
            else:
                self._bytes[idx] = bytes(unmap[c] for c in piece if c in unmap)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode_bytes(self, tokens) -> bytes:
        return b"".join(self._bytes.get(int(t), b"") for t in tokens)

    def decode(self, tokens) -> str:
        return self.decode_bytes(tokens).decode("utf-8", errors="replace")


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


NEOX_NAMES = ("20B_tokenizer.json", "tokenizer.json")


def tokenizer_for_vocab(vocab_size: int, model_path: str | os.PathLike | None = None,
                        tokenizer_path: str | os.PathLike | None = None):
    """The tokenizer a model with ``vocab_size`` tokens needs."""
    if 65529 <= vocab_size <= 65536:
        return world_tokenizer(tokenizer_path)
    if vocab_size in (50277, 50304):
        if tokenizer_path is not None:
            return NeoXTokenizer(tokenizer_path)
        folder = Path(model_path).parent if model_path is not None else Path.cwd()
        for name in NEOX_NAMES:
            if (folder / name).is_file():
                return NeoXTokenizer(folder / name)
        raise TokenizerError(
            f"This RWKV-4 Raven/Pile model needs the GPT-NeoX tokenizer file 20B_tokenizer.json "
            f"beside it in {folder}. Roost downloads it with the model; if you copied the model by "
            "hand, copy 20B_tokenizer.json too."
        )
    raise TokenizerError(
        f"The model's vocabulary has {vocab_size} tokens, which matches no tokenizer Roost knows "
        "(RWKV World: 65536, GPT-NeoX 20B: 50277)."
    )
