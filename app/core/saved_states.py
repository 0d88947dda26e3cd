"""Model states saved per chat reply, so that a chat reopened after a restart, regenerated, edited
or switched to another branch goes on from the nearest reply's state instead of re-reading the
whole conversation.

After each reply the chat's state is written to ``states/`` beside the conversations file
(roost.engine.state_io: the state's own precision, no code in the file) and indexed in the
conversations database (table ``saved_states``, schema 3: one row per reply message, with the
model identity, the token count, the size and when it was last used). The files are bounded by a
byte budget (the setting ``state_budget_mb``); the least recently used go first. A state is used
only by the model (file, size, modification time, precision) that made it; a missing or damaged
file is dropped and the text is re-read instead: nothing is lost, nothing is misapplied.

Each entry's metadata also keeps the conversation as the model saw it (replies verbatim, G1
thoughts included) and the exact tokens, so the next prompt is built and tokenised exactly as
before the restart and resumes after those tokens. Every entry is also found by its tokens (a hash
of them, `prefix`): the API server, whose clients send whole conversations, resumes a long prompt
from the longest saved state its tokens begin with, and saves the state after a long request's
reply (:meth:`keep_tokens`). Qt-free; used from the engine's and the API's threads (its own SQLite
connection) and, for usage and clearing, from Settings.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_BUDGET_MB = 2048
SUFFIX = ".state"
API_MIN_TOKENS = 512  # the API saves states of requests at least this long (shorter ones are cheap to re-read)


def token_hashes(ids, lengths) -> dict[int, str]:
    """{n: hash of ids[:n]} for each n in `lengths` (one pass over the tokens)."""
    h, out, done = hashlib.sha256(), {}, 0
    for n in sorted(set(lengths)):
        if n > len(ids):
            break
        h.update(b"".join(int(t).to_bytes(4, "little", signed=True) for t in ids[done:n]))
        done = n
        out[n] = h.copy().hexdigest()
    return out


@dataclass(frozen=True)
class Usage:
    files: int
    bytes: int
    budget: int


class SavedStates:
    def __init__(self, db_path: str | Path, folder: str | Path | None = None,
                 budget_bytes: int = DEFAULT_BUDGET_MB * 2 ** 20):
        self.db_path = Path(db_path)
        self.folder = Path(folder) if folder is not None else self.db_path.parent / "states"
        self.budget = int(budget_bytes)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.db_path), check_same_thread=False, timeout=10)
        self._db.execute("PRAGMA foreign_keys = ON")
        self.saved = self.resumed = self.dropped = 0  # counters (tests, diagnostics)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- writing --------------------------------------------------------------------------------
    def keep(self, conversation: int, message: int, state, meta: dict, *, model: str) -> Path | None:
        """Save the state after reply `message` of `conversation` (replacing any earlier one for
        it); `meta` holds the tokens it saw ("tokens") and what the chat needs to go on. None when
        the reply is gone or the disk said no."""
        return self._save(f"{conversation}-{message}{SUFFIX}", state, meta, model, (message, conversation))

    def keep_tokens(self, ids, state, *, model: str) -> Path | None:
        """Save the state after `ids` (an API request's prompt and reply), found later by those
        tokens; requests shorter than API_MIN_TOKENS are not worth a file."""
        ids = [int(t) for t in ids]
        if len(ids) < API_MIN_TOKENS:
            return None
        prefix = token_hashes(ids, [len(ids)])[len(ids)]
        return self._save(f"api-{prefix[:24]}{SUFFIX}", state, {"tokens": ids}, model, (None, None))

    def _save(self, name: str, state, meta: dict, model: str, owner: tuple) -> Path | None:
        """Write the file, index it (one row per file; `owner`: (message, conversation), or
        (None, None) for an API request), then keep the files within the budget."""
        from roost.engine.state_io import save_state

        if self.budget <= 0:  # the user keeps none
            return None
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / name
        try:
            size = save_state(path, state, {**meta, "model": model})
        except OSError as e:  # a full disk: the chat goes on, it re-reads its text after a restart
            log.warning("could not save the state %s: %s", name, e)
            path.with_name(path.name + ".tmp").unlink(missing_ok=True)
            return None
        ids = meta.get("tokens") or []
        prefix = token_hashes(ids, [len(ids)])[len(ids)] if ids else ""
        with self._lock:
            try:
                with self._db:
                    self._db.execute("DELETE FROM saved_states WHERE file=?", (name,))
                    self._db.execute("INSERT OR REPLACE INTO saved_states (message, conversation, file, model, tokens,"
                                     " prefix, bytes, used) VALUES (?,?,?,?,?,?,?,?)",
                                     (*owner, name, model, len(ids), prefix, size, time.time()))
            except sqlite3.IntegrityError:  # the message was deleted meanwhile
                path.unlink(missing_ok=True)
                return None
        self.saved += 1
        self.evict()
        return path

    def longest_prefix(self, ids, model, identity: str, *, longer_than: int = 0):
        """(n, State) of the longest saved state (of any chat or request) after exactly ids[:n],
        n < len(ids) and n > `longer_than`; None when there is none."""
        ids = [int(t) for t in ids]
        with self._lock:
            lengths = [n for (n,) in self._db.execute(
                "SELECT DISTINCT tokens FROM saved_states WHERE model=? AND tokens>? AND tokens<?",
                (identity, longer_than, len(ids)))]
        if not lengths:
            return None
        hashes = token_hashes(ids, lengths)
        for n in sorted(hashes, reverse=True):
            with self._lock:
                row = self._db.execute("SELECT id, file FROM saved_states WHERE model=? AND tokens=? AND prefix=? "
                                       "ORDER BY used DESC LIMIT 1", (identity, n, hashes[n])).fetchone()
            found = row and self._load(*row, model, identity, ids[:n])
            if found:
                return n, found[0]
        return None

    def evict(self) -> None:
        """Delete the least recently used states until the files fit the budget."""
        with self._lock:
            rows = self._db.execute("SELECT id, file, bytes FROM saved_states ORDER BY used DESC").fetchall()
            total, gone = 0, []
            for rid, file, size in rows:
                total += size
                if total > self.budget:
                    gone.append((rid, file))
            if gone:
                with self._db:
                    self._db.executemany("DELETE FROM saved_states WHERE id=?", [(r,) for r, _f in gone])
        for _m, file in gone:
            (self.folder / file).unlink(missing_ok=True)

    def set_budget(self, budget_bytes: int) -> None:
        self.budget = int(budget_bytes)
        self.evict()

    # --- reading --------------------------------------------------------------------------------
    def nearest(self, conversation: int, path: list[int], model, identity: str) -> tuple[int, object, dict] | None:
        """The saved state of the last reply on `path` (message ids, oldest first) that the loaded
        `model` (of `identity`, roost.engine.state_io.identity) made: (its index in `path`, the
        State, its metadata); None when there is none. A damaged or missing file is dropped and the
        one before it is tried."""
        if not path:
            return None
        with self._lock:
            marks = ",".join("?" * len(path))
            rows = {m: (rid, f) for m, rid, f in self._db.execute(
                f"SELECT message, id, file FROM saved_states WHERE conversation=? AND model=? AND message IN ({marks})",
                (conversation, identity, *path)).fetchall()}
        for index in range(len(path) - 1, -1, -1):
            found = path[index] in rows and self._load(*rows[path[index]], model, identity)
            if found:
                return index, *found
        return None

    def _load(self, rid: int, file: str, model, identity: str, tokens=None):
        """(State, meta) of a row's file, marked as used; None, the row and file dropped, when the
        file is damaged, missing, of another model or (`tokens`) not of exactly those tokens."""
        from roost.engine.state_io import StateFileError, load_state

        try:
            state, meta = load_state(self.folder / file, model)
            if meta.get("model") != identity:
                raise StateFileError(f"{file} was made by another model")
            if tokens is not None and [int(t) for t in meta.get("tokens") or []] != tokens:
                raise StateFileError(f"{file} is not the state of these tokens")
        except (StateFileError, OSError) as e:
            log.warning("saved state %s dropped: %s", file, e)
            self._drop(rid, file)
            return None
        with self._lock, self._db:
            self._db.execute("UPDATE saved_states SET used=? WHERE id=?", (time.time(), rid))
        self.resumed += 1
        return state, meta

    def _drop(self, rid: int, file: str) -> None:
        self.dropped += 1
        with self._lock, self._db:
            self._db.execute("DELETE FROM saved_states WHERE id=?", (rid,))
        (self.folder / file).unlink(missing_ok=True)

    # --- housekeeping ---------------------------------------------------------------------------
    def usage(self) -> Usage:
        with self._lock:
            files, size = self._db.execute("SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM saved_states").fetchone()
        return Usage(files, size, self.budget)

    def clear(self) -> None:
        """Delete every saved state (chats then re-read their text once)."""
        with self._lock, self._db:
            files = [f for (f,) in self._db.execute("SELECT file FROM saved_states")]
            self._db.execute("DELETE FROM saved_states")
        for f in files:
            (self.folder / f).unlink(missing_ok=True)
        self.prune()

    def prune(self) -> int:
        """Delete files no row points to (their messages were deleted) and rows whose file is gone.
        Returns how many files were deleted."""
        if not self.folder.is_dir():
            return 0
        with self._lock:
            known = {f for (f,) in self._db.execute("SELECT file FROM saved_states")}
            missing = [f for f in known if not (self.folder / f).is_file()]
            if missing:
                with self._db:
                    self._db.executemany("DELETE FROM saved_states WHERE file=?", [(f,) for f in missing])
        removed, recent = 0, time.time() - 60  # a file being written now is not indexed yet
        for p in self.folder.iterdir():
            if p.name not in known and (p.suffix == SUFFIX or p.name.endswith(SUFFIX + ".tmp")) \
                    and p.stat().st_mtime < recent:
                p.unlink(missing_ok=True)
                removed += 1
        return removed
