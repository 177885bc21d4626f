"""What `verify` measures (GUIDE-SPEC section 4), with thresholds calibrated per (generator, network).

Two networks grade every figure side by side: the *training* identity network (the one the unlearning
loss used: dlib by default) and the *judge* (SFace by default), which no loss and no attacker ever saw.
Calibration: distances between random pairs of the base generator's images (strangers), in each
network's own distance. Per network:
  forgotten at w_u   dist(pretrained(w_u), unlearned(w_u)) >= the strangers' median
  kept               a random latent's pretrained-vs-unlearned distance < the strangers' 5th percentile
  robust             every re-inversion attack's best face is still >= the strangers' 1st percentile from the photo
The verdict (engine/reports.py: `verdict`, the rule beside the format): *forgotten* = forgotten at w_u by the
judge, and at least 95% of random faces kept by both networks; *robust* = forgotten, and under the judge no
face of any attacker (one per identity network of the zoo and the training network, each with that network in
its loss, and one with pixels and features only) comes within the line. Each attacker's own network's figures
are its objective (white-box: an optimiser drives any network it descends through) and are reported beside,
with the strongest network outside its loss, not part of the level.
A fixed threshold does not transfer: with dlib on the DigiFace DCGAN most stranger pairs fall under
dlib's 0.6, which is reported beside for reference only. Cosines are reported raw and centred (the mean
embedding of base samples subtracted).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..engine.reports import MIN_KEPT
from ..engine.runtime import in_batches, synthesis_batch
from .attack import reinvert_all
from .calibration import descriptors, strangers, strangers_closer_than
from .target import NEIGHBOR_RADIUS_REL, latents_around

PRESERVE_SEED0 = 2_000_000


@dataclass
class Judged:
    """A network and its calibration on the base generator: one column of the report."""

    net: object
    calib: dict

    @property
    def name(self) -> str:
        return self.net.name

    def desc(self, images: torch.Tensor) -> torch.Tensor:
        """Descriptors on the CPU; the images go to the network's device first (an ONNX judge has none)."""
        weights = next(self.net.parameters(), None) if isinstance(self.net, torch.nn.Module) else None
        return descriptors(self.net, images if weights is None else images.to(weights.device)).cpu()

    def dist(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.net.distance(a, b.expand_as(a)).cpu()


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


def _at_identity(j: Judged, x_pre, x_un, xn_pre, xn_un) -> dict:
    """One network's figures for one identity: at w_u (mean over views) and on its neighbours."""
    c, mean_emb = j.calib, torch.tensor(j.calib["mean_embedding"])
    d_pre, d_un = j.desc(x_pre), j.desc(x_un)
    cos, cos_c = (s.mean().item() for s in _sims(d_pre, d_un, mean_emb))
    id_dist = j.net.distance(d_pre, d_un).mean().item()
    n = len(xn_pre)
    if n:
        dn_pre, dn_un = j.desc(xn_pre), j.desc(xn_un)
        n_cos = _sims(dn_pre, dn_un, mean_emb)[0]
        n_dist = j.net.distance(dn_pre, dn_un)
    return {"id_sim": cos, "id_sim_centred": cos_c, "id_dist": id_dist,
            "forgotten": id_dist >= c["strangers_dist_median"],
            "neighbors_id_sim": n_cos.mean().item() if n else None,
            "neighbors_forgotten_frac": (n_dist >= c["strangers_dist_median"]).float().mean().item() if n else None}


@torch.no_grad()
def identity_figures(G_s, infer, train: Judged, judge: Judged, w_u: torch.Tensor, r: float, n_neighbors: int = 16,
                     views: list | None = None, infer_view=None) -> tuple[dict, dict]:
    """One identity w_u (1, *S): both networks at w_u and on its neighbours => (the report's row, images).
    views, infer_view: 3D-aware generators (EG3D) judge the identity at w_u as the mean over these cameras
    (GUIDE-SPEC section 4: 11 yaw views), rendered by infer_view(w, view)."""
    if views:
        x_pre = torch.cat([G_s.synthesize(w_u, v) for v in views])
        x_un = torch.cat([infer_view(w_u, v) for v in views])
        front = len(views) // 2  # neighbours and the picture use the front view
        x_pre1, x_un1 = x_pre[front:front + 1], x_un[front:front + 1]
    else:
        x_pre = x_pre1 = G_s.synthesize(w_u)
        x_un = x_un1 = infer(w_u)
    # Neighbours: latents near w_u that the pretrained generator still renders as the same person
    # (closer than the strangers' 5th percentile under both networks).
    w_n = latents_around(w_u, 4 * n_neighbors, NEIGHBOR_RADIUS_REL * r, torch.Generator().manual_seed(7))
    xn_pre = G_s.synthesize(w_n)
    same = torch.ones(len(w_n), dtype=torch.bool)
    for j in (train, judge):
        same &= j.dist(j.desc(xn_pre), j.desc(x_pre1)) < j.calib["strangers_dist_p5"]
    keep = same.nonzero().flatten()[:n_neighbors]
    w_n, xn_pre = w_n[keep], xn_pre[keep]
    xn_un = infer(w_n) if len(w_n) else xn_pre
    t, jd = (_at_identity(j, x_pre, x_un, xn_pre, xn_un) for j in (train, judge))
    # the training network's figures under the original names, the judge's as judge_*; `forgotten` is the
    # verdict at w_u, which the judge gives
    row = {"id_sim": t["id_sim"], "id_sim_centred": t["id_sim_centred"], "id_dist": t["id_dist"],
           "forgotten": bool(jd["forgotten"]), "train_forgotten": bool(t["forgotten"]),
           "judge_id_dist": jd["id_dist"], "judge_id_sim": jd["id_sim"], "id_views": len(views) if views else 1,
           "neighbors_id_sim": t["neighbors_id_sim"], "neighbors_forgotten_frac": t["neighbors_forgotten_frac"],
           "judge_neighbors_forgotten_frac": jd["neighbors_forgotten_frac"],
           "neighbors_k": len(w_n), "neighbors_radius": NEIGHBOR_RADIUS_REL * r}
    return row, {"x_pre": x_pre1, "x_un": x_un1, "xn_pre": xn_pre, "xn_un": xn_un}


@torch.no_grad()
def preservation_figures(G_s, infer, train: Judged, judge: Judged, n_preserve: int = 256) -> tuple[dict, dict]:
    """Random latents: a face is kept when both networks call its pretrained and unlearned images the same
    person (below the strangers' p5) => (the report's `preservation`, images)."""
    w_r = G_s.latents_for_seeds(range(PRESERVE_SEED0, PRESERVE_SEED0 + n_preserve))
    batch = synthesis_batch(G_s)
    xr_pre, xr_un = in_batches(G_s.synthesize, w_r, batch), in_batches(infer, w_r, batch)
    out, kept = {"n": n_preserve}, torch.ones(n_preserve, dtype=torch.bool)
    for key, j in (("train", train), ("judge", judge)):
        dr_pre, dr_un = j.desc(xr_pre), j.desc(xr_un)
        same = j.net.distance(dr_pre, dr_un) < j.calib["strangers_dist_p5"]
        kept &= same
        prefix = "" if key == "train" else "judge_"  # the training network's figures keep their original names
        out[f"{key}_same_person_frac"] = same.float().mean().item()
        out[f"{prefix}id_sim_mean"] = _sims(dr_pre, dr_un, torch.tensor(j.calib["mean_embedding"]))[0].mean().item()
        out[f"{prefix}fd_embedding"] = frechet_distance(F.normalize(dr_pre, dim=1), F.normalize(dr_un, dim=1))
    out["same_person_frac"] = kept.float().mean().item()
    out["pixel_l1"] = (xr_pre - xr_un).abs().mean().item()
    return out, {"pre": xr_pre[:4], "un": xr_un[:4]}


def thresholds(train: Judged, judge: Judged) -> dict:
    return {"forgotten_if_id_dist_at_least": train.calib["strangers_dist_median"],
            "kept_if_dist_below": train.calib["strangers_dist_p5"],
            "judge_forgotten_if_id_dist_at_least": judge.calib["strangers_dist_median"],
            "judge_kept_if_dist_below": judge.calib["strangers_dist_p5"],
            "robust_if_attack_dist_at_least": {"train": train.calib["strangers_dist_p1"],
                                               "judge": judge.calib["strangers_dist_p1"]},
            "min_same_person_frac": MIN_KEPT}


def network_info(j: Judged) -> dict:
    return {"name": j.name, "distance": j.net.distance_name, "strangers": strangers(j.calib)}


def worst(rows: list[dict], judge: Judged, train: Judged) -> int:
    """The identity closest to failing, under the judge: the attacks' best face relative to the robust line when
    there is an attack, else the distance at w_u relative to the forgotten line."""
    def margin(r: dict) -> float:
        if r.get("drawn") is False or r.get("found") is False:  # comes first: the report says why
            return -1.0
        m = r["judge_id_dist"] / judge.calib["strangers_dist_median"]
        if "attack" in r:
            a = r["attack"]
            m = min(m, a["judge_best"] / judge.calib["strangers_dist_p1"])
        return m

    return min(range(len(rows)), key=lambda i: margin(rows[i]))


def _per_network(j: Judged, faces: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """(starts, 3, H, W) faces, the photo's descriptor => (starts,) each face's distance to the photo under j."""
    return j.dist(j.desc(faces), ref)


@torch.no_grad()
def attack_figures(G_s, G_u, train: Judged, judge: Judged, nets: dict, photos: list[torch.Tensor], cfg,
                   attackers: tuple[str, ...], targets: list[str], progress: bool = False,
                   w_u: torch.Tensor | None = None, radius: float | None = None) -> list[dict]:
    """Every identity's photo attacked by each re-inversion attacker (guide/attack.py): one identity attacker per
    network named in `attackers` (`nets`: name => Judged, the training network and every zoo network, calibrated),
    and `pixel` (no identity term, the training network's features); none sees the judge. All identities' starts
    go in batches. The training network's identity attacker also runs on the pretrained generator, the reference.
    Per attacker, under the training network and the judge (`train_*`, `judge_*`): the best face's distance to the
    photo and the attack's success, the fraction of starts that end closer than the strangers' p1
    (`*_starts_closer_than_p1` counts them); where the best face lies (`*_best_pretrained_there`: what the
    pretrained generator draws at that latent; `*_best_from_w_u`: that latent's distance from w_u in radii). And
    `own_*`: the attacker's own network (white-box: its objective); `outside_*`: the strongest zoo network its loss
    never saw (guide/attack.py: outside_network), with `agreed_starts`, the starts that both the judge and that
    network put within their p1. An identity is robust when, under the judge, no attacker's face comes within
    its p1. => per identity {"figures": the report's `attack` section, "images": the photo and best faces}."""
    from .attack import PIXEL, all_attackers, outside_network

    x_photo = torch.cat(photos)
    ends, faces = {}, {}
    for kind in attackers:
        net, loss = (train.net, "pixel") if kind == PIXEL else (nets[kind].net, "identity")
        with torch.enable_grad():
            ends[kind] = reinvert_all(G_u, net, x_photo, dataclasses.replace(cfg, loss=loss), progress,
                                      f"{kind} attack, unlearned")
        faces[kind] = _render(G_u, ends[kind])
    if train.name in attackers:
        with torch.enable_grad():
            ends["pretrained"] = reinvert_all(G_s, train.net, x_photo, dataclasses.replace(cfg, loss="identity"),
                                              progress, f"{train.name} attack, pretrained")
        faces["pretrained"] = _render(G_s, ends["pretrained"])
    required = all_attackers(train.name)
    out = []
    for i, photo in enumerate(photos):
        photo = photo.cpu()
        refs = {name: j.desc(photo) for name, j in nets.items()}  # nets holds the training network too
        ref_judge = judge.desc(photo)
        per, best, drawn_there = {}, {}, {}  # drawn_there: G_s at a best latent, once per (attacker, start)
        for kind in attackers:
            fig = per.setdefault(kind, {"network": train.name if kind == PIXEL else kind,
                                        "loss": "pixel MSE + perceptual" if kind == PIXEL else "identity"})
            for key, j, ref in (("train", train, refs[train.name]), ("judge", judge, ref_judge)):
                p1 = j.calib["strangers_dist_p1"]
                d = _per_network(j, faces[kind][i], ref)
                at = int(d.argmin())
                there = ends[kind][i, at:at + 1]
                fig[f"{key}_best"] = d[at].item()
                fig[f"{key}_success"] = (d < p1).float().mean().item()
                fig[f"{key}_starts_closer_than_p1"] = int((d < p1).sum())
                fig[f"{key}_strangers_closer_frac"] = strangers_closer_than(j.calib, d[at].item())
                if (kind, at) not in drawn_there:  # the two networks often pick the same start
                    drawn_there[kind, at] = G_s.synthesize(there).cpu()
                fig[f"{key}_best_pretrained_there"] = j.dist(j.desc(drawn_there[kind, at]), ref).item()
                if w_u is not None and radius:
                    fig[f"{key}_best_from_w_u"] = ((there - w_u[i:i + 1]).norm() / radius).item()
                best.setdefault(key, {})[kind] = at
                if key == "judge":
                    judged_person = d < p1
            if kind != PIXEL:  # the attacker's own network: white-box, its objective
                own = nets[kind]
                d = _per_network(own, faces[kind][i], refs[kind])
                fig.update(own_best=d.min().item(),
                           own_starts_closer_than_p1=int((d < own.calib["strangers_dist_p1"]).sum()))
            outside = outside_network(kind, train.name)
            if outside is not None and outside in nets:
                o = nets[outside]
                d = _per_network(o, faces[kind][i], refs[outside])
                under = d < o.calib["strangers_dist_p1"]
                fig.update(outside_network=outside, outside_best=d.min().item(),
                           outside_starts_closer_than_p1=int(under.sum()),
                           agreed_starts=int((under & judged_person).sum()))
        if "pretrained" in faces:
            for key, j, ref in (("train", train, refs[train.name]), ("judge", judge, ref_judge)):
                d_s = _per_network(j, faces["pretrained"][i], ref)
                per[train.name][f"{key}_pretrained"] = d_s.min().item()
                best[key]["pretrained"] = int(d_s.argmin())
        fig = {"attackers": per}
        for key, j in (("train", train), ("judge", judge)):  # over the attackers: the closest face, the most success
            closest = min(attackers, key=lambda k: per[k][f"{key}_best"])
            fig.update({name: per[closest][name] for name in per[closest] if name.startswith(key + "_")})
            fig[f"{key}_attacker"] = closest
            fig[f"{key}_success"] = max(per[k][f"{key}_success"] for k in attackers)
            fig[f"{key}_starts_closer_than_p1"] = max(per[k][f"{key}_starts_closer_than_p1"] for k in attackers)
            fig[f"{key}_robust"] = fig[f"{key}_best"] >= j.calib["strangers_dist_p1"]
            fig[f"{key}_pretrained"] = per.get(train.name, {}).get(f"{key}_pretrained")
        fig.update({"robust": bool(fig["judge_robust"]), "starts": cfg.starts, "steps": cfg.steps,
                    "precision": cfg.precision, "loss": "+".join(attackers), "target": targets[i],
                    "network": train.name, "required_attackers": list(required),
                    "judge_starts_total": sum(per[k]["judge_starts_closer_than_p1"] for k in attackers)})
        ju = best["judge"][fig["judge_attacker"]]
        images = {"photo": photo, "unlearned": faces[fig["judge_attacker"]][i][ju:ju + 1],
                  "attackers": {k: faces[k][i][best["judge"][k]:best["judge"][k] + 1] for k in attackers}}
        if "pretrained" in faces:
            js = best["judge"]["pretrained"]
            images["pretrained"] = faces["pretrained"][i][js:js + 1]
        out.append({"figures": fig, "images": images})
    return out


def _render(G, ends: torch.Tensor) -> torch.Tensor:
    """(N, starts, *S) latents => (N, starts, 3, H, W) images on the CPU, drawn in batches."""
    n, s = ends.shape[:2]
    x = in_batches(G.synthesize, ends.flatten(0, 1), synthesis_batch(G)).cpu()
    return x.view(n, s, *x.shape[1:])


def collapse_sim(G_s, net, targets: list[torch.Tensor]) -> float:
    """Mean identity similarity between the target images of several identities (UFO collapse)."""
    with torch.no_grad():
        e = F.normalize(descriptors(net, G_s.synthesize(torch.cat(targets).to(G_s.average_latent().device))), dim=1)
    sim = e @ e.T
    n = len(targets)
    return ((sim.sum() - n) / (n * (n - 1))).item()
