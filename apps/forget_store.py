"""The forget service's state directory: every request, its state and the runs made for it, kept across crashes.

STATE_DIR/ requests.db     SQLite (the standard library's): the requests and what is served (`meta`)
           audit.jsonl     every state change, hash-chained (engine/audit.py)
           photos/<id>     an uploaded photo, kept while its request is pending, deleted when it ends
           runs/batch-N/   the unlearn run of one batch of requests (and batch-N-export/ when an export is served)
           config.json     the worker's settings, written by `serve` (a worker on another host reads them)
           worker.lock     held by the one worker of this directory
Everything is readable by its owner only (0700 folders, 0600 files). SQLite rather than one JSON file per
request: a state change of many requests is one transaction, and two processes (the server and its worker) write
it safely (docs/serving.md has the measurements). Each change is written to the audit trail, then committed: a
crash between the two leaves a line for a change that is made again after the restart, never a change without
its line.

A request's life: queued -> running -> deployed | refused | failed. `running` requests belong to a batch; a batch
whose run, verify and export are done waits as `running` with `deploy` set until the server serves it (the
server then marks it deployed: deployed means served). A batch that failed verification sends back to `queued`
the requests that were not the cause (at most MAX_ATTEMPTS batches each), and a person it did not forget once
more with `push_past` set: a second try in a batch of its own kind, unlearned with `--push-past`.
"""
from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
import uuid
from pathlib import Path

from ..engine import audit
from ..engine.errors import GuideEngineError
from ..engine.files import PRIVATE, atomic_write

DB = "requests.db"
CONFIG = "config.json"  # the worker's settings, written by serve
STATES = ("queued", "running", "deployed", "refused", "failed")
PENDING = ("queued", "running")
MAX_ATTEMPTS = 2
COLUMNS = ("id", "kind", "seed", "photo_sha256", "photo_file", "face", "state", "reason", "created", "updated",
           "batch", "attempts", "deploy", "certificate", "weights_sha256_before", "weights_sha256_after",
           "identity_hash", "push_past")
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, seed INTEGER, photo_sha256 TEXT, photo_file TEXT, face INTEGER,
    state TEXT NOT NULL CHECK (state IN ({", ".join(repr(s) for s in STATES)})), reason TEXT,
    created TEXT NOT NULL, updated TEXT NOT NULL, batch TEXT, attempts INTEGER NOT NULL DEFAULT 0, deploy TEXT,
    certificate TEXT, weights_sha256_before TEXT, weights_sha256_after TEXT, identity_hash TEXT,
    push_past INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


