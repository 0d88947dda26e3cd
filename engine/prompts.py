"""Prompt formats, as pure functions.

World models (RWKV-5/6/7, G1): ``System: ...\\n\\nUser: ...\\n\\nAssistant: ...\\n\\n``. A blank line
(``\\n\\n``) ends a turn in their training data, so blank lines inside a message become single
newlines. RWKV-4 Raven uses ``Bob:`` / ``Alice:``. G1 reasoning models think inside
``<think>...</think>`` before answering. Their templates (RWKV-LM, RWKV-v7/RWKV7-G1x-templates.txt),
followed character by character: no thinking pre-fills the "fake think" ``<think>\\n</think``
(without its ``>``); thinking opens ``<think``, and its length is asked for with a hint after the
user's message: " (think a bit)", " (think)", " (think a lot)" (`THINK_HINTS`). Completion is the
raw text, continued as is (the novel models).

`think` values: None (not a reasoning format), False (answer at once), True (think, no length
hint), "low", "medium", "high" (think a bit / think / think a lot).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Message:
    role: str  # "system" | "user" | "assistant"
    content: str
    verbatim: bool = False  # a reply exactly as the model wrote it (after "Assistant:"), not cleaned


@dataclass(frozen=True)
class PromptFormat:
    name: str
    user: str  # the user's role name in the transcript
    assistant: str
    system: str | None  # None: system text is put at the start without a role
    stop_strings: tuple[str, ...]
    reasoning: bool = False

    def turn(self, message: Message) -> str:
        if message.verbatim:
            return f"{self.assistant}:{message.content}\n\n"
        text = clean(message.content)
        if message.role == "user":
            return f"{self.user}: {text}\n\n"
        if message.role == "assistant":
            return f"{self.assistant}: {text}\n\n"
        if message.role == "system":
            return f"{self.system}: {text}\n\n" if self.system else f"{text}\n\n"
        raise ValueError(f"unknown role {message.role!r}")

    def reply_prefix(self, think: bool | str | None = None) -> str:
        """What the prompt ends with so that the model writes the assistant's reply."""
        if not self.reasoning or think is None:
            return f"{self.assistant}:"
        return f"{self.assistant}: <think>\n</think" if think is False else f"{self.assistant}: <think"


WORLD_CHAT = PromptFormat("world-chat", "User", "Assistant", "System", ("\n\nUser:", "\n\n"))
G1_CHAT = PromptFormat("g1-chat", "User", "Assistant", "System", ("\n\nUser:",), reasoning=True)
RAVEN_CHAT = PromptFormat("raven-chat", "Bob", "Alice", None, ("\n\nBob:", "\n\n"))
FORMATS = {f.name: f for f in (WORLD_CHAT, G1_CHAT, RAVEN_CHAT)}


THINK_HINTS = {"low": " (think a bit)", "medium": " (think)", "high": " (think a lot)"}


def think_hint(think) -> str:
    """What is added to the user's message to ask for that much thinking ("" for none)."""
    return THINK_HINTS.get(think, "") if isinstance(think, str) else ""


def clean(text: str) -> str:
    """The G1 template's input cleaning: blank lines become single newlines (a blank line ends a
    turn), then the text is stripped."""
    return re.sub(r"\n{2,}", "\n", text.replace("\r\n", "\n")).strip()


def build_prompt(fmt: PromptFormat, messages: list[Message], *, think: bool | str | None = None,
                 hint: bool = True) -> str:
    """The whole transcript, ending where the assistant's next reply begins (the last user
    message carries the thinking hint of `think` unless `hint` is False: it has it already)."""
    hint = think_hint(think) if fmt.reasoning and hint else ""
    if hint and messages and messages[-1].role == "user":
        last = messages[-1]
        messages = [*messages[:-1], Message("user", clean(last.content) + hint)]
    return "".join(fmt.turn(m) for m in messages) + fmt.reply_prefix(think)


def split_reasoning(text: str, thinking: bool = True) -> tuple[str, str]:
    """(reasoning, answer) of a G1 reply; works on partial text. `thinking`: the prompt ended with
    ``<think`` (else with the fake think ``<think>\\n</think``, after which the model closes it)."""
    if not thinking:
        return "", text.removeprefix(">").strip()
    body = text[1:] if text.startswith(">") else text  # the prompt ended with "<think"
    if body.startswith("<think>"):
        body = body[len("<think>"):]
    end = body.find("</think>")
    if end < 0:
        return body.strip(), ""
    return body[:end].strip(), body[end + len("</think>"):].strip()


def default_format(vocab_size: int) -> PromptFormat:
    """Raven chat for the 20B-tokenizer models, World chat for the rest: plain text that every
    tokenizer encodes (bytes and any tokenizer.json too), so a model of another vocabulary that was
    not trained to chat still runs and simply continues the transcript."""
    return RAVEN_CHAT if vocab_size in (50277, 50304) else WORLD_CHAT
