"""The ledger: `identities.json`, every person a generator has forgotten so far.

Every run directory carries one. A run that continues from another (`unlearn --generator RUN_DIR`)
copies that run's ledger and appends its own identities, so the newest run's ledger lists everyone the
generator no longer draws; `verify` checks each of them, `serve --guard` withholds each of them.

    {"base_generator": name, "base_sha256": state hash of the pretrained generator,
     "identity_network": ..., "radius_r": r, "target_distance_d": d, "target_distance_rel": d / r,
     "identity_distance_name": ...,
     "identities": [{"identity_hash": SHA-256 of w_u's float32 bytes, "key": "seed:3" | "photo:<SHA-256>",
                     "run": the run directory's name, "added": ISO time,
                     "w_u": [...], "w_t": [...], "norm_w_u", "norm_w_t",
                     "latent": how w_u was obtained (seed, or inversion: steps, reconstruction MSE, photo SHA-256,
                               the face: box, landmarks, score, which of the faces found, the aligned crop's file),
                     "target_id_dist", "target_search": {...}}, ...]}

What it holds about a person: w_u (what the generator is told to stop drawing, and what it drew there),
the photo's SHA-256 and where the face was in it (box, five landmarks), never the photo. w_u reconstructs
what the pretrained generator drew at w_u, no more. The run directory beside it keeps the aligned crop of each
photo (aligned.png): the face at the generator's resolution, which `verify` attacks with.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from ..engine.errors import GuideEngineError
from ..engine.files import read_json
from ..engine.rundir import LEDGER


def latent_hash(w_u: torch.Tensor) -> str:
    return hashlib.sha256(w_u.detach().cpu().float().contiguous().numpy().tobytes()).hexdigest()


def source_key(seed: int | None = None, photo_sha256: str | None = None, face: int | None = None) -> str:
    """What makes two requests the same person: the same seed, or the same photo bytes and the same face in it
    (`face`: its index, largest first; the largest, 0, is the default and is not written)."""
    if photo_sha256 is None:
        return f"seed:{seed}"
    return f"photo:{photo_sha256}" + (f"#face{face}" if face else "")


def read(run: Path) -> dict:
    """The ledger of a run or export directory."""
    run = Path(run)
    if (run / LEDGER).is_file():
        return read_json(run / LEDGER)
    raise GuideEngineError(f"{run}: no {LEDGER}; give a directory made by `guide-engine unlearn` or `export`")


def latents(ledger: dict, shape: tuple[int, ...], key: str = "w_u") -> torch.Tensor:
    """=> (N, *shape) the ledger's w_u (or w_t) in order."""
    return torch.tensor([e[key] for e in ledger["identities"]], dtype=torch.float32).view(-1, *shape)


def check_base(ledger: dict, base_name: str, base_sha: str, where: Path) -> None:
    """A ledger belongs to one pretrained generator: refuse one written for another."""
    if ledger.get("base_sha256") not in (None, base_sha) or ledger.get("base_generator") not in (None, base_name):
        raise GuideEngineError(f"{where / LEDGER}: made for base generator {ledger.get('base_generator')} "
                               f"({str(ledger.get('base_sha256'))[:16]}...), not {base_name} ({base_sha[:16]}...)")
