"""Bind every verdict to the bytes it judged.

Records (one source each, written when the file is written):
  run directory   manifest.json `files`: SHA-256 of generator.safetensors and identities.json
  export          export.json `artifacts.*.sha256` (each artifact) and `files` (the ledger copied along)
  report.json     `judged`: SHA-256 of the weights file or artifact it graded, of the ledger, of the base
                  generator's state and of both networks' weight files, the engine version
Checks: every load of a run or an export (sample, serve, verify, the runners) hashes the file it is about
to use against its record, once per load (a 40 MB file hashes in well under a second);
`serve` and `sample` also refuse a report made for other weights or another ledger, or whose `passed` its own
figures contradict (engine/reports.py: check).

What hashes protect: accidents and swaps on disk (a file replaced, truncated, or edited by hand, a
report moved onto other weights). What they do not: someone who can rewrite both a file and its record.
For that, `GUIDE_ENGINE_SIGNING_KEY` (a secret the operator holds) makes `verify` sign report.json with
an HMAC-SHA256 over its canonical JSON, and `serve` require that signature whenever the key is set.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path

from .errors import IntegrityError
from .files import sha256_file

KEY_ENV = "GUIDE_ENGINE_SIGNING_KEY"


def check_file(path: Path, expected: str | None, record: str) -> str:
    """The file's SHA-256, if it is the one `record` names; else a one-line error with both hashes."""
    got = sha256_file(path)
    if expected is not None and got != expected:
        raise IntegrityError(f"{path}: SHA-256 {got[:16]}... is not the {expected[:16]}... recorded in {record}; "
                             f"the file was changed or swapped after it was written")
    return got


def check_files(directory: Path, record: dict, record_name: str) -> dict[str, str]:
    """Every file a record lists (name => SHA-256) => the verified hashes; a listed file that is gone is refused."""
    out = {}
    for name, expected in record.items():
        path = directory / name
        if not path.is_file():
            raise IntegrityError(f"{path}: missing; {record_name} records it")
        out[name] = check_file(path, expected, record_name)
    return out


def canonical(report: dict) -> bytes:
    unsigned = {k: v for k, v in report.items() if k != "signature"}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":")).encode()


def _mac(key: str, report: dict) -> str:
    return hmac.new(key.encode(), canonical(report), hashlib.sha256).hexdigest()


def sign(report: dict) -> dict:
    """report + an HMAC-SHA256 `signature` when GUIDE_ENGINE_SIGNING_KEY is set (else unchanged)."""
    key = os.environ.get(KEY_ENV)
    if not key:
        return report
    return {**report, "signature": {"alg": "HMAC-SHA256",
                                    "value": _mac(key, report)}}


def check_signature(report: dict, where: Path) -> bool:
    """With GUIDE_ENGINE_SIGNING_KEY set, the report must carry a valid signature; => whether it was checked."""
    key = os.environ.get(KEY_ENV)
    if not key:
        return False
    sig = (report.get("signature") or {}).get("value")
    want = _mac(key, report)
    if sig is None or not hmac.compare_digest(sig, want):
        raise IntegrityError(f"{where}: {'no' if sig is None else 'a wrong'} signature under {KEY_ENV}; the report was "
                             f"edited, or signed with another key, or never signed")
    return True
