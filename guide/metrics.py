"""What `verify` measures (GUIDE-SPEC section 4), with thresholds calibrated per (generator, identity net).

Calibration: distances between the identity descriptors of random pairs of the base generator's
images (strangers). An identity is *forgotten* when dist(pretrained(w_u), unlearned(w_u)) >= the
strangers' median; a random latent is *kept* when its pretrained-vs-unlearned distance is below the
strangers' 5th percentile. A fixed threshold does not transfer: with dlib on the DigiFace DCGAN most
stranger pairs fall under dlib's 0.6, which is reported beside for reference only.
Cosine similarities are reported raw and centred (the mean embedding of base samples subtracted).
"""
from __future__ import annotations

import json
import re

import torch
import torch.nn.functional as F

from guide_engine.engine.models import zoo
from guide_engine.engine.sampling import in_batches
from guide_engine.guide.target import NEIGHBOR_RADIUS_REL, latents_around

CALIB_SEEDS = range(1_000_000, 1_000_400)  # 200 x 200 stranger pairs
PRESERVE_SEED0 = 2_000_000


def _descriptors(identity_net, images: torch.Tensor) -> torch.Tensor:
    return in_batches(identity_net.descriptors, images)


@torch.no_grad()
def calibrate(generator, identity_net, base_sha: str) -> dict:
    """Strangers' distance distribution, cached in $GUIDE_ENGINE_HOME/calibration/."""
    names = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{generator.name}__{identity_net.name}")[-120:]  # names may be paths
    path = zoo.cache_home() / "calibration" / f"{names}__{base_sha[:16]}.json"
    if path.is_file():
        return json.loads(path.read_text())
    w = generator.latents_for_seeds(CALIB_SEEDS)
    d = _descriptors(identity_net, in_batches(generator.synthesize, w))
    half = len(d) // 2
    a, b = d[:half].repeat_interleave(len(d) - half, dim=0), d[half:].repeat(half, 1)  # all 200 x 200 pairs
    dist = identity_net.distance(a, b)  # the network's own distance (dlib: euclidean; ArcFace: 1 - cos)
    cos = F.cosine_similarity(d[:half, None], d[None, half:], dim=2).flatten()
    calib = {"generator": generator.name, "identity_network": identity_net.name, "pairs": dist.numel(),
             "strangers_dist_median": dist.median().item(), "strangers_dist_p5": dist.quantile(0.05).item(),
             "strangers_cos_mean": cos.mean().item(),
             "network_threshold": identity_net.threshold,
             "strangers_frac_under_network_threshold":
                 None if identity_net.threshold is None else (dist < identity_net.threshold).float().mean().item(),
             "mean_embedding": F.normalize(d, dim=1).mean(0).tolist()}
    zoo.write_json(path, calib)
    return calib


