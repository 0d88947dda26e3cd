"""The one interface between the launcher and the engine: load / unload a model, chat, complete.

Qt-free and blocking: the GUI runs it on a worker thread, the CLI and the API server call it
directly. It holds at most one model (loading another unloads the first) and one state cache
(roost.engine.resume) that the app's chats and the API server share: a new turn, a regenerated or
edited one, or an API request that continues a chat processes only the text after the longest
stored prefix.
"""

from __future__ import annotations

import logging
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)
KEEP_CHATS = 32  # conversations whose exact transcript is remembered (least recently used dropped first)


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
    def __init__(self, options=None, *, mark_loads: str | None = None):
        """`options`: the engine's LoadOptions for every model it loads (default: the engine's
        defaults; a program that owns its process passes LoadOptions.from_env()). `mark_loads`: the
        program's name ("app", "serve", ...) where each load is to be marked in the data folder
        while it runs (roost.core.loadmarks: a load that ends the program is known next time)."""
        from roost.engine.resume import PrefixCache

        self.options = options
        self.model = None
        self.info: LoadedInfo | None = None
        self._lock = threading.Lock()  # one generation at a time
        self.cache = PrefixCache()  # states by token prefix, for this model; shared with the API server
        # per conversation: (system, think, [(role, shown text, Message as the model saw it), ...]):
        # replies verbatim, G1 thinking included, so that a transcript's text extends what a stored
        # state saw for as long as the history is unchanged
        self._chats: OrderedDict[object, tuple] = OrderedDict()
        self._chats_lock = threading.Lock()  # short: the UI thread forgets a chat while a reply runs
        self._replying: object = None  # the conversation whose reply is running
        self._forgotten = False  # ... and it was deleted meanwhile: do not remember it afterwards
        # states saved on disk per reply (roost.core.saved_states.SavedStates), set by the app
        self.states = None
        self._identity = ""  # the loaded model's, for saved states (roost.engine.state_io.identity)
        self._personas: dict = {}  # the persona in use: {marker: (its starting State, its token)}
        self.mark_loads = mark_loads

    # --- model ---------------------------------------------------------------------------------
    def load(self, path: str | Path, strategy: str, progress: Callable[[float], None] | None = None) -> LoadedInfo:
        from roost import engine
        with self._lock:
            if self.model is not None:  # a file or strategy that cannot load does not cost the loaded model
                engine.check_loadable(path, strategy)
            self._unload()
            if self.mark_loads:
                from roost.core.loadmarks import marked_load

                with marked_load(path, strategy, program=self.mark_loads):
                    model = engine.load_model(path, strategy, progress=progress, options=self.options)
            else:
                model = engine.load_model(path, strategy, progress=progress, options=self.options)
            path = Path(path)
            name = path.name.lower()
            self.model = model
            from roost.engine.state_io import identity

            self._identity = identity(model)
            self.info = LoadedInfo(path, path.name, model.config.label, strategy, model.version,
                                   model.vocab_size, model.version == 7 and "g1" in name,
                                   getattr(model, "load_seconds", 0.0))
            return self.info

    @property
    def identity(self) -> str:
        """The loaded model's identity for saved states (roost.engine.state_io.identity); "" when none."""
        return self._identity if self.model is not None else ""

    def unload(self) -> None:
        with self._lock:
            self._unload()

    def _unload(self) -> None:
        # the model and its states go by reference counting (they hold no cycles); this core never
        # runs the cyclic collector: where that may run is the caller's business (the app keeps it
        # on its UI thread, see roost.gui.app.keep_gc_on_ui_thread)
        self.model, self.info = None, None
        self._personas = {}
        with self._chats_lock:
            self._chats.clear()
        self.cache.clear()

    # --- chat ----------------------------------------------------------------------------------
    def chat(self, key, history: list[tuple[str, str]], text: str, *, params, system: str = "",
             think: bool | str | None = None, on_piece: Callable[[str], None] | None = None, stop_flag=None,
             reasoning: bool | None = None, path: list[int] | None = None, message: int | None = None,
             persona: str | Path | None = None, on_progress: Callable[[int, int], None] | None = None) -> Reply:
        """One turn of conversation `key`. `history` is [(role, shown text), ...] before this turn.
        `reasoning`: use the G1 thinking format (default: when the loaded model is a G1 one); `think`:
        False, True or a level "low" / "medium" / "high" (roost.engine.prompts).

        With saved states (:attr:`states`): `path` is the stored message ids of `history` and
        `message` the id of the reply to come. When this process does not remember the
        conversation as far as a saved reply state reaches (after a restart, or on another
        branch), the turn resumes from the nearest such state on `path`; after the reply its state
        is saved under `message`.

        `persona`: a state-tuning file (roost.engine.tuned_state) the conversation starts from
        instead of the model's own starting state; its states are kept apart from other chats'
        (TunedStateMismatchError, a RoostError, when it does not fit the model)."""
        from roost.engine.prompts import (G1_CHAT, Message, build_prompt, default_format, split_reasoning,
                                          think_hint)
        from roost.engine.resume import generate_resumed, resumable_ids

        with self._lock:
            model = self._need_model()
            reasoning = self.info.reasoning if reasoning is None else reasoning
            fmt = G1_CHAT if reasoning else default_format(model.vocab_size)
            think = think if reasoning else None
            start = self._persona_start(model, persona)  # ([] and "", or the persona's token and text)
            with self._chats_lock:
                remembered = self._chats.pop(key, None)
                self._replying, self._forgotten = key, False
            seen = remembered[3] if remembered and remembered[:3] == (system, think, start[1]) else []
            turns, same = [], True  # (role, shown, Message): as the model saw them up to the first change
            matched = 0
            for i, (role, content) in enumerate(history):
                same = same and i < len(seen) and seen[i][:2] == (role, content)
                matched += same
                turns.append(seen[i] if same else (role, content, Message(role, content)))
            if self.states is not None and path is not None and len(path) == len(history) and matched < len(history):
                saved = self._from_saved(key, path, history, system, matched, start[1])
                if saved:
                    turns = saved + turns[len(saved):]
            # the model sees the thinking hint after the question; the conversation shows the question
            turns.append(("user", text, Message("user", text + think_hint(think))))
            messages = ([Message("system", system)] if system else []) + [m for _r, _c, m in turns]
            prompt = start[1] + build_prompt(fmt, messages, think=think, hint=False)
            ids = resumable_ids(self.cache, model, prompt)
            done = generate_resumed(model, self.cache, ids, params.with_stops(fmt.stop_strings), text=prompt,
                                    stop_flag=stop_flag, on_piece=on_piece, on_progress=on_progress)
            r = done.result
            if r is None:  # stopped while reading the prompt
                return Reply("", "", "cancelled", 0, done.fed_tokens, 0, 0.0)
            raw = r.text
            thought, answer = (split_reasoning(raw, thinking=think is not False) if reasoning and think is not None
                               else ("", raw.strip()))
            # the reply as the model wrote it after "Assistant:" (G1: the prompt's "<think" opening too)
            opening = fmt.reply_prefix(think)[len(fmt.assistant) + 1:]
            turns.append(("assistant", answer, Message("assistant", opening + raw, verbatim=True)))
            with self._chats_lock:
                if not self._forgotten:
                    self._chats[key] = (system, think, start[1], turns)
                while len(self._chats) > KEEP_CHATS:
                    self._chats.popitem(last=False)
                self._replying = None
            context = len(ids) - len(start[0]) + r.n_fed if r.state is not None else 0
            if self.states is not None and message is not None and r.state is not None and r.n_fed:
                fed = r.tokens[:r.n_fed]
                self._keep(key, message, r.state, system, turns, ids + fed, prompt + model.tokenizer.decode(fed),
                           start[1])
            return Reply(answer, thought, r.finish_reason, len(r.tokens), done.fed_tokens, context,
                         r.tokens_per_second)

    def _persona_start(self, model, persona) -> tuple[list[int], str]:
        """A persona's starting state, put in the prefix cache under a token of its own (an id no
        text has, negative) and a text of its own: every prompt of its chats begins with them, so
        their states are never mixed with other chats' and each resumes from the persona's start.
        ([], "") without a persona."""
        if persona is None:
            return [], ""
        from roost.engine.tuned_state import load_tuned_state

        p = Path(persona)
        try:
            st = p.stat()
            marker = f"{p.name}:{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            marker = p.name
        found = self._personas.get(marker)
        if found is None:
            tuned = load_tuned_state(p)  # a clear RoostError when damaged or missing
            found = (model.start_state(tuned), [-1 - (zlib.crc32(marker.encode()) & 0x3FFFFFFF)])
            self._personas = {marker: found}  # one at a time: a few MB each
        state, token = found
        text = f"\x00persona {marker}\x00"
        self.cache.store(model, token, state)  # again each time: the cache may have let it go
        self.cache.remember_text(model, text, token)
        return token, text

    def _from_saved(self, key, path, history, system, matched, persona="") -> list | None:
        """The turns of `history` that a saved reply state covers, with that state put in the
        prefix cache (its tokens and text): None when no saved state goes further than `matched`."""
        from roost.engine.prompts import Message

        try:
            found = self.states.nearest(key, path, self.model, self._identity + persona)
        except Exception:  # noqa: BLE001 -- saved states are an optimisation: re-read the text instead
            log.exception("reading saved states failed")
            return None
        if found is None:
            return None
        index, state, meta = found
        try:
            turns = [(r, shown, Message(role, content, bool(verbatim)))
                     for r, shown, role, content, verbatim in meta["turns"]]
            ids, text = [int(t) for t in meta["tokens"]], meta["text"]
        except (KeyError, TypeError, ValueError):
            return None
        if index + 1 <= matched or meta.get("system") != system or len(turns) != index + 1 \
                or not text.startswith(persona) \
                or [t[:2] for t in turns] != [tuple(h) for h in history[:index + 1]] \
                or state.n_tokens != len(ids) - (1 if persona else 0):  # a persona's token is never fed
            return None
        self.cache.store(self.model, ids, state)
        self.cache.remember_text(self.model, text, ids)
        return turns

    def _keep(self, key, message, state, system, turns, ids, text, persona="") -> None:
        meta = {"system": system, "tokens": ids, "text": text,
                "turns": [[r, shown, m.role, m.content, m.verbatim] for r, shown, m in turns]}
        try:
            self.states.keep(key, message, state, meta, model=self._identity + persona)
        except Exception:  # noqa: BLE001 -- the chat goes on; it re-reads its text after a restart
            log.exception("saving the state failed")

    def forget(self, key) -> None:
        """Drop what is remembered of a conversation (it was deleted); its states age out of the cache."""
        with self._chats_lock:  # not the generation lock: this never waits for a reply
            self._chats.pop(key, None)
            if key == self._replying:
                self._forgotten = True

    # --- completion ----------------------------------------------------------------------------
    def complete(self, prompt: str, *, params, on_piece: Callable[[str], None] | None = None,
                 stop_flag=None, on_progress: Callable[[int, int], None] | None = None) -> Reply:
        r = self.generate(prompt, params=params, on_piece=on_piece, stop_flag=stop_flag, on_progress=on_progress)
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
                 on_piece: Callable[[str], None] | None = None, stop_flag=None,
                 on_progress: Callable[[int, int], None] | None = None):
        """One generation on a text or token-id prompt, from `state` (None: a fresh state), holding
        the lock. Returns the engine's GenerationResult (text, tokens, finish_reason, state, ...)."""
        from roost.engine.generate import Generation

        with self.exclusive() as model:
            gen = Generation(model, prompt, params, state=state, stop_flag=stop_flag, on_prefill_progress=on_progress)
            for piece in gen:
                if on_piece:
                    on_piece(piece)
            return gen.result

    def _need_model(self):
        if self.model is None:
            from roost.engine.errors import RoostError

            raise RoostError("No model is loaded. Load one on the Models page.\n尚未加载模型，请在“模型”页面加载。")
        return self.model
