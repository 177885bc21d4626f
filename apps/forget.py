"""Forget requests over HTTP: `serve --admin-token-file F --state-dir DIR` adds them to the server.

POST /v1/forget                 a photo (multipart/form-data: `image`, optional `face`) or JSON {"seed": N}
                                => 202 {"id", "state": "queued", "status_url"}; no face: 422, nothing kept
GET  /v1/forget                 every request, with the audit trail's head
GET  /v1/forget/{id}            {"id", "state", "created", "updated", "reason", "certificate_url", ...}
GET  /v1/forget/{id}/certificate  the verify report of the deployed weights, with the weights' SHA-256 before/after
Every one needs `Authorization: Bearer <the token in F>` (401 otherwise, and nothing is stored).

From the 202 on, the server withholds every image the judge matches to a pending person (`JudgeGuard`: the
same rule as --guard, against the photo's aligned face or the seed's pretrained face). The worker
(apps/worker.py) unlearns, verifies and exports; `Swapper` then swaps the new generator in between two batches of
the micro-batcher (a batch in flight finishes on the weights it started with) and marks the requests deployed.
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import json
import os
import stat
import sys
import threading
import time
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path

import torch

from ..engine.crops import crop_of
from ..engine.errors import GuideEngineError
from ..engine.faces import load_face, locate_face
from ..engine.files import state_sha256
from ..engine.images import SEED_MAX
from ..engine.models import zoo
from ..guide.calibration import calibrate
from ..guide.identities import Source
from .forget_store import PENDING, ForgetStore

SWAP_POLL_S = 0.5


def read_token(path: str) -> str:
    """The admin token: the file must be the owner's only (no group or other bits), and not empty."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
        token = p.read_text().strip()
    except OSError as e:
        raise GuideEngineError(f"--admin-token-file {p}: cannot read ({type(e).__name__})") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise GuideEngineError(f"--admin-token-file {p}: readable by others (mode {stat.S_IMODE(mode):04o}); "
                               f"chmod 600 {p}")
    if len(token) < 16:
        raise GuideEngineError(f"--admin-token-file {p}: the token must be at least 16 characters")
    return token


def authorized(header: str | None, token: str) -> bool:
    scheme, _, given = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def parse_multipart(body: bytes, content_type: str) -> dict[str, tuple[bytes, str | None]]:
    """A multipart/form-data body => {field: (bytes, filename)}; GuideEngineError on anything else."""
    msg = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body)
    if not msg.is_multipart():
        raise GuideEngineError("the body is not multipart/form-data")
    fields = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            fields[name] = (part.get_payload(decode=True) or b"", part.get_filename())
    return fields


@functools.lru_cache(maxsize=2)
def _guard_models(base_name: str, judge_name: str):
    """The judge, the pretrained generator and the judge's strangers' p1 on it, loaded once per process: the
    ledger's guard, the pending requests' guard and each swapped-in model's guard only read them."""
    pretrained = zoo.load_generator(base_name)
    judge = zoo.load_judge(judge_name, face_crop=crop_of(pretrained))
    return judge, pretrained, calibrate(pretrained, judge, state_sha256(pretrained))["strangers_dist_p1"]


