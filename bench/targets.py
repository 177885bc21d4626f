"""Do the targets the training network picks look far to the judge? A study on identities no test uses.

The unlearned face converges to its target's face, so a target that the judge puts closer to the person
than the strangers' median caps what training can reach at `verify`'s "forgotten" line. For each seed:
the engine's own UFO candidates (guide/target.py: the formula's target, then random ones on the cone up
to `angle` degrees), half at d = 1 r and half at 1.5 r; every candidate's distance to the source under
the training network and under the judge. Each rule picks one target per seed by what the engine may
see (the training network, pixels, angles); the judge then grades the pick. The judge's own best pick is
printed as a ceiling: no rule may use it (the judge never enters training).

    python -m guide_engine.bench.targets --seeds 300-359 [--candidates 256 --angle 90]
"""
from __future__ import annotations

import json
import math
import statistics

import click
import torch

from ..engine.models.zoo import DEFAULT_IDENTITY


@torch.no_grad()
def study(seeds: list[int], n: int = 256, angle: float = 90.0, identity: str = DEFAULT_IDENTITY) -> dict:
    from ..engine.files import state_sha256
    from ..engine.models import zoo
    from ..engine.runtime import in_batches
    from ..guide.calibration import calibrate
    from ..guide.target import image_distances, typical_radius, ufo_candidates

    G, net, judge = zoo.load_generator(), zoo.load_identity(identity), zoo.load_judge()
    line = calibrate(G, judge, state_sha256(G))["strangers_dist_median"]
    r, w_avg = typical_radius(G), G.average_latent()
    rows = []
    for i, seed in enumerate(seeds):
        w_u = G.latents_for_seeds([seed])
        rng = torch.Generator().manual_seed(i)
        near, theta_near = ufo_candidates(w_u, w_avg, r, n // 2, angle, rng)  # [formula at 1 r, cone at 1 r]
        far, theta_far = ufo_candidates(w_u, w_avg, 1.5 * r, n - n // 2, angle, rng)
        cands, theta = torch.cat([near, far]), torch.cat([theta_near, theta_far])
        d_rel = torch.cat([torch.ones(len(near)), torch.full((len(far),), 1.5)])
        src, x = G.synthesize(w_u), in_batches(G.synthesize, cands)  # each image drawn once, judged twice
        rows.append({"seed": seed, "theta": theta, "d_rel": d_rel, "train": image_distances(net, src, x),
                     "judge": image_distances(judge, src, x), "pixel": (x - src).abs().flatten(1).mean(1).cpu()})

    def pick(rule) -> list[float]:
        return [row["judge"][rule(row)].item() for row in rows]

    def farthest(key: str, max_deg: float, d_rel: tuple[float, ...]):
        def rule(row):
            ok = (row["theta"] <= math.radians(max_deg) + 1e-9) & torch.isin(row["d_rel"], torch.tensor(d_rel))
            idx = torch.nonzero(ok).flatten()
            return idx[row[key][idx].argmax()]
        return rule

    def first_random(row):  # candidates are drawn independently: the first one in the cone is a random pick
        inside = torch.nonzero((row["theta"][1:] <= math.radians(30)) & (row["d_rel"][1:] == 1.0)).flatten()
        return int(inside[0]) + 1 if len(inside) else 0

    rules = {
        "formula (GUIDE's UFO target, d = 1 r)": lambda row: 0,
        "a random candidate (<= 30 deg, 1 r)": first_random,
        "training network's farthest, <= 30 deg, 1 r (the engine's rule)": farthest("train", 30, (1.0,)),
        "training network's farthest, <= 90 deg, 1 or 1.5 r": farthest("train", 90, (1.0, 1.5)),
        "training network's farthest, <= 60 deg, 1.5 r": farthest("train", 60, (1.5,)),
        "pixels' farthest, <= 30 deg, 1 r": farthest("pixel", 30, (1.0,)),
        "ceiling: the judge's farthest, <= 30 deg, 1 r (not allowed)": farthest("judge", 30, (1.0,)),
    }
    out = {"seeds": [seeds[0], seeds[-1]], "n_seeds": len(seeds), "candidates": n, "angle_deg": angle,
           "judge": judge.name, "training_network": net.name, "judge_forgotten_line": line, "rules": {},
           "corr_train_judge_mean": statistics.mean(
               torch.corrcoef(torch.stack([row["train"], row["judge"]]))[0, 1].item() for row in rows)}
    for name, rule in rules.items():
        got = pick(rule)
        out["rules"][name] = {"far_enough": sum(v >= line for v in got), "judge_dist_mean": statistics.mean(got),
                              "judge_dist_min": min(got)}
    return out


@click.command()
@click.option("--seeds", default="300-359", show_default=True)
@click.option("--candidates", default=256, show_default=True)
@click.option("--angle", default=90.0, show_default=True, help="Largest angle from the formula's direction, degrees.")
def main(seeds, candidates, angle):
    from ..engine.images import parse_seeds

    out = study(parse_seeds(seeds), candidates, angle)
    click.echo(json.dumps(out))
    click.echo(f"\n{out['n_seeds']} identities, {out['candidates']} candidates each; the judge's 'forgotten' line "
               f"{out['judge_forgotten_line']:.3f}; mean correlation of the training network's and the judge's "
               f"distances over one identity's candidates: {out['corr_train_judge_mean']:.2f}\n")
    click.echo("| rule | targets the judge puts past the line | judge distance, mean | min |\n|-|-|-|-|")
    for name, r in out["rules"].items():
        click.echo(f"| {name} | {r['far_enough']} / {out['n_seeds']} | {r['judge_dist_mean']:.3f} | "
                   f"{r['judge_dist_min']:.3f} |")


if __name__ == "__main__":
    main()
