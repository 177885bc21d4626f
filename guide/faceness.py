"""Is an image a face the generator draws well? The check behind every UFO target and verify's look at w_u.

"Farthest from the person" alone rewards images that are no one: a black square is far from every face. A face
here is an image in which the face detector (YuNet, engine/faces.py's own detection) finds a face, and whose
look lies within the range of the generator's own faces: mean brightness and contrast (the standard deviation
of the grey level), both on the 0-255 scale, within the 1st-99th percentiles over the 400 faces of the
calibration seeds (guide/calibration.py), measured per generator and cached beside the calibrations.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..engine import files
from ..engine.models import zoo
from ..engine.runtime import in_batches, synthesis_batch
from .calibration import CALIB_SEEDS

LOOK_VERSION = 1
LOW, HIGH = 0.01, 0.99  # the look range: these quantiles of the generator's own faces


def look(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3, H, W) in [-1, 1] => (brightness (N,), contrast (N,)) on the 0-255 scale."""
    x = (images.detach().float().cpu().clamp(-1, 1) * 127.5 + 127.5)
    grey = x.mean(dim=1).flatten(1)
    return x.flatten(1).mean(dim=1).numpy(), grey.std(dim=1).numpy()


def faces_found(images: torch.Tensor, detector=None) -> np.ndarray:
    """(N, 3, H, W) => (N,) bool: the detector finds a face in the image."""
    from ..engine.faces import find_faces
    from ..engine.images import to_uint8

    detector = detector or zoo.load_detector()
    return np.array([bool(find_faces(rgb, detector)) for rgb in to_uint8(images.detach().cpu())])


@dataclass(frozen=True)
class LookRange:
    """The range of the generator's own faces, and how often the detector finds their face."""

    brightness: tuple[float, float]
    contrast: tuple[float, float]
    detected_frac: float
    n: int

    def check(self, images: torch.Tensor, detector=None) -> dict:
        """=> per image (N,) arrays: `face` (found by the detector), `in_look` (brightness and contrast within the
        range), `ok` (both), `brightness`, `contrast`."""
        b, c = look(images)
        in_look = (b >= self.brightness[0]) & (b <= self.brightness[1]) & (c >= self.contrast[0]) & \
            (c <= self.contrast[1])
        face = faces_found(images, detector)
        return {"face": face, "in_look": in_look, "ok": face & in_look, "brightness": b, "contrast": c}

    def describe(self, fig: dict, i: int = 0) -> str:
        """One image's figures in words (for warnings)."""
        what = [] if fig["face"][i] else ["no face found"]
        if not fig["in_look"][i]:
            what.append(f"brightness {fig['brightness'][i]:.1f} (the generator's faces {self.brightness[0]:.1f}-"
                        f"{self.brightness[1]:.1f}), contrast {fig['contrast'][i]:.1f} ({self.contrast[0]:.1f}-"
                        f"{self.contrast[1]:.1f})")
        return "; ".join(what) or "a face"


def _path(generator, base_sha: str) -> Path:
    name = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in Path(generator.name.split(":")[-1]).name)
    return zoo.cache_home() / "calibration" / f"look__{name}__{base_sha[:16]}__v{LOOK_VERSION}.json"


def _sha(obj: dict) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


@torch.no_grad()
def look_range(generator, base_sha: str, detector=None) -> LookRange:
    """The generator's own faces (the calibration seeds): their look's 1st-99th percentiles; cached per base
    generator state, with the file's content hash (a damaged or edited file is measured again)."""
    path = _path(generator, base_sha)
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
            if saved.pop("content_sha256", None) == _sha(saved):
                return LookRange(tuple(saved["brightness"]), tuple(saved["contrast"]), saved["detected_frac"],
                                 saved["n"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    w = generator.latents_for_seeds(CALIB_SEEDS)
    x = in_batches(generator.synthesize, w, synthesis_batch(generator)).cpu()
    b, c = look(x)
    found = faces_found(x, detector)
    saved = {"generator": generator.name, "brightness": [float(np.quantile(b, LOW)), float(np.quantile(b, HIGH))],
             "contrast": [float(np.quantile(c, LOW)), float(np.quantile(c, HIGH))],
             "detected_frac": float(found.mean()), "n": len(x)}
    files.write_json(path, {**saved, "content_sha256": _sha(saved)})
    return LookRange(tuple(saved["brightness"]), tuple(saved["contrast"]), saved["detected_frac"], saved["n"])
