"""audit.jsonl, the forget service's audit trail: the one module that names it, appends to it and checks it.

One JSON object per line, appended (never rewritten) for every change of a request's state. Each line carries
`seq` (its 1-based line number), `prev` (the SHA-256 of the line before it, as written; 64 zeros for the first)
and `sha256` (of its own canonical JSON without that field). Editing, dropping or reordering a line breaks the
chain at that line or the next; `check` names the first line that is not intact. A rewrite of the whole tail with
every hash recomputed needs an anchor kept elsewhere: `head` (the last line's hash) is what an operator records
(the service shows it with every certificate). Lines carry hashes and states only, never personal data (no photo,
no latent): the caller passes identities as their hashes.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from pathlib import Path

from .errors import GuideEngineError
from .files import PRIVATE

AUDIT = "audit.jsonl"
GENESIS = "0" * 64


def _digest(record: dict) -> str:
    body = {k: v for k, v in record.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _last_line(f) -> bytes | None:
    """The file's last complete line (without its newline), read from the end."""
    f.seek(0, os.SEEK_END)
    end = f.tell()
    if end == 0:
        return None
    pos, tail = end, b""
    while pos > 0:
        step = min(4096, pos)
        pos -= step
        f.seek(pos)
        tail = f.read(step) + tail
        lines = tail.rstrip(b"\n").split(b"\n")
        if len(lines) > 1 or pos == 0:
            return lines[-1]
    return None


def append(path: Path, event: dict) -> dict:
    """Append `event` (JSON-able, no personal data) as the next line of the trail at `path` => the line's record.
    An exclusive lock on the file orders concurrent writers (the server and its worker); the line is fsynced
    before this returns. A torn last line (a crash mid-write) is cut off first: it was never acknowledged."""
    path = Path(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with os.fdopen(os.dup(fd), "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size:
                f.seek(size - 1)
                if f.read(1) != b"\n":  # a torn write: drop it (its state change was never committed)
                    f.seek(0)
                    keep = f.read().rsplit(b"\n", 1)[0]
                    f.seek(0)
                    f.truncate()
                    f.write(keep + b"\n" if keep else b"")
            last = _last_line(f)
            prev_seq = json.loads(last)["seq"] if last else 0
            record = {"seq": prev_seq + 1, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **event,
                      "prev": hashlib.sha256(last).hexdigest() if last else GENESIS}
            record["sha256"] = _digest(record)
            f.seek(0, os.SEEK_END)
            f.write(json.dumps(record, sort_keys=True, separators=(",", ":")).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        return record
    finally:
        os.close(fd)


def check(path: Path) -> tuple[int, int | None, str]:
    """=> (the trail's lines, the first line that is not intact or None, what is wrong with it or "intact")."""
    path = Path(path)
    if not path.is_file():
        raise GuideEngineError(f"{path}: no audit trail here")
    lines = path.read_bytes().splitlines()
    prev = GENESIS
    for n, raw in enumerate(lines, 1):
        try:
            record = json.loads(raw)
        except ValueError:
            return len(lines), n, "not a JSON line"
        if not isinstance(record, dict) or record.get("seq") != n:
            return len(lines), n, f"its seq is {record.get('seq') if isinstance(record, dict) else None!r}, not {n}"
        if record.get("prev") != prev:
            return len(lines), n, "its prev is not the SHA-256 of the line before (that line or this one was changed)"
        if record.get("sha256") != _digest(record):
            return len(lines), n, "its content does not match its own sha256 (the line was edited)"
        prev = hashlib.sha256(raw).hexdigest()
    return len(lines), None, "intact"


def head(path: Path) -> str:
    """The SHA-256 of the trail's last line (what a later line's `prev` will be): an anchor to keep elsewhere."""
    path = Path(path)
    if not path.is_file():
        return GENESIS
    with open(path, "rb") as f:
        last = _last_line(f)
    return hashlib.sha256(last).hexdigest() if last else GENESIS
