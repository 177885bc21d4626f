"""Files the engine writes and reads: atomic writes, JSON, SHA-256 of files and of module states.

Every file the engine writes goes through `atomic_write` (a temp file beside it, then a rename): a reader
never sees a half-written file, and a crash leaves the old file or none.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable

from .errors import GuideEngineError


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def state_sha256(module) -> str:
    """The SHA-256 of a torch module's state dict (names and bytes, in name order)."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


PRIVATE = 0o600  # personal data (a ledger with w_u, a person's aligned face): readable by its owner only


def atomic_write(path: Path, write: Callable[[Path], None], private: bool = False) -> None:
    """Call write(tmp) on a temp file beside `path`, then rename it over `path`: never a half-written file.
    The file gets the mode any new file gets (0666 less the umask), not mkstemp's private 0600: a server running
    as another user reads a run or an export as it would read any file; `private` files (personal data) get
    0600 whatever the umask. The mode is set after `write`, which may have made the file anew (safetensors'
    save_file does, as 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, PRIVATE if private else 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def locked_partial(out: Path, work: Path, command: str):
    """The one writer of a folder being made: `work` (OUT.partial/) made and held under an exclusive lock while the
    body runs => (work, the folders made for it, deepest first). A second writer of the same `out` is refused in
    one line naming `command`."""
    import fcntl

    made = [p for p in (work, *work.absolute().parents) if not p.exists()]  # deepest first
    work.mkdir(parents=True, exist_ok=True)
    fd = os.open(work, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise GuideEngineError(f"--out {out}: another `{command}` is writing it ({work.name}/); wait for it to "
                               f"finish, or choose another --out") from None
    try:
        yield work, made
    finally:
        os.close(fd)


def write_json(path: Path, obj, private: bool = False) -> None:
    """obj => indented JSON at `path`, written atomically (`private`: readable by its owner only)."""
    atomic_write(Path(path), lambda tmp: tmp.write_text(json.dumps(obj, indent=2) + "\n"), private)


def read_json(path: Path) -> dict:
    """A JSON file => its object; a missing or unreadable one is a one-line error naming the file."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise GuideEngineError(f"{path}: cannot read ({type(e).__name__}: {e})") from None


def read_state_dict(path: str | os.PathLike, what: str) -> dict:
    """A user's weights file => its tensors, read with weights_only (no code runs); one-line errors.
    `what` names the expected file in the messages, e.g. "ArcFace IR-SE50 weights, model_ir_se50.pth"."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise GuideEngineError(f"{path}: no such file ({what})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise GuideEngineError(f"{path}: not a readable PyTorch state dict ({type(e).__name__}); "
                               f"expected {what}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise GuideEngineError(f"{path}: holds a {type(state).__name__}, not a state dict; expected {what}")
    return state
