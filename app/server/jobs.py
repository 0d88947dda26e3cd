"""Generation jobs for the API server: one worker thread decodes them together on the shared Runtime.

The event loop never touches the model. A request becomes a :class:`Job`; the :class:`Worker`
thread admits jobs first come, first served, up to `max_batch` replies at once (continuous
batching): each step feeds one token of every running reply in one forward pass
(roost.engine.model.RWKV.forward_batch: the weights are read once for all of them), replies join
as soon as their prompt is read and leave as soon as they end, and a new prompt is read in chunks
between decode steps so that a long one does not stall the others. Each reply keeps its own
sampling, stop strings, constraint and logprobs (roost.engine.generate.Decoder). The prompt is
resumed from the longest cached prefix, and each reply's state is cached when it ends.

The worker holds the Runtime a slice of steps at a time (the app's own chat waits for the slice,
and the jobs for the chat). Text pieces go back to the event loop through an asyncio queue.
Setting a job's stop flag (its client left, or the server stops) ends it within one step; a job
stopped while still waiting is skipped.
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


class _Reply:
    """One reply being decoded: its job, its index among the job's choices, its Decoder, the token
    to feed next, and where its logprobs stand."""

    def __init__(self, job, index, ids, decoder, release):
        self.job, self.index, self.ids = job, index, ids
        self.decoder, self.release = decoder, release
        self.token: int | None = None

    @property
    def result(self):
        return self.decoder.result


class _Reading:
    """A job whose prompt is being read, a chunk per scheduler step."""

    def __init__(self, job, ids, state, cached):
        self.job, self.ids, self.state, self.cached = job, ids, state, cached
        self.pos = cached  # the next prompt token to feed


def _decoder(model, params, logprobs, constraint):
    from roost.engine.generate import Decoder

    return Decoder(model, params, logprobs=logprobs, constraint=constraint)


class Worker:
    """The one thread that runs jobs, decoding their replies together, on the shared Runtime."""

    SLICE_SECONDS = 0.25  # the Runtime is let go this often, so that the app's chat can have it
    READ_CHUNK = 128  # prompt tokens of one request read in one pass
    READ_BUDGET = 1024  # prompt tokens read between two decode steps (a long prompt waits its turn in pieces)

    def __init__(self, runtime, cache: PrefixCache | None = None, *, max_queue: int = 64, max_batch: int = 16):
        self.runtime = runtime
        # the Runtime's own cache by default: the app's chats and the API resume from the same states
        if cache is None:
            cache = getattr(runtime, "cache", None)
        self.cache = cache if cache is not None else PrefixCache()
        self.max_queue = max_queue
        self.max_batch = max(1, max_batch)
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._waiting: list[Job] = []
        self._running: list[Job] = []  # admitted: reading their prompt or decoding
        self._thread: threading.Thread | None = None
        self._closed = False
        # the thread's own: replies decoding (aligned with the batch's rows), prompts being read
        self._replies: list[_Reply] = []
        self._batch = None
        self._reading: list[_Reading] = []
        self._model = None
        self._outcomes: dict[int, dict] = {}  # id(job) -> {index: Choice}, and its timings
        self._reading_new: list[Job] = []
        # counters, for /roost/stats and the tests
        self.completed = self.cancelled = self.rejected = self.failed = 0
        self.generated_tokens = 0
        self.last: Outcome | None = None
        self.largest_batch = 0  # the most replies decoded in one step so far

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def busy(self) -> bool:
        return bool(self._running)

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
        """Stop every job (running or waiting) and end the thread."""
        with self._lock:
            self._closed = True
            jobs = [*self._waiting, *self._running]
        for job in jobs:
            job.cancel()
        self._queue.put(None)

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def stats(self) -> dict:
        return {"waiting": self.waiting, "busy": self.busy, "running": len(self._running),
                "max_queue": self.max_queue, "max_batch": self.max_batch, "largest_batch": self.largest_batch,
                "completed": self.completed, "cancelled": self.cancelled, "rejected": self.rejected,
                "failed": self.failed, "generated_tokens": self.generated_tokens,
                "cache": self.cache.stats().to_dict()}

    # --- the thread ----------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            if not self._running:
                with self._lock:
                    if not self._waiting and self._queue.empty():
                        # nothing to do: the thread ends, and its OpenMP worker pool with it, which
                        # would slow the app's own replies (roost.engine.threads); submit starts another
                        self._thread = None
                        return
                if not self._accept(self._queue.get()):  # a job is on its way (or the end)
                    return
            if self._take_new() is None:
                return
            if not self._running:
                continue
            try:
                with self.runtime.exclusive() as model:
                    self._slice(model)
            except Exception as e:  # noqa: BLE001 -- no model (unloaded), or a failure of the model itself
                self._fail_all(e)
            time.sleep(0.002)  # let a thread that waits for the Runtime (the app's own chat) have its turn

    def _take_new(self):
        """Move the jobs queued so far into the running set while there is room; None on close."""
        while True:
            with self._lock:
                room = sum(j.n for j in self._running) < self.max_batch
            if not room:
                return True
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return True
            if not self._accept(job):
                return None

    def _accept(self, job) -> bool:
        """A job taken from the queue joins the running ones (its prompt is read next); False for
        the end (close() was called: every admitted job then ends)."""
        if job is None:
            self._fail_all(Closed())
            return False
        with self._lock:
            self._waiting.remove(job)
            if job.stop_flag.is_set():  # stopped while waiting
                self.cancelled += 1
                job.emit("error", Cancelled())
                return True
            self._running.append(job)
        self._reading_new.append(job)
        return True

    def _slice(self, model) -> None:
        """Read prompts and decode steps, holding the model, for about SLICE_SECONDS."""
        if model is not self._model:  # another model now (the app loaded one): what ran on the old one ends
            if self._replies or self._reading:
                from roost.engine.errors import RoostError

                self._fail_running(RoostError("The model was changed while this request was running."))
            self._model = model
        end = time.monotonic() + self.SLICE_SECONDS
        while time.monotonic() < end:
            self._admit(model)
            budget = self.READ_BUDGET  # prompt tokens read before the next decode step
            while self._reading and budget > 0:
                budget -= self._read_some(model)
            if self._replies:
                self._step(model)
            elif not self._reading:
                return
            if self._take_new() is None:
                return

    def _admit(self, model) -> None:
        """Start reading the prompts of newly admitted jobs (their cached prefix looked up)."""
        while self._reading_new:
            job = self._reading_new.pop(0)
            try:
                ids = list(job.prompt(model, self.runtime.info))
                if not ids:  # an empty prompt: start from end-of-text, as a document start
                    ids = [model.tokenizer.eos_token or 0]
                if job.stops is not None:
                    job.params = job.params.with_stops(tuple(job.stops(model, self.runtime.info)))
                bad = [t for t in ids if not 0 <= t < model.vocab_size]
                if bad:
                    raise ValueError(f"token ids out of range for vocabulary {model.vocab_size}: {bad[:5]}")
            except Exception as e:  # noqa: BLE001 -- reported to its client
                self._end_job(job, e)
                continue
            cached, state = self.cache.lookup(model, ids)
            states = getattr(self.runtime, "states", None)
            if states is not None and len(ids) - cached > self.READ_CHUNK:  # worth a look on disk
                try:
                    found = states.longest_prefix(ids, model, self.runtime.identity, longer_than=cached)
                except Exception:  # noqa: BLE001 -- saved states are an optimisation: read the prompt
                    log.exception("reading saved states failed")
                    found = None
                if found is not None:
                    cached, state = found
                    self.cache.store(model, ids[:cached], state)
            job.emit("started")
            self._outcomes[id(job)] = {"choices": {}, "prompt": len(ids), "cached": cached,
                                       "started": time.monotonic()}
            self._reading.append(_Reading(job, ids, state, cached))

    def _read_some(self, model) -> int:
        """Feed one chunk of the first prompt being read; when it is read, its replies join the
        batch. Returns how many prompt tokens were fed (at least 1, so that a caller's budget ends)."""
        from roost.engine.generate import LogprobRelease

        r = self._reading[0]
        job = r.job
        if job.stop_flag.is_set():
            self._reading.pop(0)
            self.cache.record(len(r.ids), r.pos - r.cached)
            self._finish_job(job, cancelled_early=True)
            return 1
        head_end = len(r.ids) - 1
        fed = 1
        if r.pos < head_end:
            chunk = r.ids[r.pos:min(r.pos + self.READ_CHUNK, head_end)]
            _, r.state = model.forward(chunk, r.state)
            r.pos += len(chunk)
            fed += len(chunk)
            if r.pos < head_end:
                return fed
            self.cache.store(model, r.ids[:-1], r.state)
        self._reading.pop(0)
        self.cache.record(len(r.ids), len(r.ids) - r.cached)
        try:
            logits, state = model.forward(r.ids[-1:], r.state)
        except Exception as e:  # noqa: BLE001
            self._end_job(job, e)
            return fed
        joined = []
        for i in range(job.n):
            params = job.params if i == 0 or job.params.seed is None else job.params.replace(seed=job.params.seed + i)
            try:
                constraint = job.constraint(model) if job.constraint is not None else None
                dec = _decoder(model, params, job.logprobs, constraint)
            except Exception as e:  # noqa: BLE001
                self._end_job(job, e)
                return fed
            reply = _Reply(job, i, r.ids, dec, LogprobRelease(model.tokenizer))
            if self._advance(reply, logits[None] if logits.dim() == 1 else logits, 0, state):
                joined.append((reply, state))
        if joined:
            from roost.engine.model import BatchState

            states = [st for _r, st in joined]
            self._batch = self._batch.join(states) if self._batch is not None else BatchState.stack(states)
            self._replies += [rep for rep, _st in joined]
        return fed

    def _advance(self, reply, logits, row, state_after) -> bool:
        """Sample reply's next token from logits[row]; emit its text; True while it goes on."""
        job, dec = reply.job, reply.decoder
        text, token = (dec.cancel(), None) if job.stop_flag.is_set() else dec.step(logits[row])
        entries = reply.release.take(dec.result) if job.logprobs is not None else []
        if job.stream and (text or entries):
            job.emit("piece", (reply.index, text, entries))
        if token is None:
            self._reply_done(reply, state_after)
            return False
        reply.token = token
        return True

    def _step(self, model) -> None:
        """One token of every decoding reply, in one forward pass."""
        tokens = [rep.token for rep in self._replies]
        # (the running batch is this worker's alone: the steps write its new state over the old)
        logits, self._batch = model.forward_batch(tokens, self._batch, in_place=True)
        self.largest_batch = max(self.largest_batch, len(tokens))
        keep = []
        for b, rep in enumerate(self._replies):
            rep.result.n_fed = len(rep.result.tokens)
            if self._advance(rep, logits, b, lambda b=b: self._batch.state(b)):
                keep.append(b)
        if len(keep) != len(self._replies):
            self._replies = [self._replies[b] for b in keep]
            self._batch = self._batch.select(keep) if keep else None

    def _reply_done(self, reply, state_after) -> None:
        """A reply ended: cache its state (after the tokens it fed), give out its last logprobs,
        and end its job when its last reply is done."""
        job, res = reply.job, reply.result
        if job.stream and job.logprobs is not None:
            rest = reply.release.take(res, final=True)
            if rest:
                job.emit("piece", (reply.index, "", rest))
        if res.n_fed and res.finish_reason != "cancelled":
            state = state_after() if callable(state_after) else state_after
            key = reply.ids + res.tokens[:res.n_fed]
            self.cache.store(self._model, key, state)
            states = getattr(self.runtime, "states", None)
            if states is not None:  # a long conversation goes on from here after a restart too
                try:
                    states.keep_tokens(key, state, model=self.runtime.identity)
                except Exception:  # noqa: BLE001
                    log.exception("saving a state failed")
        from roost.engine.generate import LogprobRelease

        kept = LogprobRelease(self._model.tokenizer).take(res, final=True) if job.logprobs is not None else []
        info = self._outcomes.get(id(job))
        if info is None:
            return
        info["choices"][reply.index] = Choice(res.text, res.finish_reason, len(res.tokens), kept)
        self.generated_tokens += len(res.tokens)
        if len(info["choices"]) == job.n:
            self._finish_job(job)

    def _finish_job(self, job, cancelled_early: bool = False) -> None:
        info = self._outcomes.pop(id(job), None)
        with self._lock:
            if job in self._running:
                self._running.remove(job)
        if info is None:
            return
        choices = [info["choices"].get(i) or Choice("", "cancelled", 0) for i in range(job.n)]
        started = info["started"]
        outcome = Outcome(choices, info["prompt"], info["cached"], started - job.created, time.monotonic() - started)
        job.outcome = self.last = outcome
        if cancelled_early or all(c.finish_reason == "cancelled" for c in choices):
            self.cancelled += 1
        else:
            self.completed += 1
        job.emit("done", outcome)

    def _end_job(self, job, error: BaseException) -> None:
        """A job that cannot go on: its replies leave the batch, its client gets the error."""
        from roost.engine.errors import RoostError

        if not isinstance(error, (RoostError, ValueError, Cancelled, Closed)):
            log.error("generation failed: %s", "".join(traceback.format_exception(error)))
        keep = [b for b, rep in enumerate(self._replies) if rep.job is not job]
        if len(keep) != len(self._replies):
            self._replies = [self._replies[b] for b in keep]
            self._batch = self._batch.select(keep) if keep else None
        self._reading = [r for r in self._reading if r.job is not job]
        self._outcomes.pop(id(job), None)
        with self._lock:
            if job in self._running:
                self._running.remove(job)
        if isinstance(error, (Cancelled, Closed)):
            self.cancelled += 1
            job.emit("error", Cancelled())
        else:
            self.failed += 1
            job.emit("error", error)

    def _fail_running(self, error: BaseException) -> None:
        jobs = {id(r.job): r.job for r in self._replies} | {id(r.job): r.job for r in self._reading}
        for job in jobs.values():
            self._end_job(job, error)
        self._replies, self._batch, self._reading = [], None, []

    def _fail_all(self, error: BaseException) -> None:
        """Every admitted job ends with `error` (no model, the server closing, a failed step)."""
        self._fail_running(error)
        for job in list(self._reading_new):
            self._end_job(job, error)
        self._reading_new.clear()
        with self._lock:
            left = list(self._running)
        for job in left:
            self._end_job(job, error)
