"""How the forget service keeps its requests (apps/forget_store.py), measured: SQLite (WAL, synchronous=FULL, as the
store opens it) against one JSON file per request written atomically (temp file, fsync, rename, fsync of the
folder). Each writes N requests, then moves them all to a new state one by one, then moves a batch of N at once
(one transaction against N renames), then lists them. Prints milliseconds per operation, medians of 5 rounds.

    python -m guide_engine.bench.state_store [N]
"""
from __future__ import annotations

import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _sqlite(folder: Path, n: int) -> dict:
    db = sqlite3.connect(folder / "requests.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE r (id TEXT PRIMARY KEY, state TEXT, reason TEXT, updated TEXT)")
    t = {}
    t0 = time.perf_counter()
    for i in range(n):
        db.execute("INSERT INTO r VALUES (?, 'queued', NULL, ?)", (f"{i:032x}", time.ctime()))
    t["add"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(n):
        db.execute("UPDATE r SET state = 'running', updated = ? WHERE id = ?", (time.ctime(), f"{i:032x}"))
    t["move one"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    db.execute("BEGIN IMMEDIATE")
    db.execute("UPDATE r SET state = 'deployed', updated = ?", (time.ctime(),))
    db.execute("COMMIT")
    t["move batch"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows = db.execute("SELECT * FROM r WHERE state = 'deployed'").fetchall()
    t["list"] = time.perf_counter() - t0
    assert len(rows) == n
    db.close()
    return t


def _write(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


def _files(folder: Path, n: int) -> dict:
    t = {}
    t0 = time.perf_counter()
    for i in range(n):
        _write(folder / f"{i:032x}.json", {"id": f"{i:032x}", "state": "queued", "updated": time.ctime()})
    t["add"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(n):
        path = folder / f"{i:032x}.json"
        _write(path, {**json.loads(path.read_text()), "state": "running", "updated": time.ctime()})
    t["move one"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(n):  # no transaction: a crash here leaves the batch half moved
        path = folder / f"{i:032x}.json"
        _write(path, {**json.loads(path.read_text()), "state": "deployed", "updated": time.ctime()})
    t["move batch"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows = [json.loads(p.read_text()) for p in folder.glob("*.json")]
    t["list"] = time.perf_counter() - t0
    assert sum(r["state"] == "deployed" for r in rows) == n
    return t


def main(n: int = 200, rounds: int = 5) -> dict:
    out = {}
    for name, fn in (("sqlite", _sqlite), ("files", _files)):
        runs = []
        for _ in range(rounds + 1):  # the first is burn-in
            with tempfile.TemporaryDirectory() as d:
                runs.append(fn(Path(d), n))
        out[name] = {k: round(1000 * statistics.median(r[k] for r in runs[1:]) / n, 3) for k in runs[0]}
    print(f"ms per request, N = {n}, medians of {rounds} rounds (after one burn-in):")
    print(f"{'':8s}" + "".join(f"{k:>12s}" for k in out["sqlite"]))
    for name, t in out.items():
        print(f"{name:8s}" + "".join(f"{v:12.3f}" for v in t.values()))
    return out


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
