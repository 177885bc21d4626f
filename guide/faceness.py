"""Is an image a face the generator draws well? The check behind every UFO target and verify's look at w_u.

"Farthest from the person" alone rewards images that are no one: a black square is far from every face. A face
here is an image in which the face detector (YuNet, engine/faces.py's own detection) finds a face as the
generator's own faces are found (its score at least their 5th percentile, its box's width within their
1st-99th percentiles: YuNet's own threshold, 0.6, also fires on textures), and whose look lies within the range
of the generator's own faces: mean brightness and contrast (the standard deviation of the grey level), both on
the 0-255 scale, within their 1st-99th percentiles. All measured on the 400 faces of the calibration seeds
(guide/calibration.py), per generator, and cached beside the calibrations. A UFO target must be a face with
room to spare (`as_target`: its look within the 5th-95th percentiles, its score at least their 25th), since the
unlearned face at w_u only approximates it and must still pass the plain check.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..engine import files
from ..engine.models import zoo
from ..engine.runtime import in_batches, synthesis_batch
from .calibration import CALIB_SEEDS, content_sha256

LOOK_VERSION = 3  # 2: the detection's score and box width; 3: a target's stricter range
LOW, HIGH = 0.01, 0.99  # the look range and the face box's width: these quantiles of the generator's own faces
SCORE_LOW = 0.05  # the detection's score: at least this quantile of theirs (faces not found count as 0)
# A target must be a face with room to spare: the unlearned face at w_u only approximates it (a little blurrier,
# a little brighter), and must still pass the check above. Its look within these quantiles, its score at least:
TARGET_LOW, TARGET_HIGH, TARGET_SCORE = 0.05, 0.95, 0.25
# Below this share of its own faces found, the detector does not see this generator's faces (a toy, another
# domain, another size): the check would call every face a non-face, so it is not made, and the user is told.
MIN_DETECTED = 0.5


def look(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3, H, W) in [-1, 1] => (brightness (N,), contrast (N,)) on the 0-255 scale."""
    x = (images.detach().float().cpu().clamp(-1, 1) * 127.5 + 127.5)
    grey = x.mean(dim=1).flatten(1)
    return x.flatten(1).mean(dim=1).numpy(), grey.std(dim=1).numpy()


