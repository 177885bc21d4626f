"""The export directory: what `export` writes, and the one place that names its manifest, writes it and reads it.

EXPORT_DIR/ generator.onnx (or generator_fp16.onnx)   the ONNX artifact
            generator.plan                           the TensorRT plan (with --trt)
            export.json                              the manifest: artifacts with their SHA-256 and parity, the
                                                     measured throughput, the source run
            manifest.json, identities.json, config.json, report.json   the source run's, copied along
Work happens in EXPORT_DIR.partial/, locked by the one `export` writing it (engine/files.py: locked_partial),
renamed to EXPORT_DIR when every artifact has passed parity; a failed export leaves nothing behind.
"""
from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

from .errors import GuideEngineError
from .files import locked_partial, write_json
from .rundir import partial  # OUT.partial/ beside OUT: the one rule for both folders

MANIFEST = "export.json"


def is_export(folder: Path) -> bool:
    return (Path(folder) / MANIFEST).is_file()


def read_manifest(folder: Path) -> dict:
    """export.json, or a one-line error saying the folder is not an export directory."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise GuideEngineError(f"{folder}: not an export directory (no {MANIFEST}); run `guide-engine export` "
                               f"first")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise GuideEngineError(f"{path}: not a readable export record ({type(e).__name__}); export again") from None


def write_manifest(work: Path, manifest: dict) -> None:
    write_json(Path(work) / MANIFEST, manifest)


@contextlib.contextmanager
def owned(out: Path):
    """The export directory's one writer: yields OUT.partial/ (locked); renamed to OUT when the body returns,
    removed with everything in it when the body fails (nothing is left behind)."""
    out = Path(out)
    if out.exists():
        raise GuideEngineError(f"--out {out} already exists; choose a new directory")
    with locked_partial(out, partial(out), "export") as (work, _):
        try:
            for stale in work.iterdir():  # what a crashed export left (the lock is ours: no one else writes it)
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
            yield work
            if out.exists():  # made by another writer between our first check and the lock
                raise GuideEngineError(f"--out {out} already exists; choose a new directory")
            work.rename(out)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
