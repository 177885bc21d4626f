"""The run directory: what `unlearn` writes, and the one place that names its files, writes it and loads it.

RUN_DIR/ generator.safetensors  the unlearned weights (full state dict)
         generator.pkl          the same, in NVlabs' pickle format (nvlabs:PATH.pkl generators only)
         config.json            the resolved UnlearnConfig (guide/config.py) and the job's sources
         identities.json        the ledger: every person this generator has forgotten (guide/ledger.py)
         aligned.png            each photo's face, aligned to the generator's crop (aligned-<i>.png after the first)
         manifest.json          model names, SHA-256 of base and result and of the files above, timings
         before_after.png       pretrained vs unlearned at each w_u (up to 8), neighbours, random latents
         history.csv, losses.png  the losses over iterations
         report.json, report.png, report.html  written by `verify`
Work happens in RUN_DIR.partial/ (which also holds checkpoint.pt for --resume), locked by the one job writing
it, and is renamed to RUN_DIR at the end (`publish`): a run directory is never half-written.
Every reader (sampling, serving, verify, a continued run) loads it through `load_generator` or `load_continued`,
which check the files against the manifest's SHA-256 record (engine/integrity.py) before the weights are used.
"""
from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from . import integrity
from .errors import GuideEngineError
from .files import locked_partial, read_json, state_sha256, write_json
from .models import zoo

WEIGHTS = "generator.safetensors"
PICKLE = "generator.pkl"
CONFIG = "config.json"
LEDGER = "identities.json"
MANIFEST = "manifest.json"
CHECKPOINT = "checkpoint.pt"
HISTORY = "history.csv"
LOSSES = "losses.png"
BEFORE_AFTER = "before_after.png"
from .reports import REPORT, REPORT_HTML, REPORT_PNG  # noqa: E402,F401  (report.json's owner: engine/reports.py)


def aligned_name(index: int) -> str:
    """The file a run keeps the aligned crop of its ledger's photo identity `index` in: aligned.png for the first
    identity, aligned-<index>.png for later ones (a continued run copies its predecessors')."""
    return "aligned.png" if index == 0 else f"aligned-{index}.png"


def partial(out: Path) -> Path:
    """Where a run works before it is published: OUT.partial/ beside OUT."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


def resume_or_restart(out: Path) -> bool:
    """For a job that makes OUT again after being killed (the forget worker, bench/robust): True when OUT.partial/
    holds a checkpoint to resume from; a partial directory killed before its first checkpoint is removed, so the
    run starts afresh (the caller holds the only claim on OUT). Call it only while OUT itself is unfinished."""
    work = partial(out)
    if (work / CHECKPOINT).is_file():
        return True
    if work.is_dir():
        shutil.rmtree(work)
    return False


def is_run(folder: Path) -> bool:
    """A finished run directory: publish() renames OUT.partial to OUT only after the manifest is written."""
    return (Path(folder) / MANIFEST).is_file()


def read_manifest(run: Path) -> dict:
    """The run's manifest.json, or {} for a directory that has none (written by an older engine)."""
    return read_json(run / MANIFEST) if (run / MANIFEST).is_file() else {}


@contextlib.contextmanager
def owned(out: Path, resume: bool):
    """The run directory's one writer: an exclusive lock on OUT.partial/ while the job works (files.locked_partial).
    A second `unlearn` into the same --out is refused in one line; the folders this job made (the partial one,
    missing parents) are removed again when the job fails before writing into them; a job that fails after
    writing leaves OUT.partial/ for --resume."""
    with locked_partial(Path(out), partial(Path(out)), "unlearn") as (work, made):
        done = False
        try:
            if Path(out).exists() and not resume:  # finished by another job between our first check and the lock
                raise GuideEngineError(f"--out {out} already exists; choose a new directory")
            yield work
            done = True
        finally:
            if not done:  # what this job made and left empty goes again: a refused run writes nothing
                for folder in made:
                    if folder.is_dir() and not any(folder.iterdir()):
                        folder.rmdir()


def publish(work: Path, out: Path) -> Path:
    """OUT.partial/ => OUT, once everything is written (the checkpoint is dropped first)."""
    (work / CHECKPOINT).unlink(missing_ok=True)
    if out.exists():
        shutil.rmtree(out)
    work.rename(out)
    return out


def write_manifest(work: Path, record: dict, extra_files: list[str] = ()) -> None:
    """manifest.json: `record` (model names, hashes of base and result, timings, ...) and `files`, the SHA-256 of
    every file a reader loads or trusts: the weights, the ledger, config.json (which names the base generator the
    weights load into) and `extra_files` (the aligned crops)."""
    names = [WEIGHTS, LEDGER, CONFIG, *extra_files]
    write_json(Path(work) / MANIFEST,
               {**record, "files": {name: integrity.sha256_file(Path(work) / name) for name in names}})


def verify_files(run: Path) -> dict:
    """A run directory's weights and ledger against its manifest's record (engine/integrity.py) =>
    {"weights_sha256", "ledger_sha256", "recorded"}, the hashes a report about this run must name."""
    files = integrity.check_files(run, read_manifest(run).get("files", {}), f"{run / MANIFEST}")
    weights = files.get(WEIGHTS) or integrity.sha256_file(run / WEIGHTS)
    ledger = files.get(LEDGER) or (integrity.sha256_file(run / LEDGER) if (run / LEDGER).is_file() else None)
    return {"weights_sha256": weights, "ledger_sha256": ledger, "recorded": bool(files)}


def _load_weights(generator, weights: Path) -> dict:
    from safetensors.torch import load_file

    try:
        state = load_file(str(weights))
        generator.load_state_dict(state)
    except Exception as e:
        raise GuideEngineError(f"{weights}: cannot load ({type(e).__name__}); the file is damaged or from another "
                               f"model") from None
    return state


def load_generator(run: Path, device: str = "cpu"):
    """An unlearn run directory => the unlearned generator (base architecture from config.json, weights from
    generator.safetensors, both checked against the manifest first), with `.verified` set to their hashes."""
    run = Path(run)
    if not (run / WEIGHTS).is_file() or not (run / CONFIG).is_file():
        raise GuideEngineError(f"{run}: not an unlearn run directory (needs {WEIGHTS} and {CONFIG})")
    verified = verify_files(run)  # before the weights are used: the files are the ones the run wrote
    g = zoo.load_generator(read_json(run / CONFIG)["generator"], device="cpu")
    _load_weights(g, run / WEIGHTS)
    g = g.to(device)
    g.verified = verified
    return g


def load_continued(run: Path) -> tuple[str, dict, str]:
    """A run directory to continue from => (its base generator's name, its weights, their state SHA-256).
    The weights must be the ones its manifest records."""
    if not (run / MANIFEST).is_file() or not (run / WEIGHTS).is_file():
        raise GuideEngineError(f"--generator {run}: not an unlearn run directory (needs {MANIFEST} and {WEIGHTS})")
    m = read_json(run / MANIFEST)
    base = zoo.load_generator(m["generator"])
    state = _load_weights(base, run / WEIGHTS)
    got = state_sha256(base)
    if got != m.get("result_sha256"):
        raise GuideEngineError(f"{run / WEIGHTS}: SHA-256 of the weights {got[:16]}... is not the "
                               f"{str(m.get('result_sha256'))[:16]}... its manifest records; the run directory was "
                               f"changed after it was written")
    return m["generator"], state, got
