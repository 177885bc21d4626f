"""The forget worker: the pending requests of a state directory (apps/forget_store.py) => one many-identity
unlearn run on top of the generator being served => verify => export (when an export is served, or for a Triton
model repository) => handed to the server, which swaps it in and marks the requests deployed.

`serve --state-dir` starts it as a child process at lower priority (nice 10) with fewer threads, so that serving
stays responsive; `guide-engine worker DIR` runs it on its own (another host sharing the directory). One worker
per directory (worker.lock). Every step is redone or resumed after a crash: the unlearn run resumes from its
checkpoint (guide/job.py), verify and export are made again unless their result is there.
"""
from __future__ import annotations

import ctypes
import dataclasses
import datetime
import fcntl
import os
import signal
import sys
import time
import traceback
from pathlib import Path

import torch

from ..engine import exportdir, reports, rundir
from ..engine.errors import GuideEngineError
from ..engine.files import sha256_file
from ..export.job import ExportConfig, export_job
from ..guide import ledger
from ..guide.config import UnlearnConfig
from ..guide.identities import Source
from ..guide.job import unlearn_job
from ..guide.verify import VerifyConfig, verify_run
from .forget_store import MAX_ATTEMPTS, ForgetStore

POLL_S = 1.0


@dataclasses.dataclass(frozen=True)
class WorkerConfig:
    """What `serve` writes into STATE_DIR/config.json for its worker."""

    require: str = "forgotten"  # the verify level a batch must pass to be deployed
    iters: int | None = None  # unlearn iterations (None: the default for the ledger's size)
    n_preserve: int = 256  # verify's random faces
    triton_repo: str | None = None  # a Triton model folder (config.pbtxt + numbered versions) to write into
    threads: int = max(1, (os.cpu_count() or 2) - 1)
    device: str = "cpu"
    unlearn: dict = dataclasses.field(default_factory=dict)  # other UnlearnConfig settings, e.g. {"lr": 2e-3}
    gather_s: float = 10.0  # a batch starts this long after its first request arrived: requests close together
    # (a user's several photos, an operator's list) share one run


def weights_sha256(served: Path) -> str:
    """The SHA-256 of what a directory serves: a run's weights file, an export's ONNX artifact (what /v1/model
    reports as weights_sha256)."""
    served = Path(served)
    if exportdir.is_export(served):
        return exportdir.read_manifest(served)["artifacts"]["onnx"]["sha256"]
    return sha256_file(served / rundir.WEIGHTS)


def source_run(served: Path) -> Path:
    """The run directory a served directory stands for (an export's source run)."""
    served = Path(served)
    return Path(exportdir.read_manifest(served)["source"]) if exportdir.is_export(served) else served


def epoch(stamp: str) -> float:
    """A store timestamp (forget_store.now) => seconds since the epoch."""
    return datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S%z").timestamp()


def source_of(row: dict) -> Source:
    return Source(seed=row["seed"]) if row["kind"] == "seed" else Source(image=row["photo_file"], face=row["face"])


NOT_FORGOTTEN = "not forgotten"  # how why_not's reason for a person the batch did not forget begins


def why_not(row: dict, thresholds: dict) -> str | None:
    """A verify report's row => why this identity cannot be deployed as forgotten, or None."""
    if row.get("drawn") is False:
        return (f"not drawn: the pretrained generator did not draw this person (the judge puts its best face "
                f"{row.get('photo_judge_dist_at_w_u', float('nan')):.3f} from the photo, the same-person line is "
                f"{row.get('drawn_line', float('nan')):.3f}); there is nothing to forget")
    if row.get("found") is False:
        return "not found: the inversion of the photo is not this person"
    if not row.get("forgotten"):
        return (f"{NOT_FORGOTTEN}: the judge puts the unlearned face {row.get('judge_id_dist', float('nan')):.3f} from "
                f"the person's, under the strangers' median {thresholds['judge_forgotten_if_id_dist_at_least']:.3f}")
    return None


