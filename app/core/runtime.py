"""The one interface between the launcher and the engine: load / unload a model, chat, complete.

Qt-free and blocking: the GUI runs it on a worker thread, the CLI and the API server call it
directly. It holds at most one model (loading another unloads the first), and keeps the RWKV state
of recent conversations so that a new turn only processes the new text.
"""

from __future__ import annotations

import gc
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

KEEP_STATES = 8  # conversations whose state is kept (least recently used dropped first)


@dataclass
class LoadedInfo:
    path: Path
    name: str
    label: str  # "RWKV-7 24x2048" etc.
    strategy: str
    version: int
    vocab_size: int
    reasoning: bool  # a G1 model that thinks in <think>...</think>
    seconds: float


@dataclass
class Reply:
    text: str  # the answer as shown
    reasoning: str  # G1 thinking, "" otherwise
    finish_reason: str  # "stop" | "length" | "cancelled"
    tokens: int  # generated
    fed_tokens: int  # prompt tokens processed for this turn (fewer when the state was reused)
    context_tokens: int  # tokens the conversation's state has seen
    tokens_per_second: float


class Runtime:
    def __init__(self, options=None):
        """`options`: the engine's LoadOptions for every model it loads (default: the engine's
        defaults; a program that owns its process passes LoadOptions.from_env())."""
        self.options = options
        self.model = None
        self.info: LoadedInfo | None = None
        self._lock = threading.Lock()  # one generation at a time
        self._sessions: OrderedDict[object, tuple] = OrderedDict()

    # --- model ---------------------------------------------------------------------------------
    def load(self, path: str | Path, strategy: str, progress: Callable[[float], None] | None = None) -> LoadedInfo:
        from roost import engine
        with self._lock:
            self._unload()
            model = engine.load_model(path, strategy, progress=progress, options=self.options)
            path = Path(path)
            name = path.name.lower()
            self.model = model
            self.info = LoadedInfo(path, path.name, model.config.label, strategy, model.version,
                                   model.vocab_size, model.version == 7 and "g1" in name,
                                   getattr(model, "load_seconds", 0.0))
            return self.info

    def unload(self) -> None:
        with self._lock:
            self._unload()

    def _unload(self) -> None:
        # the model and its states go by reference counting (no cycles); a full collection is
        # only run on the main thread: on the GUI's worker thread it could finalise Qt objects
        # off the UI thread, which crashes (the app collects on the UI thread, see roost.gui.app)
        self.model, self.info = None, None
        self._sessions.clear()
        if threading.current_thread() is threading.main_thread():
            gc.collect()

    # --- chat ----------------------------------------------------------------------------------
    def chat(self, key, history: list[tuple[str, str]], text: str, *, params, system: str = "",
             think: bool | None = None, on_piece: Callable[[str], None] | None = None, stop_flag=None) -> Reply:
        """One turn of conversation `key`. `history` is [(role, shown text), ...] before this turn."""
        from roost.engine.chat import ChatSession
        from roost.engine.prompts import G1_CHAT, Message, default_format, split_reasoning

        with self._lock:
            model = self._need_model()
            reasoning = self.info.reasoning
            fmt = G1_CHAT if reasoning else default_format(model.vocab_size)
            think = think if reasoning else None
            cached = self._sessions.pop(key, None)
            if cached and cached[1] == (system, think, list(history)):
                session, _, ctx = cached
            else:  # new, edited, regenerated, or another system prompt: start over
                session = ChatSession(model, fmt, params, system=system or None, think=think)
                session.messages += [Message(r, c) for r, c in history]
                ctx = 0
            session.params = params.with_stops(fmt.stop_strings)
            gen = session.send(text, stop_flag=stop_flag)
            for piece in gen:
                if on_piece:
                    on_piece(piece)
            raw = session.finish(gen)
            r = gen.result
            thought, answer = split_reasoning(raw) if reasoning and think is not None else ("", raw.strip())
            if not session._seen:  # the state could not be kept
                ctx = 0
            else:
                ctx += session.last_fed_tokens + r.n_fed
            history = [*history, ("user", text), ("assistant", answer)]
            self._sessions[key] = (session, (system, think, history), ctx)
            while len(self._sessions) > KEEP_STATES:
                self._sessions.popitem(last=False)
            return Reply(answer, thought, r.finish_reason, len(r.tokens), session.last_fed_tokens, ctx,
                         r.tokens_per_second)

    def forget(self, key) -> None:
        """Drop a conversation's cached state (it was deleted)."""
        self._sessions.pop(key, None)

    # --- completion ----------------------------------------------------------------------------
    def complete(self, prompt: str, *, params, on_piece: Callable[[str], None] | None = None,
                 stop_flag=None) -> Reply:
        r = self.generate(prompt, params=params, on_piece=on_piece, stop_flag=stop_flag)
        return Reply(r.text, "", r.finish_reason, len(r.tokens), r.prompt_tokens,
                     r.prompt_tokens + len(r.tokens), r.tokens_per_second)

    # --- exclusive use (the API server) --------------------------------------------------------
    @contextmanager
    def exclusive(self) -> Iterator[object]:
        """Hold the loaded model for one job: no other generation, load or unload runs meanwhile.
        Yields the model; raises RoostError when none is loaded."""
        with self._lock:
            yield self._need_model()

    def generate(self, prompt: str | Sequence[int], *, params, state=None,
                 on_piece: Callable[[str], None] | None = None, stop_flag=None):
        """One generation on a text or token-id prompt, from `state` (None: a fresh state), holding
        the lock. Returns the engine's GenerationResult (text, tokens, finish_reason, state, ...)."""
        from roost.engine.generate import Generation

        with self.exclusive() as model:
            gen = Generation(model, prompt, params, state=state, stop_flag=stop_flag)
            for piece in gen:
                if on_piece:
                    on_piece(piece)
            return gen.result

    def _need_model(self):
        if self.model is None:
            from roost.engine.errors import RoostError

            raise RoostError("No model is loaded. Load one on the Models page.\n尚未加载模型，请在“模型”页面加载。")
        return self.model
