"""Who to forget: the people a user names (seeds of the generator, or photos), each found as a latent w_u
(a seed's latent, or the inversion of the photo's aligned face) with its de-identified target w_t (UFO,
identity-checked: guide/target.py), as the ledger's entries (guide/ledger.py)."""
from __future__ import annotations

import functools
import hashlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..engine import rundir
from ..engine.errors import GuideEngineError
from . import ledger
from .config import UnlearnConfig
from .target import identity_distances, search_ufo_target, ufo_target


@dataclass(frozen=True)
class Source:
    """One person to forget, as the user named them: a seed of the generator, or a photo."""

    seed: int | None = None
    image: str | None = None
    face: int | None = None  # which face of the photo (0 = the largest, the default)

    def describe(self) -> str:
        if self.image is None:
            return f"seed {self.seed}"
        return self.image + (f" (face {self.face})" if self.face else "")

    @functools.cached_property
    def photo_sha256(self) -> str | None:
        """The photo's SHA-256, read once: the key, the ledger and the inversion record all name it."""
        return None if self.image is None else hashlib.sha256(Path(self.image).read_bytes()).hexdigest()

    def key(self) -> str:
        """The ledger's key of this person (guide/ledger.py: source_key)."""
        if self.image is None:
            return ledger.source_key(seed=self.seed)
        return ledger.source_key(photo_sha256=self.photo_sha256, face=self.face)


def collect_sources(seeds: list[int], images: list[str], images_dir: str | None,
                    face: int | None = None) -> tuple[tuple[Source, ...], list[str]]:
    """The identities the CLI was given => (sources, each counted once; notes on the duplicates dropped).
    `images_dir`: every file in it is a photo of one person (dotfiles and folders are passed over); a
    file that is not an image is refused by name, before any work starts. `face`: which face of each photo."""
    from ..engine.faces import read_photo

    if face is not None and face < 0:
        raise GuideEngineError(f"--face {face}: 0 is the largest face, 1 the next, ...")
    paths = list(images)
    if images_dir is not None:
        folder = Path(images_dir)
        if not folder.is_dir():
            raise GuideEngineError(f"--images {folder}: not a directory")
        found = sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith("."))
        if not found:
            raise GuideEngineError(f"--images {folder}: no files in it")
        for f in found:
            read_photo(f, f"--images {folder}:")
        paths += [str(f) for f in found]
    sources, seen, notes = [], {}, []
    for src in [Source(seed=s) for s in seeds] + [Source(image=p, face=face or None) for p in paths]:
        if src.image is not None and not Path(src.image).is_file():
            raise GuideEngineError(f"--image {src.image}: no such file")
        key = src.key()
        if key in seen:
            notes.append(f"{src.describe()}: the same identity as {seen[key].describe()}; counted once")
            continue
        seen[key] = src
        sources.append(src)
    return tuple(sources), notes


def note(msg: str, progress: bool) -> None:
    if progress:
        print(msg, file=sys.stderr)