class JudgeGuard:
    """Withholds images the judge puts closer than its strangers' 1st percentile (calibrated on the pretrained
    generator) to any of its references: the forgotten identities' pretrained faces (`serve --guard`), or each
    pending forget request's photo (its aligned face) or seed (its pretrained face)."""

    def __init__(self, base_name: str, judge_name: str):
        self.judge, self.pretrained, self.line = _guard_models(base_name, judge_name)
        self.refs: dict[str, torch.Tensor] = {}  # key => the judge's descriptor; replaced, never edited
        self.lock = threading.Lock()

    @torch.no_grad()
    def reference(self, src: Source) -> torch.Tensor:
        if src.image is None:
            image = self.pretrained.synthesize(self.pretrained.latents_for_seeds([src.seed]))
        else:
            image = load_face(src.image, self.pretrained, face=src.face, what="image").image
        return self.judge.descriptors(image)[0]

    def set(self, refs: dict[str, torch.Tensor]) -> None:
        with self.lock:
            self.refs = dict(refs)

    def add(self, rid: str, ref: torch.Tensor) -> None:
        with self.lock:
            self.refs = {**self.refs, rid: ref}

    def drop(self, ended: set[str]) -> None:
        with self.lock:
            self.refs = {k: v for k, v in self.refs.items() if k not in ended}

    def __call__(self, images: torch.Tensor) -> list[bool]:
        return self.hits(self.judge.descriptors(images)) if self.refs else [False] * len(images)

    def hits(self, d: torch.Tensor) -> list[bool]:
        """The judge's descriptors of N images (N, D) => [withheld?]: all N x refs pairs in its own distance."""
        refs = self.refs
        if not refs:
            return [False] * len(d)
        r = torch.stack(list(refs.values()))
        dist = self.judge.distance(d.repeat_interleave(len(r), 0), r.repeat(len(d), 1)).view(len(d), len(r))
        return (dist.min(dim=1).values < self.line).tolist()


def status(row: dict) -> dict:
    """A request as GET /v1/forget/{id} shows it: states and hashes, never the photo or its file."""
    deployed = row["state"] == "deployed"
    return {"id": row["id"], "state": row["state"], "kind": row["kind"], "created": row["created"],
            "updated": row["updated"], "reason": row["reason"], "identity_hash": row["identity_hash"],
            "photo_sha256": row["photo_sha256"], "seed": row["seed"],
            "certificate_url": f"/v1/forget/{row['id']}/certificate" if deployed else None}


def certificate(row: dict, audit_head: str) -> dict:
    """The verify report of the deployed weights (report.json beside them), with the weights' SHA-256 before and
    after, and the audit trail's head when it was issued."""
    report = json.loads(Path(row["certificate"]).read_text()) if Path(row["certificate"]).is_file() else None
    return {"request": row["id"], "state": row["state"], "identity_hash": row["identity_hash"],
            "weights_sha256_before": row["weights_sha256_before"], "weights_sha256_after": row["weights_sha256_after"],
            "report": report, "audit_head": audit_head}


class Swapper(threading.Thread):
    """Polls the state directory: when the worker has a verified generator ready (`deploy_next`), loads it (off
    the event loop), swaps it into the running service, and marks its requests deployed; keeps the pending
    guard's list equal to the pending requests."""

    def __init__(self, state_dir: Path, load, swap, guard: JudgeGuard):
        super().__init__(daemon=True, name="guide-engine-swapper")
        self.store = ForgetStore(state_dir)  # its own connection
        self.load, self.swap, self.guard = load, swap, guard
        self.stopped = threading.Event()
        self.swaps = 0

    def run(self) -> None:
        while not self.stopped.wait(SWAP_POLL_S):
            try:
                self.poll()
            except Exception as e:  # never dies: the next poll tries again
                print(f"guide-engine serve: swap: {type(e).__name__}: {e}", file=sys.stderr)

    def poll(self) -> bool:
        """=> whether a generator was swapped in."""
        target = self.store.meta("deploy_next")
        if target:
            try:
                served = self.load(Path(target))
            except GuideEngineError as e:  # what the worker made does not load here: nothing changes, said why
                with self.store.transaction():
                    rows = [r for r in self.store.with_state("running") if r["deploy"] == target]
                    self.store.move([r["id"] for r in rows], "failed", f"the server could not serve it: {e}")
                    self.store.set_meta("deploy_next", None)
                return False
            self.swap(served)
            deploy(self.store, target)
            self.swaps += 1
        # requests that ended are no longer withheld by this guard (each guarded request is stored before it is
        # guarded, so one accepted since this poll began is never taken for ended)
        ended = {rid for rid in self.guard.refs if (row := self.store.get(rid)) and row["state"] not in PENDING}
        if ended:
            self.guard.drop(ended)
        return bool(target)


