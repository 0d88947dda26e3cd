"""Saved conversations, in SQLite (one file in the user's data folder), with branches.

A conversation is a tree of messages: regenerating an answer or editing a question adds a sibling
("version") instead of overwriting, and the conversation remembers which path is shown (its
`leaf`). `messages()` returns that path; each message says which version it is ("2 of 3"), and
`switch()` shows another. Every change is committed at once, so closing the app (or a crash) loses
nothing that was shown. The store is used from the GUI thread only; SQLite's own locking covers a
second Roost process.

The file carries a schema version (`PRAGMA user_version`) and is migrated forward when opened
(roost.core.conversation_schema: later features add their tables with a new step there). Search is
ranked by SQLite FTS5 with the trigram tokenizer (it finds Chinese as well as English) where SQLite has it; terms
shorter than three characters, and SQLite builds without FTS5, use plain substring search.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from roost.engine.errors import RoostError

from roost.core.conversation_schema import FTS_SCHEMA, MIGRATIONS, SCHEMA_1, SCHEMA_VERSION  # noqa: F401

EXPORT_FORMAT = "roost.conversations"
EXPORT_VERSION = 1
ROLES = ("user", "assistant")
ASSISTANT_NAMES = ("rwkv", "assistant", "bot", "ai", "助手", "模型")  # "**Name:**" of a reply in Markdown


class ConversationFileError(RoostError):
    """A file to import that is not a Roost conversation export (or is damaged); nothing was imported."""


class NewerDatabaseError(RoostError):
    """The conversations file was written by a newer Roost."""


@dataclass
class Conversation:
    id: int
    title: str
    system: str
    updated: float
    pinned: bool = False
    created: float = 0.0
    persona: str = ""  # a state-tuning file's name in the models folder ("": the model's own start)


@dataclass
class StoredMessage:
    position: int  # where it is on the path shown (0 = first)
    role: str  # "user" or "assistant"
    content: str
    reasoning: str = ""
    id: int = 0
    version: int = 1  # which of the versions at this point (1-based)
    versions: int = 1  # how many there are (regenerated answers, edited questions)
    writing: bool = False  # a reply begun and not ended (see append/update; after a crash: interrupted)


_CONV_COLS = "id, title, system, updated, pinned, created, persona"


def _conv(row) -> Conversation:
    return Conversation(row[0], row[1], row[2], row[3], bool(row[4]), row[5], row[6])


class ConversationStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None)  # autocommit: nothing is pending
        self.db.execute("PRAGMA foreign_keys = ON")
        self.db.execute("PRAGMA journal_mode = WAL")
        self._migrate()
        self.fts = self._make_fts()
        self.purge_deleted()  # chats deleted in an earlier session can no longer be restored

    def close(self) -> None:
        self.purge_deleted()
        self.db.close()

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise NewerDatabaseError(
                f"{self.path.name} was written by a newer version of Roost (conversation schema {version}; "
                f"this one knows up to {SCHEMA_VERSION}). Update Roost to open your chats; the file is "
                "left as it is.\n"
                f"{self.path.name} 由更新版本的 Roost 写入。请更新 Roost 后再打开对话；文件未作任何改动。",
            )
        if version == 0:  # a new file, or one from before schema numbers (schema 1)
            self.db.executescript(SCHEMA_1)
            version = 1
        for step in range(version, SCHEMA_VERSION):
            # one transaction per step: a failed step leaves the file as it was before it
            self.db.execute("PRAGMA foreign_keys = OFF")  # tables are rebuilt; checked below
            try:
                self.db.execute("BEGIN IMMEDIATE")
                MIGRATIONS[step - 1](self.db)
                problems = self.db.execute("PRAGMA foreign_key_check").fetchall()
                if problems:
                    raise sqlite3.IntegrityError(f"after migrating to schema {step + 1}: {problems[:3]}")
                self.db.execute(f"PRAGMA user_version = {step + 1}")
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            finally:
                self.db.execute("PRAGMA foreign_keys = ON")

    def _make_fts(self) -> bool:
        """The ranked search index, where this SQLite has FTS5 with the trigram tokenizer."""
        exists = self.db.execute("SELECT count(*) FROM sqlite_master WHERE name='messages_fts'").fetchone()[0]
        try:
            self.db.executescript(FTS_SCHEMA)
        except sqlite3.OperationalError:
            return False
        if not exists:
            self.db.execute("INSERT INTO messages_fts(messages_fts) VALUES ('rebuild')")
        return True

    # --- conversations -------------------------------------------------------------------------
    def new(self, title: str = "New chat", system: str = "") -> Conversation:
        now = time.time()
        cur = self.db.execute("INSERT INTO conversations (title, system, created, updated) VALUES (?,?,?,?)",
                              (title, system, now, now))
        return Conversation(cur.lastrowid, title, system, now, False, now)

    def get(self, conv_id: int) -> Conversation | None:
        row = self.db.execute(f"SELECT {_CONV_COLS} FROM conversations WHERE id=? AND deleted IS NULL",
                              (conv_id,)).fetchone()
        return _conv(row) if row else None

    def list(self, search: str = "") -> list[Conversation]:
        """Pinned first, then newest first; with `search`, the best matches first (see `search`)."""
        if search.strip():
            return self.search(search)
        rows = self.db.execute(f"SELECT {_CONV_COLS} FROM conversations WHERE deleted IS NULL "
                               "ORDER BY pinned DESC, updated DESC")
        return [_conv(r) for r in rows]

    def search(self, query: str) -> list[Conversation]:
        """Conversations whose title or messages hold every word of `query` (case-insensitive):
        title matches first, then by FTS5's bm25 rank of the best message (newest first where there
        is no rank: words under three characters, or no FTS5)."""
        terms = query.split()
        if not terms:
            return self.list()
        long = [t for t in terms if len(t) >= 3]
        like = [f"%{_escape_like(t)}%" for t in terms]
        ranked: dict[int, float] = {}
        if self.fts and long:
            match = " AND ".join('"' + t.replace('"', '""') + '"' for t in long)
            hits = dict(self.db.execute("SELECT rowid, rank FROM messages_fts WHERE messages_fts MATCH ?", (match,)))
            ids = list(hits)
            for start in range(0, len(ids), 500):  # (SQLite limits the parameters of one statement)
                batch = ids[start:start + 500]
                sql = (f"SELECT id, conversation FROM messages WHERE id IN ({','.join('?' * len(batch))})"
                       + "".join(" AND content LIKE ? ESCAPE '\\'" for _ in like))  # short words too
                for mid, conv in self.db.execute(sql, [*batch, *like]):
                    ranked[conv] = min(ranked.get(conv, 0.0), hits[mid])
        else:
            sql = "SELECT DISTINCT conversation FROM messages WHERE " + " AND ".join(
                "content LIKE ? ESCAPE '\\'" for _ in like)
            for (conv,) in self.db.execute(sql, like):
                ranked[conv] = 0.0
        title_sql = " AND ".join("title LIKE ? ESCAPE '\\'" for _ in like)
        titled = {r[0] for r in self.db.execute(f"SELECT id FROM conversations WHERE {title_sql}", like)}
        ids = ranked.keys() | titled
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        convs = [_conv(r) for r in self.db.execute(
            f"SELECT {_CONV_COLS} FROM conversations WHERE deleted IS NULL AND id IN ({marks})", list(ids))]
        convs.sort(key=lambda c: (c.id not in titled, ranked.get(c.id, 0.0), -c.updated))
        return convs

    def rename(self, conv_id: int, title: str) -> None:
        self.db.execute("UPDATE conversations SET title=? WHERE id=?", (title.strip() or "Chat", conv_id))

    def set_system(self, conv_id: int, system: str) -> None:
        self.db.execute("UPDATE conversations SET system=? WHERE id=?", (system, conv_id))

    def set_persona(self, conv_id: int, persona: str) -> None:
        """The state-tuning file (its name in the models folder) the conversation starts from."""
        self.db.execute("UPDATE conversations SET persona=? WHERE id=?", (persona, conv_id))

    def pin(self, conv_id: int, pinned: bool = True) -> None:
        self.db.execute("UPDATE conversations SET pinned=? WHERE id=?", (int(pinned), conv_id))

    def delete(self, conv_id: int) -> None:
        """Hide a conversation; `restore` brings it back until the store is closed (then it is gone)."""
        self.db.execute("UPDATE conversations SET deleted=? WHERE id=?", (time.time(), conv_id))

    def restore(self, conv_id: int) -> None:
        self.db.execute("UPDATE conversations SET deleted=NULL WHERE id=?", (conv_id,))

    def purge_deleted(self) -> None:
        self.db.execute("DELETE FROM conversations WHERE deleted IS NOT NULL")

    # --- messages: the path shown and its versions -----------------------------------------------
    def _tree(self, conv_id: int) -> tuple[int | None, dict[int, tuple]]:
        """(the leaf, {id: (parent, role, content, reasoning, selected, writing)}) of a conversation."""
        leaf = self.db.execute("SELECT leaf FROM conversations WHERE id=?", (conv_id,)).fetchone()
        nodes = {r[0]: r[1:] for r in self.db.execute(
            "SELECT id, parent, role, content, reasoning, selected, writing FROM messages WHERE conversation=? "
            "ORDER BY id", (conv_id,))}
        return (leaf[0] if leaf else None), nodes

    @staticmethod
    def _path(leaf: int | None, nodes: dict[int, tuple]) -> list[int]:
        path = []
        while leaf is not None and leaf in nodes:
            path.append(leaf)
            leaf = nodes[leaf][0]
        return path[::-1]

    def _path_ids(self, conv_id: int) -> list[int]:
        return self._path(*self._tree(conv_id))

    def messages(self, conv_id: int) -> list[StoredMessage]:
        """The messages shown, first to last, each with its version number among its siblings."""
        leaf, nodes = self._tree(conv_id)
        children: dict[int | None, list[int]] = {}
        for mid, (parent, *_rest) in nodes.items():
            children.setdefault(parent, []).append(mid)
        out = []
        for pos, mid in enumerate(self._path(leaf, nodes)):
            parent, role, content, reasoning, _sel, writing = nodes[mid]
            sibs = children[parent]
            out.append(StoredMessage(pos, role, content, reasoning, mid, sibs.index(mid) + 1, len(sibs),
                                     writing is not None))
        return out

    def append(self, conv_id: int, role: str, content: str, reasoning: str = "", *,
               writing: bool = False) -> StoredMessage:
        """Add a message after the last one shown (after `rewind`, a new version at that point).
        `writing`: a reply whose text comes as it is written (`update(..., done=False)` saves it
        as it streams, `update` ends it); one never ended is shown as interrupted."""
        path = self._path_ids(conv_id)
        parent = path[-1] if path else None
        now = time.time()
        cur = self.db.execute("INSERT INTO messages (conversation, parent, role, content, reasoning, created, "
                              "selected, writing) VALUES (?,?,?,?,?,?,?,?)",
                              (conv_id, parent, role, content, reasoning, now, now, now if writing else None))
        self.db.execute("UPDATE conversations SET leaf=?, updated=? WHERE id=?", (cur.lastrowid, now, conv_id))
        versions = self.db.execute("SELECT count(*) FROM messages WHERE conversation=? AND parent IS ?",
                                   (conv_id, parent)).fetchone()[0]
        return StoredMessage(len(path), role, content, reasoning, cur.lastrowid, versions, versions, writing)

    def update(self, conv_id: int, message_id: int, content: str, reasoning: str = "", *, done: bool = True) -> None:
        """A message's text; `done` False: a reply's text so far, still being written."""
        if done:
            self.db.execute("UPDATE messages SET content=?, reasoning=?, writing=NULL WHERE conversation=? AND id=?",
                            (content, reasoning, conv_id, message_id))
        else:
            self.db.execute("UPDATE messages SET content=?, reasoning=? WHERE conversation=? AND id=?",
                            (content, reasoning, conv_id, message_id))
        self._touch(conv_id)

    def rewind(self, conv_id: int, position: int) -> None:
        """Show the path only up to just before `position` (to edit a question or regenerate an
        answer): the next `append` adds a new version there; the old one stays, reachable by `switch`."""
        path = self._path_ids(conv_id)
        leaf = path[position - 1] if 0 < position <= len(path) else (None if position <= 0 else path[-1])
        self.db.execute("UPDATE conversations SET leaf=? WHERE id=?", (leaf, conv_id))

    def switch(self, conv_id: int, position: int, step: int) -> None:
        """Show another version of the message at `position` (step -1: the previous one, +1: the
        next), and after it the path last shown in that version."""
        leaf, nodes = self._tree(conv_id)
        path = self._path(leaf, nodes)
        if not 0 <= position < len(path):
            return
        parent = nodes[path[position]][0]
        sibs = [m for m, n in nodes.items() if n[0] == parent]
        i = sibs.index(path[position]) + step
        if not 0 <= i < len(sibs):
            return
        target = sibs[i]
        self.db.execute("UPDATE messages SET selected=? WHERE id=?", (time.time(), target))
        self.db.execute("UPDATE conversations SET leaf=? WHERE id=?", (self._descend(target, nodes), conv_id))

    @staticmethod
    def _descend(node: int, nodes: dict[int, tuple]) -> int:
        """The end of the path below `node`, taking the version chosen (or written) last at each step."""
        while True:
            kids = [(n[4], m) for m, n in nodes.items() if n[0] == node]
            if not kids:
                return node
            node = max(kids)[1]

    def delete_message(self, conv_id: int, position: int) -> None:
        """Delete the version shown at `position` and everything that followed it; another version
        of it is shown if there is one."""
        leaf, nodes = self._tree(conv_id)
        path = self._path(leaf, nodes)
        if not 0 <= position < len(path):
            return
        gone = path[position]
        parent = nodes[gone][0]
        self.db.execute("DELETE FROM messages WHERE id=?", (gone,))  # its replies go with it (cascade)
        others = [(n[4], m) for m, n in nodes.items() if n[0] == parent and m != gone]
        new_leaf = self._descend(max(others)[1], nodes) if others else parent
        self.db.execute("UPDATE conversations SET leaf=? WHERE id=?", (new_leaf, conv_id))
        self._touch(conv_id)

    def _touch(self, conv_id: int) -> None:
        self.db.execute("UPDATE conversations SET updated=? WHERE id=?", (time.time(), conv_id))

    # --- export and import ---------------------------------------------------------------------
    def to_markdown(self, conv_id: int, names: tuple[str, str] = ("You", "RWKV")) -> str:
        """The path shown, readable anywhere (other versions are in the JSON export)."""
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

    def import_markdown(self, text: str) -> int:
        """A conversation from Markdown as `to_markdown` writes it ("# title", "> system prompt",
        "**Name:**" before each message, thinking in <details>): the id of the new one. The path
        shown only (Markdown has no versions). Refused with ConversationFileError when no message
        can be found."""
        import re

        lines = text.replace("\r\n", "\n").split("\n")
        title, system, msgs = "", [], []
        current = None
        for line in lines:
            head = re.fullmatch(r"\*\*(.{1,40}?)[:：]\*\*\s*", line)
            if head:
                name = head.group(1).strip()
                current = {"role": "assistant" if name.lower() in ASSISTANT_NAMES else "user", "lines": []}
                msgs.append(current)
            elif current is not None:
                current["lines"].append(line)
            elif line.startswith("# ") and not title:
                title = line[2:].strip()
            elif line.startswith(">"):
                system.append(line[1:].removeprefix(" "))
        if not msgs:
            raise _bad("no messages were found in it (Roost reads Markdown as it exports it: "
                       "**You:** and **RWKV:** before each message)")
        data = []
        for n, m in enumerate(msgs):
            body = "\n".join(m["lines"]).strip()
            reasoning = ""
            think = re.match(r"<details><summary>[^<]*</summary>\s*(.*?)\s*</details>\s*", body, re.S)
            if think:
                reasoning, body = think.group(1).strip(), body[think.end():].strip()
            data.append({"id": n, "parent": n - 1 if n else None, "role": m["role"], "content": body,
                         "reasoning": reasoning})
        export = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "conversations": [
            {"title": title or "Chat", "system": "\n".join(system).strip(), "messages": data,
             "current": len(data) - 1}]}
        return self.import_json(json.dumps(export))[0]

    def export(self, conv_ids: list[int]) -> dict:
        """Conversations as a JSON-ready dict: every version of every message, lossless."""
        out = []
        for conv_id in conv_ids:
            row = self.db.execute("SELECT title, system, created, updated, pinned, leaf, persona FROM conversations "
                                  "WHERE id=?", (conv_id,)).fetchone()
            if row is None:
                continue
            title, system, created, updated, pinned, leaf, persona = row
            local: dict[int, int] = {}
            msgs = []
            for mid, parent, role, content, reasoning, mcreated, selected in self.db.execute(
                    "SELECT id, parent, role, content, reasoning, created, selected FROM messages "
                    "WHERE conversation=? ORDER BY id", (conv_id,)):
                local[mid] = len(msgs)
                msgs.append({"id": len(msgs), "parent": local.get(parent) if parent is not None else None,
                             "role": role, "content": content, "reasoning": reasoning, "created": mcreated,
                             "selected": selected})
            out.append({"title": title, "system": system, "created": created, "updated": updated,
                        "pinned": bool(pinned), "current": local.get(leaf) if leaf is not None else None,
                        "messages": msgs, **({"persona": persona} if persona else {})})
        return {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "conversations": out}

    def export_json(self, conv_ids: list[int]) -> str:
        return json.dumps(self.export(conv_ids), ensure_ascii=False, indent=1)

    def import_json(self, text: str | bytes) -> list[int]:
        """Add the conversations of an export (ids of the new ones). A file that is not a valid
        export is refused whole with ConversationFileError: nothing of it is imported."""
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as e:
            raise _bad(f"it is not JSON ({e})") from None
        convs = _validate(data)
        ids = []
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for c in convs:
                cur = self.db.execute("INSERT INTO conversations (title, system, created, updated, pinned, persona) "
                                      "VALUES (?,?,?,?,?,?)", (c["title"], c["system"], c["created"], c["updated"],
                                                               int(c["pinned"]), c.get("persona", "")))
                conv_id = cur.lastrowid
                new: dict[int, int] = {}
                for m in c["messages"]:
                    parent = new[m["parent"]] if m["parent"] is not None else None
                    new[m["id"]] = self.db.execute(
                        "INSERT INTO messages (conversation, parent, role, content, reasoning, created, selected) "
                        "VALUES (?,?,?,?,?,?,?)", (conv_id, parent, m["role"], m["content"], m["reasoning"],
                                                   m["created"], m["selected"])).lastrowid
                leaf = new[c["current"]] if c["current"] is not None else None
                self.db.execute("UPDATE conversations SET leaf=? WHERE id=?", (leaf, conv_id))
                ids.append(conv_id)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return ids


def open_store(path: str | Path) -> tuple[ConversationStore, str]:
    """The store at `path` and a notice for the user ("" when all is well). A damaged file is kept
    aside (``conversations.sqlite.unreadable-<time>``) and a new one started; a file from a newer
    Roost is left alone and chats are kept in memory for this session."""
    path = Path(path)
    try:
        return ConversationStore(path), ""
    except NewerDatabaseError as e:
        return ConversationStore(":memory:"), str(e) + "\nChats of this session are not saved. / 本次会话的对话不会保存。"
    except sqlite3.DatabaseError as e:
        aside = path.with_name(f"{path.name}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
        for suffix in ("", "-wal", "-shm"):
            part = Path(str(path) + suffix)
            if part.exists():
                part.replace(Path(str(aside) + suffix))
        return ConversationStore(path), (
            f"Your saved chats could not be read ({e}); the file was kept as {aside.name} and a new one "
            f"started.\n已保存的对话无法读取（{e}）；原文件已保留为 {aside.name}，并新建了对话文件。")


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _bad(why: str) -> ConversationFileError:
    return ConversationFileError(f"This file cannot be imported: {why}. Nothing was imported.\n"
                                 f"无法导入此文件：{why}。未导入任何内容。")


def _validate(data) -> list[dict]:
    """Every conversation of an export, checked and with defaults filled in; raises on the first fault."""
    if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
        raise _bad("it is not a Roost conversation export")
    version = data.get("version")
    if not isinstance(version, int) or version < 1:
        raise _bad("its format version is missing")
    if version > EXPORT_VERSION:
        raise _bad(f"it was written by a newer Roost (format {version}); update Roost to import it")
    convs = data.get("conversations")
    if not isinstance(convs, list):
        raise _bad("it holds no list of conversations")
    out = []
    for n, c in enumerate(convs, 1):
        where = f"conversation {n}"
        if not isinstance(c, dict):
            raise _bad(f"{where} is not an object")
        title, system = c.get("title", "Chat"), c.get("system", "")
        if not isinstance(title, str) or not isinstance(system, str):
            raise _bad(f"{where} has a title or system prompt that is not text")
        msgs = c.get("messages")
        if not isinstance(msgs, list):
            raise _bad(f"{where} has no list of messages")
        seen: set[int] = set()
        clean = []
        for k, m in enumerate(msgs, 1):
            at = f"message {k} of {where}"
            if not isinstance(m, dict):
                raise _bad(f"{at} is not an object")
            mid, parent = m.get("id"), m.get("parent")
            if not isinstance(mid, int) or isinstance(mid, bool) or mid in seen:
                raise _bad(f"{at} has no id of its own")
            if parent is not None and parent not in seen:
                raise _bad(f"{at} follows a message that does not come before it")
            if m.get("role") not in ROLES:
                raise _bad(f"{at} has the role {m.get('role')!r} (only user and assistant)")
            if not isinstance(m.get("content"), str) or not isinstance(m.get("reasoning", ""), str):
                raise _bad(f"{at} has content that is not text")
            seen.add(mid)
            clean.append({"id": mid, "parent": parent, "role": m["role"], "content": m["content"],
                          "reasoning": m.get("reasoning", ""), "created": _number(m.get("created"), at),
                          "selected": _number(m.get("selected", 0), at)})
        current = c.get("current")
        if current is not None and current not in seen:
            raise _bad(f"{where} shows a message it does not have")
        persona = c.get("persona", "")
        if not isinstance(persona, str) or "/" in persona or "\\" in persona:
            raise _bad(f"{where} has a persona that is not a file name")
        now = time.time()
        out.append({"title": title.strip() or "Chat", "system": system, "pinned": bool(c.get("pinned", False)),
                    "created": _number(c.get("created", now), where), "updated": _number(c.get("updated", now), where),
                    "messages": clean, "current": current, "persona": persona})
    return out


def _number(value, where: str) -> float:
    if value is None:
        return time.time()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(f"{where} has a time that is not a number")
    return float(value)


def date_group(updated: float, now: float | None = None) -> str:
    """Which group of the chat list a conversation belongs in, by when it last changed:
    "today", "yesterday", "week" (the 7 days before), "month" (30 days) or "earlier"."""
    now = time.time() if now is None else now
    today = time.mktime(time.localtime(now)[:3] + (0, 0, 0, 0, 0, -1))
    if updated >= today:
        return "today"
    if updated >= today - 86400:
        return "yesterday"
    if updated >= today - 7 * 86400:
        return "week"
    if updated >= today - 30 * 86400:
        return "month"
    return "earlier"
