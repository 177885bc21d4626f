"""The identity networks as the algorithm uses them: on a generator, with their units measured on it.

`engine/models/zoo.py: load_identity` loads a network by name; here it is given the generator's crop and, for an
ensemble (`--identity dlib-resnet-v1+arcface-mbf`), each member's unit: the strangers' mean cosine distance
1 - cos on this generator (guide/calibration.py), so that every member's term counts in its own units
(engine/models/ensemble.py). Every part of guide/ that needs a training network or an attacker's network gets
it from `identity_network`.
"""
from __future__ import annotations

from ..engine.crops import crop_of
from ..engine.models import zoo
from ..engine.models.ensemble import EnsembleIdentity
from .calibration import calibrate


def identity_network(name: str, generator, base_sha: str, device: str = "cpu"):
    """The identity network `name` (a zoo name, arcface-ir-se50:PATH, or an ensemble) for this generator."""
    crop = crop_of(generator)
    if len(names := zoo.ensemble_parts(name)) == 1:
        return zoo.load_identity(name, device=device, face_crop=crop)
    parts = [zoo.load_identity(p, device=device, face_crop=crop) for p in names]
    units = [1.0 - calibrate(generator, p, base_sha)["strangers_cos_mean"] for p in parts]
    return EnsembleIdentity(parts, units).to(device)