def detections(images: torch.Tensor, detector=None) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3, H, W) => (the best face's score (N,), its box's width in pixels (N,)); 0 where none is found."""
    from ..engine.faces import find_faces
    from ..engine.images import to_uint8

    detector = detector or zoo.load_detector()
    found = [find_faces(rgb, detector) for rgb in to_uint8(images.detach().cpu())]
    best = [max(f, key=lambda face: face.score) if f else None for f in found]
    return (np.array([b.score if b else 0.0 for b in best]), np.array([b.box[2] if b else 0.0 for b in best]))


@dataclass(frozen=True)
class LookRange:
    """The range of the generator's own faces, and how often the detector finds their face."""

    brightness: tuple[float, float]
    contrast: tuple[float, float]
    score_min: float  # the detection's score: the generator's faces' 5th percentile
    width: tuple[float, float]  # the face box's width, pixels: their 1st-99th percentiles
    detected_frac: float
    n: int
    target: dict  # the stricter range a target must meet: brightness, contrast (5th-95th), score_min (25th)

    @property
    def usable(self) -> bool:
        """Does the detector find this generator's own faces often enough for the check to mean anything?"""
        return self.detected_frac >= MIN_DETECTED

    def unusable_why(self) -> str:
        return (f"the face detector finds a face in {self.detected_frac:.0%} of this generator's own {self.n} faces "
                f"(the check needs {MIN_DETECTED:.0%})")

    def check(self, images: torch.Tensor, detector=None, as_target: bool = False) -> dict:
        """=> per image (N,) arrays: `face` (found as the generator's faces are), `in_look` (brightness and contrast
        within the range), `ok` (both), `brightness`, `contrast`, `score`, `width`. `as_target`: the stricter
        range a UFO target must meet."""
        bright, contrast, score_min = (self.brightness, self.contrast, self.score_min) if not as_target else \
            (self.target["brightness"], self.target["contrast"], self.target["score_min"])
        b, c = look(images)
        in_look = (b >= bright[0]) & (b <= bright[1]) & (c >= contrast[0]) & (c <= contrast[1])
        score, width = detections(images, detector)
        face = (score >= score_min) & (width >= self.width[0]) & (width <= self.width[1])
        return {"face": face, "in_look": in_look, "ok": face & in_look, "brightness": b, "contrast": c,
                "score": score, "width": width}

    def target_check(self, images: torch.Tensor) -> dict:
        """`check` with the stricter range a UFO target must meet (the search's `qualify`)."""
        return self.check(images, as_target=True)

    def describe(self, fig: dict, i: int = 0) -> str:
        """One image's figures in words (for warnings)."""
        what = [] if fig["face"][i] else ["no face found" if not fig["score"][i] else
                                          f"no face as the generator's are found (score {fig['score'][i]:.2f}, from "
                                          f"{self.score_min:.2f}; width {fig['width'][i]:.0f} px, "
                                          f"{self.width[0]:.0f}-{self.width[1]:.0f})"]
        if not fig["in_look"][i]:
            what.append(f"brightness {fig['brightness'][i]:.1f} (the generator's faces {self.brightness[0]:.1f}-"
                        f"{self.brightness[1]:.1f}), contrast {fig['contrast'][i]:.1f} ({self.contrast[0]:.1f}-"
                        f"{self.contrast[1]:.1f})")
        return "; ".join(what) or "a face"


def _path(generator, base_sha: str) -> Path:
    name = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in Path(generator.name.split(":")[-1]).name)
    return zoo.cache_home() / "calibration" / f"look__{name}__{base_sha[:16]}__v{LOOK_VERSION}.json"


@torch.no_grad()
def look_range(generator, base_sha: str, detector=None) -> LookRange:
    """The generator's own faces (the calibration seeds): their look's 1st-99th percentiles; cached per base
    generator state, with the file's content hash (a damaged or edited file is measured again). Check
    `usable` before checking images against it."""
    path = _path(generator, base_sha)
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
            if saved.pop("content_sha256", None) == content_sha256(saved):
                return _range(saved)
        except (OSError, ValueError, KeyError, TypeError):
            pass
    w = generator.latents_for_seeds(CALIB_SEEDS)
    x = in_batches(generator.synthesize, w, synthesis_batch(generator)).cpu()
    b, c = look(x)
    score, width = detections(x, detector)
    found = score > 0
    widths = width[found] if found.any() else np.zeros(1)  # no face found at all: the range is never used
    saved = {"generator": generator.name, "brightness": [float(np.quantile(b, LOW)), float(np.quantile(b, HIGH))],
             "contrast": [float(np.quantile(c, LOW)), float(np.quantile(c, HIGH))],
             "score_min": float(np.quantile(score, SCORE_LOW)),
             "width": [float(np.quantile(widths, LOW)), float(np.quantile(widths, HIGH))],
             "detected_frac": float(found.mean()), "n": len(x),
             "target": {"brightness": [float(np.quantile(b, TARGET_LOW)), float(np.quantile(b, TARGET_HIGH))],
                        "contrast": [float(np.quantile(c, TARGET_LOW)), float(np.quantile(c, TARGET_HIGH))],
                        "score_min": float(np.quantile(score, TARGET_SCORE))}}
    files.write_json(path, {**saved, "content_sha256": content_sha256(saved)})
    return _range(saved)


def _range(saved: dict) -> LookRange:
    return LookRange(tuple(saved["brightness"]), tuple(saved["contrast"]), saved["score_min"], tuple(saved["width"]),
                     saved["detected_frac"], saved["n"], saved["target"])
