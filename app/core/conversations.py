"""Saved conversations, in SQLite (one file in the user's data folder).

Every change is committed at once, so closing the app (or a crash) loses nothing that was shown.
The store is used from the GUI thread only; SQLite's own locking covers a second Roost process.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    title TEXT NOT NULL,
    system TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    reasoning TEXT NOT NULL DEFAULT '',
    UNIQUE (conversation, position)
);
"""


@dataclass
class Conversation:
    id: int
    title: str
    system: str
    updated: float


@dataclass
class StoredMessage:
    position: int
    role: str  # "user" or "assistant"
    content: str
    reasoning: str = ""


class ConversationStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None)  # autocommit: nothing is pending
        self.db.execute("PRAGMA foreign_keys = ON")
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    # --- conversations -------------------------------------------------------------------------
    def new(self, title: str = "New chat", system: str = "") -> Conversation:
        now = time.time()
        cur = self.db.execute("INSERT INTO conversations (title, system, created, updated) VALUES (?,?,?,?)",
                              (title, system, now, now))
        return Conversation(cur.lastrowid, title, system, now)

    def get(self, conv_id: int) -> Conversation | None:
        row = self.db.execute("SELECT id, title, system, updated FROM conversations WHERE id=?",
                              (conv_id,)).fetchone()
        return Conversation(*row) if row else None

    def list(self, search: str = "") -> list[Conversation]:
        """Newest first; `search` matches titles and message text."""
        if search:
            like = f"%{search}%"
            rows = self.db.execute(
                "SELECT DISTINCT c.id, c.title, c.system, c.updated FROM conversations c "
                "LEFT JOIN messages m ON m.conversation = c.id "
                "WHERE c.title LIKE ? OR m.content LIKE ? ORDER BY c.updated DESC", (like, like))
        else:
            rows = self.db.execute("SELECT id, title, system, updated FROM conversations ORDER BY updated DESC")
        return [Conversation(*r) for r in rows]

    def rename(self, conv_id: int, title: str) -> None:
        self.db.execute("UPDATE conversations SET title=? WHERE id=?", (title.strip() or "Chat", conv_id))

    def set_system(self, conv_id: int, system: str) -> None:
        self.db.execute("UPDATE conversations SET system=? WHERE id=?", (system, conv_id))

    def delete(self, conv_id: int) -> None:
        self.db.execute("DELETE FROM conversations WHERE id=?", (conv_id,))

    # --- messages ------------------------------------------------------------------------------
    def messages(self, conv_id: int) -> list[StoredMessage]:
        rows = self.db.execute("SELECT position, role, content, reasoning FROM messages "
                               "WHERE conversation=? ORDER BY position", (conv_id,))
        return [StoredMessage(*r) for r in rows]

    def append(self, conv_id: int, role: str, content: str, reasoning: str = "") -> StoredMessage:
        pos = self.db.execute("SELECT COALESCE(MAX(position), -1) + 1 FROM messages WHERE conversation=?",
                              (conv_id,)).fetchone()[0]
        self.db.execute("INSERT INTO messages (conversation, position, role, content, reasoning) "
                        "VALUES (?,?,?,?,?)", (conv_id, pos, role, content, reasoning))
        self._touch(conv_id)
        return StoredMessage(pos, role, content, reasoning)

    def update(self, conv_id: int, position: int, content: str, reasoning: str = "") -> None:
        self.db.execute("UPDATE messages SET content=?, reasoning=? WHERE conversation=? AND position=?",
                        (content, reasoning, conv_id, position))
        self._touch(conv_id)

    def truncate(self, conv_id: int, position: int) -> None:
        """Drop the message at `position` and everything after it (edit and re-run, regenerate)."""
        self.db.execute("DELETE FROM messages WHERE conversation=? AND position>=?", (conv_id, position))
        self._touch(conv_id)

    def _touch(self, conv_id: int) -> None:
        self.db.execute("UPDATE conversations SET updated=? WHERE id=?", (time.time(), conv_id))

    # --- export --------------------------------------------------------------------------------
    def to_markdown(self, conv_id: int, names: tuple[str, str] = ("You", "RWKV")) -> str:
        conv = self.get(conv_id)
        if conv is None:
            return ""
        out = [f"# {conv.title}", ""]
        if conv.system:
            out += [f"> {line}" for line in conv.system.splitlines()] + [""]
        for m in self.messages(conv_id):
            out += [f"**{names[0] if m.role == 'user' else names[1]}:**", ""]
            if m.reasoning:
                out += ["<details><summary>Thinking</summary>", "", m.reasoning, "", "</details>", ""]
            out += [m.content, ""]
        return "\n".join(out)