def deploy(store: ForgetStore, target: str) -> None:
    """What the worker made ready is served now: its requests => deployed; `served` => target."""
    with store.transaction():
        rows = [r for r in store.with_state("running") if r["deploy"] == target]
        for r in rows:
            store.move([r["id"]], "deployed", "forgotten and served", batch=r["batch"],
                       weights_sha256_before=r["weights_sha256_before"], weights_sha256_after=r["weights_sha256_after"])
        store.set_meta("served", target)
        store.set_meta("deploy_next", None)


def open_state(state_dir: Path, source: Path) -> tuple[ForgetStore, Path]:
    """The state directory for serving `source` => (store, the directory to serve now: the last deployed one). A
    state directory belongs to the source it was first served with; a batch that was ready when the server stopped
    is deployed now."""
    store = ForgetStore(state_dir)
    origin = str(Path(source).resolve())
    if store.meta("origin") is None:
        with store.transaction():
            store.set_meta("origin", origin)
            store.set_meta("served", origin)
    elif store.meta("origin") != origin:
        raise GuideEngineError(f"--state-dir {state_dir}: holds the forget requests of {store.meta('origin')}; "
                               f"serve that, or give another --state-dir")
    if store.meta("deploy_next"):
        deploy(store, store.meta("deploy_next"))
    return store, Path(store.meta("served"))


def photo_suffix(filename: str | None) -> str:
    suffix = Path(filename or "").suffix.lower()
    return suffix if suffix[1:].isalnum() and len(suffix) <= 6 else ""


@dataclass(frozen=True)
class Prepared:
    """A forget request checked and referenced for the guard, not yet stored."""

    kind: str
    ref: torch.Tensor
    seed: int | None = None
    photo: bytes | None = None
    suffix: str = ""
    face: int | None = None


def prepare_photo(guard: JudgeGuard, folder: Path, data: bytes, filename: str | None,
                  face: int | None) -> Prepared:
    """A photo => its face found as `unlearn --image` finds it and its reference for the guard; GuideEngineError
    (=> 422) otherwise. The bytes are read from a private temp file in `folder`, removed before this returns."""
    suffix = photo_suffix(filename)
    tmp = folder / f".incoming-{os.getpid()}-{threading.get_ident()}-{time.monotonic_ns()}{suffix}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            locate_face(tmp, face=face, what="image")
            ref = guard.reference(Source(image=str(tmp), face=face))
        except GuideEngineError as e:
            raise GuideEngineError(str(e).replace(f"image {tmp}", f"image {filename or '(the upload)'}")) from None
    finally:
        tmp.unlink(missing_ok=True)
    return Prepared("photo", ref, photo=data, suffix=suffix, face=face)


def parse_seed(body: bytes) -> int:
    """A JSON body {"seed": N} => N; GuideEngineError (=> 400) otherwise."""
    try:
        req = json.loads(body)
    except ValueError:
        raise GuideEngineError("request body is not valid JSON") from None
    seed = req.get("seed") if isinstance(req, dict) else None
    if not isinstance(req, dict) or set(req) != {"seed"} or isinstance(seed, bool) or not isinstance(seed, int) \
            or not 0 <= seed <= SEED_MAX:
        raise GuideEngineError(f'give {{"seed": N}} with N from 0 to {SEED_MAX}, or a photo as multipart/form-data '
                               f'(field "image")')
    return seed


def prepare_seed(guard: JudgeGuard, seed: int) -> Prepared:
    return Prepared("seed", guard.reference(Source(seed=seed)), seed=seed)


def accept(store: ForgetStore, guard: JudgeGuard, p: Prepared) -> dict:
    """Store a prepared request (queued, audited) and guard it at once => its row."""
    row = store.add(p.kind, seed=p.seed, photo=p.photo, suffix=p.suffix, face=p.face,
                    photo_sha256=hashlib.sha256(p.photo).hexdigest() if p.photo is not None else None)
    guard.add(row["id"], p.ref)
    return row
