"""Calibration: what "the same person" means to a network on a generator, measured, not assumed.

Distances between random pairs of the base generator's images (strangers, 200 x 200 pairs), in each network's
own distance (dlib: euclidean; cosine networks: 1 - cos), with every 0.1% quantile. A fixed threshold does
not transfer: with dlib on the DigiFace DCGAN most stranger pairs fall under dlib's 0.6, which is reported
beside for reference only. Cached per (base generator state, network weights) in
$GUIDE_ENGINE_HOME/calibration/, with its own content hash (a damaged or edited file is calibrated again).
"""
from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..engine import files
from ..engine.models import zoo
from ..engine.rng import seeded_rng
from ..engine.runtime import in_batches, synthesis_batch

CALIB_SEEDS = range(1_000_000, 1_000_400)  # 200 x 200 stranger pairs
CALIB_VERSION = 3  # 2: quantiles at every 0.1% (p0.1, p1, "closer than X% of strangers"); 3: its own content hash


def descriptors(net, images: torch.Tensor) -> torch.Tensor:
    return in_batches(net.descriptors, images)


def calibration_path(generator, net, base_sha: str) -> Path:
    """Where the calibration of (base generator, network) is cached: keyed by the base generator's state hash and,
    for a network given as a file, by the file's SHA-256 (weights replaced at the same path are calibrated
    again), and by the face crop where it is not the whole frame (engine/models/face_input.py). A model given by
    path is named by its file name only, so copies of it in other folders (the test suite's temporary ones)
    share one entry."""
    def short(name: str) -> str:  # "nvlabs:/a/b/eg3d.pkl" => "nvlabs:eg3d.pkl"
        kind, _, path = name.partition(":")
        return f"{kind}:{Path(path).name}" if path else Path(name).name
    crops = sorted({getattr(m, "crop", "full") for m in getattr(net, "members", [net])} - {"full"})
    names = re.sub(r"[^A-Za-z0-9._-]+", "_",
                   f"{short(generator.name)}__{short(net.name)}{''.join(f'__{c}' for c in crops)}")[-120:]
    key = base_sha[:16]
    if net.name not in zoo.REGISTRY and (sha := zoo.weights_sha256(net.name)):
        key += f"_{sha[:16]}"
    return zoo.cache_home() / "calibration" / f"{names}__{key}__v{CALIB_VERSION}.json"


def stranger_pairs(d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) descriptors of random faces => (a, b), each (N/2 * N/2, D): every face of the first half against
    every face of the second, the stranger pairs a calibration measures."""
    half = len(d) // 2
    return d[:half].repeat_interleave(len(d) - half, dim=0), d[half:].repeat(half, 1)


@torch.no_grad()
def calibrate(generator, net, base_sha: str) -> dict:
    """Strangers' distance distribution in the network's own distance, cached in $GUIDE_ENGINE_HOME/calibration/."""
    path = calibration_path(generator, net, base_sha)
    if path.is_file():
        try:
            calib = json.loads(path.read_text())
            if calib.pop("content_sha256", None) == content_sha256(calib):
                return calib
        except (OSError, ValueError, AttributeError):
            pass
        print(f"note: {path} is damaged or was edited (its content hash does not match); calibrating again",
              file=sys.stderr)
    w = generator.latents_for_seeds(CALIB_SEEDS)
    with seeded_rng(CALIB_SEEDS[0], w.device):  # EG3D's ray samples: the same calibration on every machine
        d = descriptors(net, in_batches(generator.synthesize, w, synthesis_batch(generator),
                                        desc=f"calibrating {net.name} (once)")).cpu()
    a, b = stranger_pairs(d)  # all 200 x 200 pairs
    half = len(d) // 2
    dist = net.distance(a, b).cpu()  # the network's own distance (dlib: euclidean; cosine networks: 1 - cos)
    cos = F.cosine_similarity(d[:half, None], d[None, half:], dim=2).flatten()
    quantiles = dist.quantile(torch.linspace(0, 1, 1001, dtype=dist.dtype))
    calib = {"generator": generator.name, "identity_network": net.name, "distance": net.distance_name,
             "pairs": dist.numel(),
             "strangers_dist_median": dist.median().item(), "strangers_dist_p5": dist.quantile(0.05).item(),
             "strangers_dist_p1": quantiles[10].item(), "strangers_dist_p0.1": quantiles[1].item(),
             "strangers_cos_mean": cos.mean().item(),
             "network_threshold": net.threshold,
             "strangers_frac_under_network_threshold":
                 None if net.threshold is None else (dist < net.threshold).float().mean().item(),
             "quantiles": [round(q, 6) for q in quantiles.tolist()],
             "mean_embedding": F.normalize(d, dim=1).mean(0).tolist()}
    files.write_json(path, {**calib, "content_sha256": content_sha256(calib)})
    return calib


def content_sha256(calib: dict) -> str:
    """The calibration's own hash, stored in its file: a file damaged or edited on disk is calibrated again."""
    return hashlib.sha256(json.dumps(calib, sort_keys=True).encode()).hexdigest()


def strangers(calib: dict) -> dict:
    """The calibration's quantiles under the report's names."""
    return {"p0.1": calib["strangers_dist_p0.1"], "p1": calib["strangers_dist_p1"], "p5": calib["strangers_dist_p5"],
            "p50": calib["strangers_dist_median"]}


def quantile(calib: dict, q: float) -> float:
    """The strangers' distance at quantile q in [0, 1] (interpolated between the stored 0.1% steps)."""
    qs = np.asarray(calib["quantiles"])
    return float(np.interp(q, np.linspace(0, 1, len(qs)), qs))


def strangers_closer_than(calib: dict, dist: float) -> float:
    """Fraction of stranger pairs that lie closer than `dist` (0.002 => "farther than 99.8% of strangers are")."""
    q = np.asarray(calib["quantiles"])
    return float(np.interp(dist, q, np.linspace(0, 1, len(q)), left=0.0, right=1.0))