def find_identity(G_s, id_net, src: Source, invert_steps: int, progress: bool, precision: str = "fp32",
                  calib: dict | None = None) -> tuple[torch.Tensor, dict, torch.Tensor | None]:
    """=> (w_u (1, *S), how it was obtained, the aligned photo (1, 3, H, W) or None for a seed).
    A photo: its face found and aligned to the generator's crop (engine/faces.py), inverted, and how close the
    inversion came said (against `calib`, the training network's strangers: guide/calibration.py)."""
    if src.image is None:
        w_u = G_s.latents_for_seeds([src.seed]).to(G_s.average_latent().device)
        return w_u, {"source": "seed", "seed": src.seed}, None
    from ..engine.faces import describe_faces, load_face
    from .invert import invert

    aligned = load_face(src.image, G_s, face=src.face)
    if len(aligned.faces) > 1:
        note(f"{src.image}: {len(aligned.faces)} faces found, #{aligned.chosen} used (--face K for another): "
             f"{describe_faces(aligned.faces)}", progress)
    photo = aligned.image.to(G_s.average_latent().device)
    w_u, rec_err = invert(G_s, id_net, photo, steps=invert_steps, progress=progress, precision=precision)
    how = {"source": "inversion", "steps": invert_steps, "reconstruction_mse": rec_err, "precision": precision,
           "photo_sha256": src.photo_sha256, "face": aligned.record(),
           "detect_align_s": round(sum(aligned.seconds.values()), 4)}
    if calib is not None:  # can this generator draw this person? (the training network's view; verify asks the judge)
        with torch.no_grad():
            d = id_net.distance(id_net.descriptors(G_s.synthesize(w_u)), id_net.descriptors(photo)).item()
        line = calib["strangers_dist_p1"]
        how.update(inversion_id_dist=d, same_person_line=line)
        note(f"{src.describe()}: the inversion came to pixel MSE {rec_err:.4f} and {id_net.name} distance {d:.3f} from "
             f"the aligned photo (same person below {line:.3f}, the strangers' p1; strangers' median "
             f"{calib['strangers_dist_median']:.3f})", progress)
        if d >= line:
            note(f"warning: {src.describe()}: the generator's closest face is farther from the photo than the "
                 f"same-person line: it may never have drawn this person; `verify` will say (outcome 'not drawn')",
                 True)
    return w_u, how, photo


def ledger_entries(G_s, id_net, sources: list[Source], cfg: UnlearnConfig, first_index: int, run_name: str,
                   calib: dict | None, progress: bool) -> tuple[list[dict], list[torch.Tensor | None]]:
    """Each source found (w_u) and given its target (w_t) => (the ledger's new entries, the aligned photos).
    `cfg` is resolved (d, the search); `first_index`: the ledger's index of the first new identity."""
    from ..engine.files import state_sha256
    from .faceness import look_range

    w_avg = G_s.average_latent()
    looks = look_range(G_s, state_sha256(G_s)) if cfg.target == "extra" and cfg.target_search > 0 else None
    if looks is not None and not looks.usable:
        note(f"warning: {looks.unusable_why()}: targets are chosen without the face check", True)
        looks = None
    entries, photos = [], []
    for i, src in enumerate(sources):
        w_u, how, photo = find_identity(G_s, id_net, src, cfg.invert_steps, progress, cfg.precision, calib)
        if photo is not None:
            how["aligned"] = rundir.aligned_name(first_index + i)
        d = cfg.target_distance
        if cfg.target == "extra":
            w_t, search = search_ufo_target(G_s, id_net, w_u, w_avg, d, cfg.target_search, cfg.target_angle,
                                            torch.Generator().manual_seed(cfg.seed + i),
                                            qualify=looks.target_check if looks else None)
            if search["widened"]:
                note(f"{src.describe()}: no target candidate within {cfg.target_angle:g} degrees was a face the "
                     f"generator draws well; the search widened to {search['max_angle_deg']:g} degrees "
                     f"({search['candidates_face']} of {search['candidates']} candidates qualify)", True)
            if search["face"] is False:
                note(f"warning: {src.describe()}: no target candidate is a face the generator draws well; the UFO "
                     f"formula's target is used as it is", True)
        else:
            w_t = ufo_target(w_u, w_avg, d, cfg.target)
            search = {"target_id_dist": identity_distances(G_s, id_net, w_u, w_t).item()}
        entries.append({"identity_hash": ledger.latent_hash(w_u), "key": src.key(), "run": run_name,
                        "added": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        "w_u": w_u.flatten().tolist(), "w_t": w_t.flatten().tolist(),
                        "norm_w_u": (w_u - w_avg).norm().item(), "norm_w_t": (w_t - w_avg).norm().item(),
                        "latent": how, "target_id_dist": search["target_id_dist"], "target_search": search})
        photos.append(photo)
    return entries, photos
