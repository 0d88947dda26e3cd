"""`roost selfcheck`: a non-interactive check that this installation (or frozen bundle) works.

Loads the bundled tiny random-weight model, generates a few tokens, round-trips the tokenizer,
opens a SQLite database and imports Qt; prints each step and exits 0 only if all pass.
"""

from __future__ import annotations

import platform
import sys
import tempfile
import time
from pathlib import Path

SELFTEST_MODEL = "selftest-rwkv7.pth"


class Scratch:
    """One run's temporary folder: the self-test model (made at most once) and a throw-away data folder."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._model: Path | None = None

    def model(self) -> Path:
        """The bundle's tiny model where there is one (the frozen bundle), else one made here once."""
        if self._model is None:
            from roost.core.paths import asset

            bundled = asset(SELFTEST_MODEL)
            if bundled.is_file() and isinstance(bundled, Path):
                self._model = bundled
            else:
                from roost.engine.synthetic import save_checkpoint

                self._model = save_checkpoint(self.folder / SELFTEST_MODEL, "v7.0", n_layer=2, n_embd=64, seed=1)
        return self._model

    def home(self) -> Path:
        """A data folder of its own, so that the check leaves the user's settings and chats alone."""
        home = self.folder / "home"
        home.mkdir(exist_ok=True)
        return home


def run(out=sys.stdout) -> int:
    from roost import __version__

    frozen = "frozen bundle" if getattr(sys, "frozen", False) else "Python install"
    print(f"Roost {__version__} ({frozen}), Python {platform.python_version()}, {platform.platform()}", file=out)
    steps = [("catalog", _catalog), ("tokenizer", _tokenizer), ("model", _model), ("int8 and int4", _quantized),
             ("structured output", _grammar), ("conversations database", _sqlite),
             ("Qt", _qt), ("main window", _window), ("API server", _api)]
    ok = True
    # everything the check writes goes here and is removed at the end (Windows may hold a file open
    # a moment longer: what cannot be removed then is left to the system's temp cleaning)
    with tempfile.TemporaryDirectory(prefix="roost-selfcheck-", ignore_cleanup_errors=True) as folder:
        scratch = Scratch(Path(folder))
        for name, step in steps:
            t0 = time.perf_counter()
            try:
                detail = step(scratch)
                print(f"  ok    {name}: {detail} ({time.perf_counter() - t0:.2f} s)", file=out)
            except Exception as e:  # noqa: BLE001 -- every failure is reported, then the exit code says it
                ok = False
                print(f"  FAIL  {name}: {type(e).__name__}: {e}", file=out)
    print("selfcheck OK" if ok else "selfcheck FAILED", file=out, flush=True)
    return 0 if ok else 1


def _catalog(scratch: Scratch) -> str:
    """The bundled model catalog is found (package data, wherever Roost is installed)."""
    from roost.core.catalog import load_catalog

    models = load_catalog(refreshed=False)
    assert models, "the catalog is empty"
    return f"{len(models)} models"


def _tokenizer(scratch: Scratch) -> str:
    from roost.engine.tokenizer import world_tokenizer

    tok = world_tokenizer()
    text = "Hello 你好 🙂"
    ids = tok.encode(text)
    assert tok.decode(ids) == text, "the World tokenizer does not round-trip"
    return f"World vocabulary, {len(ids)} tokens for {text!r}"


def _model(scratch: Scratch) -> str:
    from roost import engine
    from roost.engine.generate import generate
    from roost.engine.sampling import SamplingParams

    model = engine.load_model(scratch.model(), "cpu fp32")
    r = generate(model, "The quick brown fox", SamplingParams(max_tokens=8, seed=0, stop_tokens=()))
    assert len(r.tokens) >= 1, "no token was generated"
    return f"{model.config.label}, {len(r.tokens)} tokens at {r.tokens_per_second:.0f} tokens/s"