def _sims(da: torch.Tensor, db: torch.Tensor, mean_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """raw descriptors => (raw cosine, centred cosine), each (N,)."""
    ea, eb = F.normalize(da, dim=1), F.normalize(db, dim=1)
    return (ea * eb).sum(1), F.cosine_similarity(ea - mean_emb, eb - mean_emb, dim=1)


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two (N, D) sample sets (float64)."""
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = torch.cov(a.T), torch.cov(b.T)
    ev, vec = torch.linalg.eigh(s_a)
    s_a_half = vec @ torch.diag(ev.clamp_min(0).sqrt()) @ vec.T
    tr_sqrt = torch.linalg.eigvalsh(s_a_half @ s_b @ s_a_half).clamp_min(0).sqrt().sum()
    return max(0.0, ((mu_a - mu_b).pow(2).sum() + s_a.trace() + s_b.trace() - 2 * tr_sqrt).item())


def evaluate(G_s, infer, identity_net, w_u: torch.Tensor, calib: dict, r: float, n_preserve: int = 256,
             n_neighbors: int = 16, reinversion=None, views: list | None = None, infer_view=None) -> tuple[dict, dict]:
    """G_s: the pretrained generator; infer: latents => images of the unlearned artifact (any backend).
    views, infer_view: 3D-aware generators (EG3D) judge the identity at w_u as the mean over these
    cameras (GUIDE-SPEC section 4: 11 yaw views), rendered by infer_view(w, view).
    => (report dict, images for the picture)."""
    med, p5 = calib["strangers_dist_median"], calib["strangers_dist_p5"]
    mean_emb = torch.tensor(calib["mean_embedding"])
    with torch.no_grad():
        if views:
            x_pre = torch.cat([G_s.synthesize(w_u, v) for v in views])
            x_un = torch.cat([infer_view(w_u, v) for v in views])
        else:
            x_pre, x_un = G_s.synthesize(w_u), infer(w_u)
        d_pre, d_un = _descriptors(identity_net, x_pre), _descriptors(identity_net, x_un)
        cos, cos_c = (s.mean() for s in _sims(d_pre, d_un, mean_emb))
        id_dist = identity_net.distance(d_pre, d_un).mean().item()
        if views:  # the rest of the report (neighbours, picture, re-inversion) uses the front view
            front = len(views) // 2
            x_pre, x_un, d_pre = x_pre[front:front + 1], x_un[front:front + 1], d_pre[front:front + 1]

        # Neighbours: latents near w_u that the pretrained generator still renders as the same person.
        w_n = latents_around(w_u, 4 * n_neighbors, NEIGHBOR_RADIUS_REL * r, torch.Generator().manual_seed(7))
        xn_pre = G_s.synthesize(w_n)
        dn_pre = _descriptors(identity_net, xn_pre)
        same = identity_net.distance(dn_pre, d_pre.expand_as(dn_pre)) < p5
        w_n, xn_pre, dn_pre = w_n[same][:n_neighbors], xn_pre[same][:n_neighbors], dn_pre[same][:n_neighbors]
        xn_un = infer(w_n) if len(w_n) else xn_pre
        dn_un = _descriptors(identity_net, xn_un) if len(w_n) else dn_pre
        n_cos, _ = _sims(dn_pre, dn_un, mean_emb)
        n_dist = identity_net.distance(dn_pre, dn_un)

        # Preservation over random latents.
        w_r = G_s.latents_for_seeds(range(PRESERVE_SEED0, PRESERVE_SEED0 + n_preserve))
        xr_pre, xr_un = in_batches(G_s.synthesize, w_r), in_batches(infer, w_r)
        dr_pre, dr_un = _descriptors(identity_net, xr_pre), _descriptors(identity_net, xr_un)
        r_cos, _ = _sims(dr_pre, dr_un, mean_emb)
        r_dist = identity_net.distance(dr_pre, dr_un)

    forgotten = id_dist >= med
    kept = (r_dist < p5).float().mean().item()
    report = {
        "identity_network": identity_net.name,
        "calibration": {k: v for k, v in calib.items() if k != "mean_embedding"},
        "identity": {"id_sim": cos.item(), "id_sim_centred": cos_c.item(), "id_dist": id_dist, "forgotten": forgotten,
                     "id_views": len(views) if views else 1,
                     "neighbors_id_sim": n_cos.mean().item() if len(w_n) else None,
                     "neighbors_forgotten_frac": (n_dist >= med).float().mean().item() if len(w_n) else None,
                     "neighbors_k": len(w_n), "neighbors_radius": NEIGHBOR_RADIUS_REL * r},
        "preservation": {"n": n_preserve, "id_sim_mean": r_cos.mean().item(), "same_person_frac": kept,
                         "pixel_l1": (xr_pre - xr_un).abs().mean().item(),
                         "fd_embedding": frechet_distance(F.normalize(dr_pre, dim=1), F.normalize(dr_un, dim=1))},
        "thresholds": {"forgotten_if_id_dist_at_least": med, "kept_if_dist_below": p5, "min_same_person_frac": 0.95},
    }
    if reinversion is not None:
        report["identity"].update(reinversion(x_pre, d_pre))
    report["passed"] = bool(forgotten and kept >= 0.95)
    k = min(4, len(w_n))
    images = {"pre": torch.cat([x_pre, xn_pre[:k], xr_pre[:4]]), "un": torch.cat([x_un, xn_un[:k], xr_un[:4]]),
              "sims": [cos.item(), *n_cos[:k].tolist(), *r_cos[:4].tolist()]}
    return report, images


def reinversion_attack(G_s, G_u, identity_net, steps: int = 100, starts: int = 3):
    """Invert the pretrained image of w_u into the unlearned generator from several starts; the best
    identity similarity reached, and the same attack on the pretrained generator as the reference."""
    from guide_engine.guide.invert import invert

    def attack(x_pre: torch.Tensor, d_pre: torch.Tensor) -> dict:
        out = {}
        for key, G in (("reinversion_id_sim", G_u), ("reinversion_id_sim_pretrained", G_s)):
            best = -1.0
            for s in range(starts):
                w, _ = invert(G, identity_net, x_pre, steps=steps, seed=100 + s, progress=False)
                with torch.no_grad():
                    best = max(best, F.cosine_similarity(identity_net.descriptors(G.synthesize(w)), d_pre).item())
            out[key] = best
        out["reinversion_starts"], out["reinversion_steps"] = starts, steps
        return out

    return attack


def collapse_sim(G_s, identity_net, targets: list[torch.Tensor]) -> float:
    """Mean identity similarity between the target images of several identities (UFO collapse)."""
    with torch.no_grad():
        e = F.normalize(_descriptors(identity_net, G_s.synthesize(torch.cat(targets))), dim=1)
    sim = e @ e.T
    n = len(targets)
    return ((sim.sum() - n) / (n * (n - 1))).item()
