"""The conversations file's schema and its migrations, one step per schema version.

Schema 1 is what Roost wrote before branches (no version number: user_version 0). MIGRATIONS[i]
takes schema i+1 to i+2 inside one transaction (roost.core.conversations.ConversationStore); a
feature that needs tables adds a step here. FTS_SCHEMA is the ranked search index, made where
SQLite has FTS5 with the trigram tokenizer.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

# Schema 1 is what Roost wrote before branches (it had no version number: user_version 0).
SCHEMA_1 = """
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


def _script(db: sqlite3.Connection, sql: str) -> None:
    """Run statements one by one (executescript would commit the migration's transaction first)."""
    for statement in sql.split(";"):
        if statement.strip():
            db.execute(statement)


def _to_2(db: sqlite3.Connection) -> None:
    """Branches, pins and undoable deletes: messages point to their parent instead of holding a
    position; a conversation remembers the path it shows (its leaf)."""
    _script(db, """
        ALTER TABLE conversations ADD COLUMN leaf INTEGER;
        ALTER TABLE conversations ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE conversations ADD COLUMN deleted REAL;
        CREATE TABLE messages_2 (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            conversation INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            parent INTEGER REFERENCES messages_2(id) ON DELETE CASCADE,
            role TEXT NOT NULL,
            content TEXT NOT NULL,
            reasoning TEXT NOT NULL DEFAULT '',
            created REAL NOT NULL,
            selected REAL NOT NULL DEFAULT 0
        );
    """)
    rows = db.execute("SELECT m.id, m.conversation, m.role, m.content, m.reasoning, c.updated FROM messages m "
                      "JOIN conversations c ON c.id = m.conversation ORDER BY m.conversation, m.position").fetchall()
    prev: dict[int, int] = {}
    for mid, conv, role, content, reasoning, updated in rows:
        db.execute("INSERT INTO messages_2 (id, conversation, parent, role, content, reasoning, created, selected) "
                   "VALUES (?,?,?,?,?,?,?,?)", (mid, conv, prev.get(conv), role, content, reasoning, updated, 0))
        prev[conv] = mid
    for conv, leaf in prev.items():
        db.execute("UPDATE conversations SET leaf=? WHERE id=?", (leaf, conv))
    _script(db, """
        DROP TABLE messages;
        ALTER TABLE messages_2 RENAME TO messages;
        CREATE INDEX messages_tree ON messages(conversation, parent);
    """)


def _to_3(db: sqlite3.Connection) -> None:
    """Saved model states (roost.core.saved_states), one per chat reply (message, conversation)
    and for long API prompts (no message: found by their tokens' hash, `prefix`): the file in
    states/ beside this database, the model it belongs to, its token count, size and when it was
    last used. And
    the state-tuned persona a conversation starts from (a state file's name in the models folder)."""
    _script(db, """
        ALTER TABLE conversations ADD COLUMN persona TEXT NOT NULL DEFAULT '';
        CREATE TABLE saved_states (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            message INTEGER UNIQUE REFERENCES messages(id) ON DELETE CASCADE,
            conversation INTEGER REFERENCES conversations(id) ON DELETE CASCADE,
            file TEXT NOT NULL,
            model TEXT NOT NULL,
            tokens INTEGER NOT NULL,
            prefix TEXT NOT NULL DEFAULT '',
            bytes INTEGER NOT NULL,
            used REAL NOT NULL
        );
        CREATE INDEX saved_states_used ON saved_states(used);
        CREATE INDEX saved_states_prefix ON saved_states(model, tokens, prefix);
        CREATE INDEX saved_states_conversation ON saved_states(conversation);
    """)


def _to_4(db: sqlite3.Connection) -> None:
    """Replies being written: `writing` is when a reply began while its text is saved as it
    streams, NULL once it ended (finished, stopped or failed). One still set when Roost starts
    again was cut off (the program was killed or crashed): it is shown marked as interrupted."""
    _script(db, "ALTER TABLE messages ADD COLUMN writing REAL")


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_to_2, _to_3, _to_4]  # MIGRATIONS[i] takes schema i+1 to i+2
SCHEMA_VERSION = 1 + len(MIGRATIONS)

FTS_SCHEMA = """
CREATE VIRTUAL TABLE IF NOT EXISTS messages_fts USING fts5(content, content='messages', content_rowid='id',
                                                           tokenize='trigram');
CREATE TRIGGER IF NOT EXISTS messages_fts_insert AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts(rowid, content) VALUES (new.id, new.content);
END;
CREATE TRIGGER IF NOT EXISTS messages_fts_delete AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
END;
CREATE TRIGGER IF NOT EXISTS messages_fts_update AFTER UPDATE OF content ON messages BEGIN
    INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
    INSERT INTO messages_fts(rowid, content) VALUES (new.id, new.content);
END;
"""