class ForgetStore:
    """The state directory, opened by the server and by its worker (each its own connection)."""

    def __init__(self, state_dir: Path):
        self.dir = Path(state_dir)
        if self.dir.exists() and not self.dir.is_dir():
            raise GuideEngineError(f"--state-dir {self.dir}: a file, not a folder")
        private_dir(self.dir)
        self.photos, self.runs = private_dir(self.dir / "photos"), private_dir(self.dir / "runs")
        self.audit_path = self.dir / audit.AUDIT
        db = self.dir / DB
        # created private before SQLite opens it; an existing file is left untouched: closing any descriptor of it
        # would drop the POSIX locks this process's other connections hold on it (SQLite's own warning), and
        # another process would then take itself for the last user and delete the WAL under them
        with contextlib.suppress(FileExistsError):
            os.close(os.open(db, os.O_RDWR | os.O_CREAT | os.O_EXCL, PRIVATE))
        self.db = sqlite3.connect(db, timeout=30, isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self._depth = 0  # transactions open (`transaction` nests)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        have = {r["name"] for r in self.db.execute("PRAGMA table_info(requests)")}
        if "push_past" not in have:  # a state directory from before the second try: the column, default 0
            self.db.execute("ALTER TABLE requests ADD COLUMN push_past INTEGER NOT NULL DEFAULT 0")
        for side in ("-wal", "-shm"):  # SQLite's own files beside the database
            if (p := db.with_name(DB + side)).exists():
                os.chmod(p, PRIVATE)

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def transaction(self):
        """One SQLite transaction (BEGIN IMMEDIATE: the write lock at once); nested ones join the outer one."""
        self._depth += 1
        if self._depth == 1:
            self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
            if self._depth == 1:
                self.db.execute("COMMIT")
        except BaseException:
            if self._depth == 1:
                self.db.execute("ROLLBACK")
            raise
        finally:
            self._depth -= 1

    # ---- reading ----
    def get(self, request_id: str) -> dict | None:
        row = self.db.execute("SELECT * FROM requests WHERE id = ?", (request_id,)).fetchone()
        return dict(row) if row else None

    def all(self) -> list[dict]:
        return [dict(r) for r in self.db.execute("SELECT * FROM requests ORDER BY created, id")]

    def with_state(self, *states: str) -> list[dict]:
        marks = ", ".join("?" * len(states))
        return [dict(r) for r in self.db.execute(f"SELECT * FROM requests WHERE state IN ({marks}) ORDER BY created, "
                                                 f"id", states)]

    def in_batch(self, batch: str) -> list[dict]:
        return [dict(r) for r in self.db.execute("SELECT * FROM requests WHERE batch = ? AND state = 'running' "
                                                 "ORDER BY created, id", (batch,))]

    def meta(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str | None) -> None:
        if value is None:
            self.db.execute("DELETE FROM meta WHERE key = ?", (key,))
        else:
            self.db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = "
                            "excluded.value", (key, value))

    def next_batch(self) -> str:
        """A batch name no run folder has yet: batch-0001, batch-0002, ..."""
        with self.transaction():
            n = int(self.meta("batches", "0")) + 1
            self.set_meta("batches", str(n))
        return f"batch-{n:04d}"

    # ---- writing: every state change is an audit line, then a commit ----
    def add(self, kind: str, seed: int | None = None, photo: bytes | None = None, suffix: str = "",
            photo_sha256: str | None = None, face: int | None = None) -> dict:
        """A new request, queued => its row. A photo is written privately (0600) before the row exists."""
        rid = uuid.uuid4().hex
        photo_file = None
        if photo is not None:
            photo_file = str(self.photos / f"{rid}{suffix}")
            atomic_write(Path(photo_file), lambda tmp: tmp.write_bytes(photo), private=True)
        t = now()
        row = {"id": rid, "kind": kind, "seed": seed, "photo_sha256": photo_sha256, "photo_file": photo_file,
               "face": face, "state": "queued", "reason": None, "created": t, "updated": t, "batch": None,
               "attempts": 0, "deploy": None, "certificate": None, "weights_sha256_before": None,
               "weights_sha256_after": None, "identity_hash": None, "push_past": 0}
        audit.append(self.audit_path, {"request": rid, "event": "accepted", "kind": kind, "state": "queued",
                                       **({"seed": seed} if seed is not None else {}),
                                       **({"photo_sha256": photo_sha256} if photo_sha256 else {})})
        self.db.execute(f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                        [row[c] for c in COLUMNS])
        return row

    def move(self, ids: list[str], state: str, reason: str | None = None, **fields) -> None:
        """Requests `ids` => `state` (with `reason` and other columns), one audit line each, one transaction. A
        request that ends (deployed, refused, failed) loses its photo."""
        if state not in STATES:
            raise ValueError(state)
        if not ids:
            return
        t = now()
        with self.transaction():
            for rid in ids:
                old = self.get(rid)
                if old is None:
                    raise KeyError(rid)
                event = {"request": rid, "event": "state", "from": old["state"], "state": state}
                event.update({k: v for k, v in {"reason": reason, **fields}.items()
                              if v is not None and k in ("reason", "batch", "weights_sha256_before",
                                                         "weights_sha256_after", "identity_hash", "push_past")})
                audit.append(self.audit_path, event)
                cols = {"state": state, "reason": reason, "updated": t,
                        **{k: v for k, v in fields.items() if k in COLUMNS}}
                self.db.execute(f"UPDATE requests SET {', '.join(f'{c} = ?' for c in cols)} WHERE id = ?",
                                [*cols.values(), rid])
        if state not in PENDING:
            for rid in ids:
                self.forget_photo(rid)

    def forget_photo(self, rid: str) -> None:
        row = self.get(rid)
        if row and row["photo_file"]:
            Path(row["photo_file"]).unlink(missing_ok=True)

    def audit_head(self) -> str:
        return audit.head(self.audit_path)

    # ---- the worker's settings ----
    def write_config(self, config: dict) -> None:
        atomic_write(self.dir / CONFIG, lambda tmp: tmp.write_text(json.dumps(config, indent=2) + "\n"),
                     private=True)

    def has_config(self) -> bool:
        return (self.dir / CONFIG).is_file()

    def read_config(self) -> dict:
        path = self.dir / CONFIG
        if not path.is_file():
            raise GuideEngineError(f"{self.dir}: no {CONFIG}; start `guide-engine serve ... --state-dir "
                                   f"{self.dir}` first")
        return json.loads(path.read_text())