class Worker:
    def __init__(self, store: ForgetStore, cfg: WorkerConfig, log=print):
        self.store, self.cfg, self.log = store, cfg, log

    def served(self) -> Path:
        return Path(self.store.meta("served"))

    def step(self) -> bool:
        """One batch (resumed, or the queued requests taken together) => True when there was work."""
        store = self.store
        if store.meta("deploy_next"):  # a batch waits for the server to swap it in
            return False
        running = store.with_state("running")
        if running:
            batch = running[0]["batch"]
        else:
            queued = store.with_state("queued")
            if not queued:
                return False
            oldest = min(queued, key=lambda r: epoch(r["created"]))
            if time.time() - epoch(oldest["created"]) < self.cfg.gather_s:
                return False
            # second tries (push_past) and first ones go in batches of their own kind, the oldest request's first
            queued = [r for r in queued if r["push_past"] == oldest["push_past"]]
            batch = store.next_batch()
            store.move([r["id"] for r in queued], "running", batch=batch)
        old = os.umask(0o077)  # every file the run, verify and export write: the owner's only
        try:
            self.run_batch(batch)
        finally:
            os.umask(old)
        return True

    def run_batch(self, batch: str) -> None:
        store, cfg = self.store, self.cfg
        served = self.served()
        base_run = source_run(served)
        book = ledger.read(base_run)
        forgotten = {e["key"] for e in book["identities"]}
        requests = store.in_batch(batch)
        todo = {}
        for r in requests:
            src = source_of(r)
            if r["kind"] == "photo" and not Path(r["photo_file"]).is_file():
                store.move([r["id"]], "failed", "the request's photo is gone from the state directory")
            elif src.key() in forgotten:
                store.move([r["id"]], "deployed", "already forgotten by the served generator",
                           certificate=str(served / reports.REPORT), weights_sha256_before=weights_sha256(served),
                           weights_sha256_after=weights_sha256(served))
            else:
                todo[r["id"]] = src
        if not todo:
            return
        run = store.runs / batch
        t0 = time.perf_counter()
        try:
            if not run.is_dir():
                push = bool(cfg.unlearn.get("push_past")) or any(r["push_past"] for r in requests)
                ucfg = UnlearnConfig(**{**cfg.unlearn, "generator": str(base_run), "iters": cfg.iters,
                                        "device": cfg.device, "push_past": push})
                self.log(f"{batch}: unlearning {len(todo)} identit{'y' if len(todo) == 1 else 'ies'} on top of "
                         f"{served.name} ({len(forgotten)} in its ledger){' with --push-past' if push else ''}")
                people = tuple({src.key(): src for src in todo.values()}.values())  # one person asked twice: once
                # interrupted after a checkpoint: resumed; before it: redone (this worker holds the lock)
                unlearn_job(run, people, ucfg, resume=rundir.resume_or_restart(run), progress=False)
            report = reports.read(run)
            if report is None or report.get("required") != cfg.require:
                self.log(f"{batch}: verifying (level {cfg.require})")
                report = verify_run(run, VerifyConfig(require=cfg.require, no_reinversion=cfg.require != "robust",
                                                      n_preserve=cfg.n_preserve, device=cfg.device))
        except GuideEngineError as e:
            self.log(f"{batch}: failed: {e}")
            store.move(list(todo), "failed", f"{batch}: {e}")
            return
        rows = {row["key"]: row for row in report["identities"]}
        if not report["passed"]:
            self.refuse(batch, todo, rows, report)
            return
        target = run
        if exportdir.is_export(served) or cfg.triton_repo:
            target = store.runs / f"{batch}-export"
            if not target.is_dir():
                self.log(f"{batch}: exporting to ONNX (with parity)")
                old = exportdir.read_manifest(served) if exportdir.is_export(served) else {}
                fp16 = old.get("artifacts", {}).get("onnx", {}).get("precision") == "fp16"
                try:
                    export_job(str(run), target, ExportConfig(onnx=True, fp16=fp16, max_batch=old.get("max_batch",
                                                                                                      64)))
                except GuideEngineError as e:
                    store.move(list(todo), "failed", f"{batch}: export: {e}")
                    return
            if cfg.triton_repo:
                write_triton_version(target, Path(cfg.triton_repo), batch, store)
        before, after = weights_sha256(served), weights_sha256(target)
        with store.transaction():  # the server swaps it in, then marks the requests deployed
            for rid, src in todo.items():
                store.move([rid], "running", "verified; being swapped in", deploy=str(target),
                           certificate=str(target / reports.REPORT), weights_sha256_before=before,
                           weights_sha256_after=after, identity_hash=rows[src.key()]["identity_hash"])
            store.set_meta("deploy_next", str(target))
        self.log(f"{batch}: verified and ready in {time.perf_counter() - t0:.0f} s; the server swaps it in")

    def refuse(self, batch: str, todo: dict, rows: dict, report: dict) -> None:
        """A batch that failed verify deploys nothing: a person it did not forget goes back to the queue once for a
        second try with --push-past (docs/many.md: it forgets about half of those the defaults leave), the
        requests it cannot be (not drawn, not found, not forgotten on the second try) are refused, those that
        failed with a whole batch fail, and the others go back to the queue for a batch without them (at most
        MAX_ATTEMPTS times)."""
        store = self.store
        own = {rid: why_not(rows.get(src.key(), {}), report["thresholds"]) for rid, src in todo.items()}
        kept = report["preservation"]["same_person_frac"]
        common = None if any(own.values()) else (
            f"verify failed (level {report['required']}): random faces kept {kept:.3f}" if kept < reports.MIN_KEPT
            else f"verify failed (level {report['required']}): outcome {report.get('outcome')}")
        for rid, why in own.items():
            row = store.get(rid)
            unforgotten = bool(why) and why.startswith(NOT_FORGOTTEN)
            pushed = bool(self.cfg.unlearn.get("push_past") or row["push_past"])
            if unforgotten and not pushed and row["attempts"] + 1 < MAX_ATTEMPTS:
                store.move([rid], "queued", f"{batch}: {why}; queued again for a second try with --push-past",
                           batch=None, attempts=row["attempts"] + 1, push_past=1)
            elif why:
                store.move([rid], "refused", why + (" (with --push-past too)" if unforgotten and pushed else ""))
            elif common or row["attempts"] + 1 >= MAX_ATTEMPTS:
                store.move([rid], "failed", common or f"{batch}: verify failed on other requests, twice")
            else:
                store.move([rid], "queued", f"{batch} failed on other requests; queued again", batch=None,
                           attempts=row["attempts"] + 1)
        self.log(f"{batch}: verify failed; nothing deployed")

    def run_forever(self, stop=lambda: False) -> None:
        while not stop():
            try:
                worked = self.step()
            except Exception as e:  # one line in the worker's log; the request states say the rest
                self.log(f"worker: {type(e).__name__}: {e}")
                traceback.print_exc(file=sys.stderr)
                worked = False
                self.fail_running(f"worker error: {type(e).__name__}: {e}")
            if not worked:
                time.sleep(POLL_S)

    def fail_running(self, reason: str) -> None:
        rows = [r for r in self.store.with_state("running") if not r["deploy"]]
        self.store.move([r["id"] for r in rows], "failed", reason)


