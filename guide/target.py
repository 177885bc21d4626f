"""UFO: the un-identifying target latent (GUIDE-SPEC section 2).

    w_id = w_u - w_avg
    w_t  = w_avg - d * w_id / ||w_id||      ("extra", the default; norm over the whole latent)
    w_t  = w_avg                            ("average", the baseline)

`d` only means something relative to how far latents lie from w_avg, so it is accepted absolute or
relative to the measured typical radius r = median ||w - w_avg|| (the official d = 30 is EG3D's W+).

Identity-checked UFO (`search_ufo_target`, an engine addition, opt out with --target-search 0): the
formula only guarantees a latent far from w_u, not a face far from the person. On the DigiFace DCGAN a
third of the identities have a UFO target whose image the identity network puts closer to the source
than two random strangers are (measured: seeds 1, 6, 8, 10 of 0-11), and the unlearned image converges
to that target. So the engine draws candidates on the same far side, w_avg + d (cos t u + sin t v) with
u = -w_id / ||w_id||, v a random direction orthogonal to u and t ~ U(0, max_angle), plus the formula's
own target (t = 0), and keeps the one whose image is farthest from the source's to the identity net, among
the candidates that are faces the generator draws well (guide/faceness.py): far from every face is also what a
dark smear is, and the person must become someone else.
"""
from __future__ import annotations

import math

import torch

from ..engine.errors import GuideEngineError


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


@torch.no_grad()
def image_distances(identity_net, source: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """(1, 3, H, W), (K, 3, H, W) => (K,) on the CPU: how far each image is from the source, to the network
    (a training network or the judge), in its own distance."""
    from ..engine.runtime import in_batches

    desc = in_batches(identity_net.descriptors, images)
    return identity_net.distance(identity_net.descriptors(source).expand(len(desc), -1), desc).cpu()


@torch.no_grad()
def identity_distances(generator, identity_net, w_u: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(1, *S), (K, *S) => (K,) on the CPU: how far each target's image is from w_u's, to the identity net."""
    from ..engine.runtime import in_batches, synthesis_batch

    images = in_batches(generator.synthesize, targets, synthesis_batch(generator))
    return image_distances(identity_net, generator.synthesize(w_u), images)


@torch.no_grad()
def ufo_candidates(w_u: torch.Tensor, w_avg: torch.Tensor, d: float, n: int, max_angle_deg: float,
                   rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """=> (1 + n candidates (1 + n, *S), their angles from the formula's direction in radians (1 + n,)):
    the formula's target first, then w_avg + d (cos t u + sin t v), t ~ U(0, max_angle), v random and
    orthogonal to u."""
    w_t0 = ufo_target(w_u, w_avg, d, "extra")
    u = (w_t0 - w_avg) / d  # unit, (1, *S)
    col = (-1, *[1] * (u.dim() - 1))  # broadcast one scalar per candidate
    theta = torch.rand(n, generator=rng) * math.radians(max_angle_deg)
    v = torch.randn(n, *u.shape[1:], generator=rng).to(u.device)
    v = v - (v.flatten(1) @ u.flatten()).view(col) * u
    v = v / v.flatten(1).norm(dim=1).view(col)
    c, s = theta.cos().to(u.device).view(col), theta.sin().to(u.device).view(col)
    return torch.cat([w_t0, w_avg + d * (c * u + s * v)]), torch.cat([torch.zeros(1), theta])


WIDEN = (2.0, 3.0)  # no candidate is a face: search again at these multiples of the angle (at most 90 degrees)


@torch.no_grad()
def search_ufo_target(generator, identity_net, w_u: torch.Tensor, w_avg: torch.Tensor, d: float, n: int,
                      max_angle_deg: float, rng: torch.Generator, qualify=None) -> tuple[torch.Tensor, dict]:
    """=> (w_t (1, *S), what was searched). n = 0 returns the formula's target unchanged.
    `qualify`: images (K, 3, H, W) => dict with `ok` (K,) bool (guide/faceness.py: a face the generator draws
    well); only qualified candidates are chosen, the farthest of them. None qualifies: the search widens (WIDEN);
    none after that either: the formula's target, and `face` False says so."""
    from ..engine.runtime import in_batches, synthesis_batch

    cands, theta = ufo_candidates(w_u, w_avg, d, n, max_angle_deg, rng)
    angles = [max_angle_deg]
    while True:
        images = in_batches(generator.synthesize, cands, synthesis_batch(generator))
        dist = image_distances(identity_net, generator.synthesize(w_u), images)
        ok = torch.ones(len(cands), dtype=torch.bool) if qualify is None else \
            torch.as_tensor(qualify(images)["ok"], dtype=torch.bool)
        if ok.any() or n == 0 or len(angles) > len(WIDEN):
            break
        angles.append(min(90.0, max_angle_deg * WIDEN[len(angles) - 1]))
        more, more_theta = ufo_candidates(w_u, w_avg, d, n, angles[-1], rng)
        cands, theta = torch.cat([cands, more[1:]]), torch.cat([theta, more_theta[1:]])
    best = int(torch.where(ok, dist, torch.full_like(dist, -float("inf"))).argmax()) if ok.any() else 0
    return cands[best:best + 1].clone(), {
        "candidates": len(cands), "max_angle_deg": angles[-1], "angle_deg": math.degrees(theta[best].item()),
        "target_id_dist": dist[best].item(), "formula_target_id_dist": dist[0].item(),
        "candidates_id_dist_median": dist.median().item(),
        "candidates_face": int(ok.sum()) if qualify is not None else None, "widened": len(angles) > 1,
        "face": bool(ok[best]) if qualify is not None else None}
