"""Generation jobs for the API server: one worker thread runs them in order on the shared Runtime.

The event loop never touches the model. A request becomes a :class:`Job`; the :class:`Worker`
thread takes jobs first come, first served, holds the Runtime (so the app's own chat waits for the
job and the job for it), feeds the prompt from the longest cached prefix, and streams text pieces
back to the event loop through an asyncio queue. Setting a job's stop flag (its client left, or
the server stops) ends it within one token; a job stopped while still waiting is skipped.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field

from roost.engine.resume import PrefixCache

log = logging.getLogger("roost.server")



class QueueFull(Exception):
    pass


class Closed(Exception):
    pass


class Cancelled(Exception):
    """The job was stopped before its generation began."""


@dataclass
class Choice:
    text: str
    finish_reason: str  # the engine's: "stop" | "length" | "cancelled"
    tokens: int
    logprobs: list = field(default_factory=list)  # TokenLogprob per token of the text, when asked


@dataclass
class Outcome:
    choices: list[Choice]
    prompt_tokens: int
    cached_tokens: int  # prompt tokens resumed from the prefix cache, not processed
    queue_seconds: float
    seconds: float

    text = property(lambda self: self.choices[0].text)
    finish_reason = property(lambda self: self.choices[0].finish_reason)
    completion_tokens = property(lambda self: sum(c.tokens for c in self.choices))


# --- prompts -------------------------------------------------------------------------------------
def chat_format(model, info, think=None):
    """The prompt format for the loaded model, and the text that starts the assistant's reply.
    G1: `think` False/None answers directly (the template's fake think), else a thinking level."""
    from roost.engine.prompts import G1_CHAT, default_format

    if info is not None and info.reasoning:
        return G1_CHAT, G1_CHAT.reply_prefix(False if think is None else think)
    fmt = default_format(model.vocab_size)
    return fmt, fmt.reply_prefix()


def thinks(info, think) -> bool:
    """Whether a reply begins inside a thought (its text is then split into reasoning and answer)."""
    return info is not None and info.reasoning and think not in (None, False)


def chat_tokens(model, info, messages: Sequence[tuple[str, str]], lead: str = "", think=None) -> list[int]:
    """Token ids of a chat transcript that ends where the assistant's reply begins.

    Each turn is tokenised on its own, and an assistant turn as the reply prefix, then its text:
    the same pieces as when that reply was generated. So the prompt of a continued chat starts
    with exactly the tokens of the previous request's prompt, and the prefix cache finds it.
    ``lead``: text the reply is begun with (a tool call's opening, roost.server.tools). ``think``:
    a G1 model's thinking (False/None: none; True, "low", "medium", "high": roost.engine.prompts),
    its length hint after the last user message.
    """
    from roost.engine.prompts import Message, clean, think_hint

    fmt, prefix = chat_format(model, info, think)
    # an earlier reply: after the empty thought, closed (the model writes the ">" the prompt leaves open)
    done_prefix = fmt.reply_prefix(False) + ">" if fmt.reasoning else prefix
    enc = model.tokenizer.encode
    last_user = max((i for i, (role, _c) in enumerate(messages) if role == "user"), default=-1)
    ids: list[int] = []
    for i, (role, content) in enumerate(messages):
        if role == "assistant":
            ids += enc(done_prefix) + enc(" " + clean(content)) + enc("\n\n")
        else:
            hint = think_hint(think) if fmt.reasoning and i == last_user else ""
            ids += enc(fmt.turn(Message(role, clean(content) + hint if hint else content)))
    if lead:  # a tool call: begun after the closed empty thought (or after "Assistant:")
        return ids + enc(done_prefix) + enc(" " + lead)
    return ids + enc(prefix)


def chat_stops(model, info) -> tuple[str, ...]:
    return chat_format(model, info)[0].stop_strings


# --- jobs ----------------------------------------------------------------------------------------
class Job:
    """One request's generation. ``prompt`` is a function (model, info) -> token ids, called
    once the job holds the model; ``stops`` (model, info) -> extra stop strings, likewise;
    ``constraint`` (model) -> a Constraint for each reply, or None. ``n`` replies branch from the
    prompt; ``logprobs``: None, or how many alternatives to report with each token's logprob."""

    def __init__(self, prompt, params, *, stops=None, stream: bool = False, n: int = 1,
                 logprobs: int | None = None, constraint=None, loop: asyncio.AbstractEventLoop | None = None):
        from roost.engine.generate import StopFlag

        self.prompt = prompt
        self.params = params
        self.stops = stops
        self.stream = stream
        self.n = n
        self.logprobs = logprobs
        self.constraint = constraint
        self.stop_flag = StopFlag()
        self.loop = loop or asyncio.get_running_loop()
        self.events: asyncio.Queue = asyncio.Queue()
        self.created = time.monotonic()
        self.outcome: Outcome | None = None

    def cancel(self) -> None:
        self.stop_flag.set()

    def emit(self, kind: str, value=None) -> None:
        """From the worker thread: ("started", None), ("piece", (choice index, text, logprobs)),
        ("done", Outcome), ("error", exception). A piece's logprobs are the TokenLogprob entries
        of the tokens its text completes (when asked); the last piece of a reply may have no text."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the event loop is gone (the server stopped)
            pass


class Worker:
    """The one thread that runs jobs, in order, on the shared Runtime."""

    def __init__(self, runtime, cache: PrefixCache | None = None, *, max_queue: int = 64):
        self.runtime = runtime
        # the Runtime's own cache by default: the app's chats and the API resume from the same states
        if cache is None:
            cache = getattr(runtime, "cache", None)
        self.cache = cache if cache is not None else PrefixCache()
        self.max_queue = max_queue
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._waiting: list[Job] = []
        self._current: Job | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        # counters, for /roost/stats and the tests
        self.completed = self.cancelled = self.rejected = self.failed = 0
        self.generated_tokens = 0
        self.last: Outcome | None = None

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def busy(self) -> bool:
        return self._current is not None

    def submit(self, job: Job) -> None:
        """Queue a job; QueueFull when `max_queue` jobs already wait, Closed after close()."""
        with self._lock:
            if self._closed:
                raise Closed()
            if len(self._waiting) >= self.max_queue:
                self.rejected += 1
                raise QueueFull()
            self._waiting.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="roost-api-worker", daemon=True)
                self._thread.start()
        self._queue.put(job)

    def close(self) -> None:
        """Stop every job (running or waiting) and end the thread after the current one."""
        with self._lock:
            self._closed = True
            jobs = [*self._waiting, *([self._current] if self._current else [])]
        for job in jobs:
            job.cancel()
        self._queue.put(None)

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def stats(self) -> dict:
        return {"waiting": self.waiting, "busy": self.busy, "max_queue": self.max_queue,
                "completed": self.completed, "cancelled": self.cancelled, "rejected": self.rejected,
                "failed": self.failed, "generated_tokens": self.generated_tokens,
                "cache": self.cache.stats().to_dict()}

    # --- the thread ----------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            with self._lock:
                self._waiting.remove(job)
                self._current = job
            try:
                if job.stop_flag.is_set():
                    raise Cancelled()
                outcome = self._run(job)
                job.outcome = self.last = outcome
                self.generated_tokens += outcome.completion_tokens
                if outcome.finish_reason == "cancelled":
                    self.cancelled += 1
                else:
                    self.completed += 1
                job.emit("done", outcome)
            except Cancelled as e:
                self.cancelled += 1
                job.emit("error", e)
            except Exception as e:  # noqa: BLE001 -- reported to the client as an error object
                from roost.engine.errors import RoostError

                if not isinstance(e, (RoostError, ValueError)):
                    log.error("generation failed: %s", traceback.format_exc())
                self.failed += 1
                job.emit("error", e)
            finally:
                with self._lock:
                    self._current = None
            # let a thread that waits for the Runtime (the app's own chat) have its turn
            time.sleep(0.002)

    def _run(self, job: Job) -> Outcome:
        from roost.engine.generate import LogprobRelease
        from roost.engine.resume import generate_resumed

        with self.runtime.exclusive() as model:
            started = time.monotonic()
            if job.stop_flag.is_set():
                raise Cancelled()
            info = self.runtime.info
            ids = list(job.prompt(model, info))
            if not ids:  # an empty prompt: start from end-of-text, as a document start
                ids = [model.tokenizer.eos_token or 0]
            params = job.params
            if job.stops is not None:
                extra = tuple(job.stops(model, info))
                params = params.with_stops(extra)
            job.emit("started")
            current = {}  # the reply being generated: its index, Generation and logprob release

            def on_choice(i, gen):
                if current and job.stream:
                    finish_choice()
                current.update(index=i, gen=gen, release=LogprobRelease(model.tokenizer))

            def finish_choice():  # the logprobs still held of the reply that ended
                if job.logprobs is not None:
                    rest = current["release"].take(current["gen"].result, final=True)
                    if rest:
                        job.emit("piece", (current["index"], "", rest))

            def on_piece(piece):
                entries = current["release"].take(current["gen"].result) if job.logprobs is not None else []
                job.emit("piece", (current["index"], piece, entries))

            done = generate_resumed(model, self.cache, ids, params, stop_flag=job.stop_flag, n=job.n,
                                    on_choice=on_choice, on_piece=on_piece if job.stream else None,
                                    logprobs=job.logprobs,
                                    constraint=(lambda: job.constraint(model)) if job.constraint is not None else None)
            if current and job.stream:
                finish_choice()
            if done.result is None:  # stopped while reading the prompt
                return Outcome([Choice("", "cancelled", 0)], len(ids), done.cached_tokens, started - job.created,
                               time.monotonic() - started)
            choices = []
            for r in done.results:
                kept = LogprobRelease(model.tokenizer).take(r, final=True) if job.logprobs is not None else []
                choices.append(Choice(r.text, r.finish_reason, len(r.tokens), kept))
            return Outcome(choices, len(ids), done.cached_tokens, started - job.created, time.monotonic() - started)
