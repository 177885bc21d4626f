"""UFO: the un-identifying target latent (GUIDE-SPEC section 2).

    w_id = w_u - w_avg
    w_t  = w_avg - d * w_id / ||w_id||      ("extra", the default; norm over the whole latent)
    w_t  = w_avg                            ("average", the baseline)

`d` only means something relative to how far latents lie from w_avg, so it is accepted absolute or
relative to the measured typical radius r = median ||w - w_avg|| (the official d = 30 is EG3D's W+).
"""
from __future__ import annotations

import torch

from guide_engine.engine.errors import GuideEngineError


@torch.no_grad()
def typical_radius(generator, n: int = 2048, seed: int = 0) -> float:
    """r = median ||w - w_avg|| over n latents drawn from the prior."""
    w = generator.sample_latents(n, torch.Generator().manual_seed(seed))
    return (w - generator.average_latent()).flatten(1).norm(dim=1).median().item()


def resolve_distance(r: float, d: float | None, d_rel: float | None, default_rel: float) -> float:
    """Absolute d from --target-distance (absolute) or --target-distance-rel (times r)."""
    if d is not None and d_rel is not None:
        raise GuideEngineError("give --target-distance or --target-distance-rel, not both")
    if d is None:
        d = (default_rel if d_rel is None else d_rel) * r
    if not d > 0:
        raise GuideEngineError(f"target distance must be positive, got {d}")
    return float(d)


NEIGHBOR_RADIUS_REL = 0.3  # "other photos" of an identity: latents 0.3 r from w_u (r = median ||w - w_avg||)


def latents_around(w_u: torch.Tensor, n: int, radius: float, rng: torch.Generator) -> torch.Tensor:
    """(1, *S) => (n, *S): w_u plus random directions of length `radius` (norm over the whole latent)."""
    dirs = torch.randn(n, *w_u.shape[1:], generator=rng).to(w_u.device)
    dirs = dirs / dirs.flatten(1).norm(dim=1).view(-1, *[1] * (w_u.dim() - 1))
    return w_u + radius * dirs


@torch.no_grad()
def ufo_target(w_u: torch.Tensor, w_avg: torch.Tensor, d: float, kind: str = "extra") -> torch.Tensor:
    """(1, *S), (1, *S) => (1, *S) the target latent w_t."""
    if kind == "average":
        return w_avg.clone()
    if kind != "extra":
        raise GuideEngineError(f"--target {kind!r}: expected extra or average")
    w_id = w_u - w_avg
    norm = w_id.norm()
    if norm == 0:
        raise GuideEngineError("the identity latent equals the average latent: there is no direction to extrapolate")
    return w_avg - d * w_id / norm
