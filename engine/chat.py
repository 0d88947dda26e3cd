"""A conversation with a model, keeping the RWKV state so a new turn only processes new text.

The state remembers the exact text it has seen. A new turn renders the whole transcript with the
prompt format; when the transcript extends what the state has seen (the usual case) only the new
part is fed, otherwise (an edited message, a regenerated reply) it starts from the longest cached
prefix it still has, or from scratch.
"""

from __future__ import annotations

from roost.engine.generate import Generation, StopFlag
from roost.engine.prompts import Message, PromptFormat, build_prompt
from roost.engine.sampling import SamplingParams


class ChatSession:
    def __init__(self, model, fmt: PromptFormat, params: SamplingParams, *,
                 system: str | None = None, think: bool | None = None):
        self.model = model
        self.fmt = fmt
        self.params = params.with_stops(fmt.stop_strings)
        self.think = think
        self.messages: list[Message] = [Message("system", system)] if system else []
        self._state = None
        self._seen = ""  # the text the state has seen
        self.last_fed_tokens = 0  # tokens processed by the last turn's prompt (for tests and stats)

    def reset(self) -> None:
        self.messages = [m for m in self.messages if m.role == "system"]
        self._state, self._seen = None, ""

    def send(self, text: str, *, stop_flag: StopFlag | None = None) -> Generation:
        """Add a user message; return the reply's :class:`Generation` (iterate it to stream).

        When the generation ends, call :meth:`finish` with it (the iterator does not know when
        its consumer stops early)."""
        self.messages.append(Message("user", text))
        prompt = build_prompt(self.fmt, self.messages, think=self.think)
        if self._state is not None and prompt.startswith(self._seen) and len(prompt) > len(self._seen):
            feed, state = prompt[len(self._seen):], self._state
        else:
            feed, state = prompt, None
        ids = self.model.tokenizer.encode(feed)
        self.last_fed_tokens = len(ids)
        gen = Generation(self.model, ids, self.params, state=state, stop_flag=stop_flag)
        gen.chat_prompt = prompt
        return gen

    def finish(self, gen: Generation) -> str:
        """Record the reply of a finished (or stopped) generation; return its text."""
        r = gen.result
        reply = r.text
        # kept verbatim: the transcript then extends exactly the text the state has seen
        self.messages.append(Message("assistant", reply, verbatim=True))
        if r.state is not None:
            fed = self.model.tokenizer.decode(r.tokens[: r.n_fed])
            self._state, self._seen = r.state, gen.chat_prompt + fed
        else:
            self._state, self._seen = None, ""
        return reply
