"""A job's events on their way to an HTTP response: waited for without blocking the event loop,
stopped when the client leaves, kept alive, turned into server-sent events; and a G1 reply's
thought told apart from its answer as it streams."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

from fastapi import Request

from roost.server.fields import ApiError
from roost.server.jobs import Cancelled, Job

KEEPALIVE_SECONDS = 15.0  # an SSE comment while a streaming request waits its turn


class ThoughtSplitter:
    """A G1 reply streaming in, told apart as it comes: its thought (reasoning_content) and its
    answer (content). The prompt leaves "<think" (thinking) or the fake think "</think" open; the
    model's first ">" closes it."""

    END = "</think>"

    def __init__(self, thinking: bool):
        self.in_thought = thinking
        self.opened = False
        self.buf = ""

    def feed(self, piece: str) -> list[tuple[str, str]]:
        self.buf += piece
        if not self.opened:
            if not self.buf:
                return []
            self.buf = self.buf.removeprefix(">")
            self.opened = True
        out = []
        if self.in_thought:
            end = self.buf.find(self.END)
            if end < 0:  # keep back what may be the start of "</think>"
                keep = next((k for k in range(len(self.END) - 1, 0, -1) if self.buf.endswith(self.END[:k])), 0)
                out.append(("reasoning", self.buf[:len(self.buf) - keep]))
                self.buf = self.buf[len(self.buf) - keep:]
                return [p for p in out if p[1]]
            out.append(("reasoning", self.buf[:end]))
            self.buf, self.in_thought = self.buf[end + len(self.END):], False
        out.append(("content", self.buf))
        self.buf = ""
        return [p for p in out if p[1]]

    def flush(self) -> list[tuple[str, str]]:
        rest, self.buf = self.buf, ""
        return [("reasoning" if self.in_thought else "content", rest)] if rest else []


async def job_events(job: Job, request: Request, idle: float = 0.5):
    """The job's events as they come; ("idle", None) every `idle` seconds without one. Ends after
    "done" or "error", or (stopping the job) when the client has disconnected."""
    getter, checked = None, time.monotonic()
    try:
        while True:
            if getter is None:
                getter = asyncio.ensure_future(job.events.get())
            done, _ = await asyncio.wait({getter}, timeout=idle)
            if not done or time.monotonic() - checked >= idle:  # also between a stream's pieces
                checked = time.monotonic()
                if await request.is_disconnected():
                    job.cancel()
                    return
            if not done:
                yield "idle", None
                continue
            item, getter = getter.result(), None
            yield item
            if item[0] in ("done", "error"):
                return
    finally:
        if getter is not None:
            getter.cancel()


async def stream_events(job: Job, request: Request):
    """Events for a streaming response: errors and keep-alives already turned into SSE text
    (("error"|"keepalive", text)). The job is stopped whenever the stream ends early: the client
    disconnected, or the response task was cancelled."""
    last = time.monotonic()
    try:
        async with contextlib.aclosing(job_events(job, request)) as events:
            async for kind, value in events:
                if kind == "idle":
                    if time.monotonic() - last >= KEEPALIVE_SECONDS:
                        last = time.monotonic()
                        yield "keepalive", ": keep-alive\n\n"
                    continue
                last = time.monotonic()
                if kind == "error":
                    yield "error", sse(job_error(value).body())
                    return
                yield kind, value
    finally:
        job.cancel()


def job_error(exc: BaseException) -> ApiError:
    from roost.engine.errors import RoostError

    if isinstance(exc, Cancelled):
        return ApiError(503, "The request was cancelled (the server is stopping).", type="server_error",
                        code="cancelled")
    if isinstance(exc, RoostError):
        message = str(exc).splitlines()[0]
        return ApiError(503, message, type="server_error", code="model_not_loaded" if "No model" in message else None)
    if isinstance(exc, ValueError):
        return ApiError(400, str(exc))
    return ApiError(500, f"The server had an error while generating ({type(exc).__name__}).", type="server_error")


def sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