def _quantized(scratch: Scratch) -> str:
    """cpu int8 and cpu int4 run with this CPU's kernels and agree with cpu fp32: Roost's compiled
    kernels where this installation has them (roost.engine.native; the line says which instruction
    set, or why they are not used), and the PyTorch path (fbgemm on x86, PyTorch's packed 4-bit
    kernel), which is also what runs without them."""
    import torch

    from roost import engine
    from roost.engine import native
    from roost.engine.int4 import Int4Linear
    from roost.engine.int8 import default_kernel

    tokens = [101, 2025, 9, 33]
    want, _ = engine.load_model(scratch.model(), "cpu fp32").forward(tokens)
    errs = []
    paths = [True, False] if native.available() else [False]
    for use_native in paths:
        for strategy, limit in (("cpu int8", 0.1), ("cpu int4", 0.3)):
            model = engine.load_model(scratch.model(), strategy, native=use_native)
            got, _ = model.forward(tokens)
            err = float((got - want).abs().max() / want.abs().max())
            assert bool(torch.isfinite(got).all()) and err < limit, f"{strategy} logits differ from float32 by {err:.1%}"
            errs.append(err)
        kind = native.BlockLinear if use_native else Int4Linear
        assert isinstance(model._layers[-1]["att.key.weight"], kind), f"{strategy} does not run on {kind.__name__}"
    kernels = (f"compiled kernels: {native.isa()}" if native.available()
               else f"compiled kernels: not used ({native.unavailable_reason()})")
    return (f"{kernels}; logits within {max(errs[0::2]):.2%} (int8) and {max(errs[1::2]):.1%} (int4) of float32; "
            f"PyTorch path: int8 kernel {default_kernel(torch.device('cpu'))}")


def _grammar(scratch: Scratch) -> str:
    """The grammar engine (llguidance, a native library) loads and keeps a reply to a JSON schema."""
    import json

    from roost import engine
    from roost.engine.generate import generate
    from roost.engine.grammar import JsonConstraint, json_schema_grammar
    from roost.engine.sampling import SamplingParams

    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    model = engine.load_model(scratch.model(), "cpu fp32")
    constraint = JsonConstraint(model.tokenizer, json_schema_grammar(schema))
    r = generate(model, "JSON:", SamplingParams(max_tokens=20, seed=0), constraint=constraint)
    value = json.loads(r.text)
    assert set(value) == {"ok"}, r.text
    return f"a random model's reply is {r.text}"


def _sqlite(scratch: Scratch) -> str:
    from roost.core.conversations import ConversationStore

    store = ConversationStore(scratch.folder / "c.sqlite")
    c = store.new("selfcheck")
    store.append(c.id, "user", "hi")
    n = len(store.messages(c.id))
    store.close()
    assert n == 1
    return "write and read back"


def _qt(scratch: Scratch) -> str:
    from PySide6 import __version__ as pyside
    from PySide6 import QtWidgets  # noqa: F401 -- the widgets library and its plugins load

    return f"PySide6 {pyside}"


def _window(scratch: Scratch) -> str:
    """The main window opens and closes (offscreen where there is no display)."""
    import os

    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    old = os.environ.get("ROOST_HOME")
    os.environ["ROOST_HOME"] = str(scratch.home())
    try:
        from PySide6.QtWidgets import QApplication

        from roost.gui.app import create_window

        win = create_window(start_engine=False)
        QApplication.instance().processEvents()
        shown = win.isVisible()
        win.close()
    finally:
        if old is None:
            os.environ.pop("ROOST_HOME", None)
        else:
            os.environ["ROOST_HOME"] = old
    assert shown, "the window did not appear"
    return f"opened and closed ({QApplication.instance().platformName()})"


def _api(scratch: Scratch) -> str:
    """The local API server starts on a free loopback port and answers a completion."""
    import json
    import urllib.request

    from roost.core.runtime import Runtime
    from roost.server.run import ApiServer

    runtime = Runtime()
    runtime.load(scratch.model(), "cpu fp32")
    server = ApiServer(runtime, port=0).start()
    try:
        model = runtime.info.path.stem
        req = urllib.request.Request(server.base_url + "/completions", method="POST",
                                     data=json.dumps({"model": model, "prompt": "Hello", "max_tokens": 4,
                                                      "seed": 0}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            body = json.loads(r.read())
    finally:
        server.stop()
    n = body["usage"]["completion_tokens"]
    assert n >= 1, "the server generated nothing"
    return f"{server.base_url}: /completions answered with {n} tokens"