def write_triton_version(export: Path, model_dir: Path, batch: str, store: ForgetStore) -> int:
    """The export's ONNX as the next version of a Triton model folder (model_dir/N/model.onnx, written into a
    hidden folder and renamed, so a polling Triton never sees half a version) => N. Once per batch."""
    done = store.meta(f"triton:{batch}")
    if done:
        return int(done)
    if not (model_dir / "config.pbtxt").is_file():
        raise GuideEngineError(f"--triton-repo {model_dir}: no config.pbtxt (give a model's folder in a Triton model "
                               f"repository)")
    versions = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    n = max(versions, default=0) + 1
    tmp = model_dir / f".{n}.partial"
    tmp.mkdir(exist_ok=True)
    art = exportdir.read_manifest(export)["artifacts"]["onnx"]["file"]
    (tmp / "model.onnx").write_bytes((export / art).read_bytes())
    os.replace(tmp, model_dir / str(n))
    store.set_meta(f"triton:{batch}", str(n))
    return n


def die_with_parent() -> None:
    """Linux: SIGKILL this process when the server that started it dies (even by SIGKILL), so that a restarted
    server's worker is the only one."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main(state_dir: Path, child: bool = False) -> None:
    """`guide-engine worker DIR`: run the worker of a state directory until SIGTERM."""
    if child:
        die_with_parent()
    store = ForgetStore(state_dir)
    cfg = WorkerConfig(**store.read_config())
    lock = os.open(store.dir / "worker.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise GuideEngineError(f"{state_dir}: another worker is running on it") from None
    os.nice(10 if child else 0)
    torch.set_num_threads(cfg.threads)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    log = lambda msg: print(f"guide-engine worker: {msg}", file=sys.stderr, flush=True)  # noqa: E731
    log(f"{state_dir}: {cfg.threads} thread(s), level {cfg.require}")
    Worker(store, cfg, log).run_forever(stop=lambda: bool(stopping))
