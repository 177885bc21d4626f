"""Choose `--robust` settings by measurement: a grid of RobustConfig variants x seeds, each run for real
(guide.job.unlearn_job) and graded by `verify`'s exam (both re-inversion attackers, 32 starts x 300 steps,
judged by the judge), in parallel processes, against GUIDE on the same seeds. The tables give, per seed and
per variant, the issue's bar: forgotten at w_u, robust (under the judge, no attacker's face within the
strangers' p1; the training network's figures are the attackers' own, white-box, reported beside),
kept >= 95% by both networks, pixel L1 within 1.5x GUIDE's, and unlearning wall time against GUIDE's.

    python -m guide_engine.bench.robust --seeds 0-9 --variant base: \\
        --variant h25:search_every=50,replay=8,bank_size=256,preserve=8,preserve_weight=8,weight=2.5 \\
        --device cuda --jobs 9 --out results/robust

A variant is NAME:key=value,... over RobustConfig's fields (guide/robust.py); `iters=` sets the run's
iteration count and `identity=` its training network (`identity=dlib-resnet-v1+arcface-mbf`: an ensemble).
GUIDE alone (no robust mode) runs as the variant `guide` (`--variant guide:iters=N` to change its iterations,
`--no-guide` to leave it out). Results go to OUT/results.jsonl, a line per (variant, seed, exam) as each
finishes; a second call with the same OUT reuses finished runs and continues interrupted ones from their
checkpoint, so a sweep cut short resumes, and `--attack 16x500` (the harder exam) or `--attackers pixel`
re-grades finished runs (OUT/runs holds the generators). Timings are only comparable between runs that
shared the machine the same way (--jobs).
"""
from __future__ import annotations

import dataclasses
import json
import os
import statistics
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import click

from ..engine import files, rundir

GUIDE = "guide"  # the variant without the robust mode
ITERS = 400  # a variant's iterations unless it names iters=
IN_LOOP_LAST = 40  # attack_in_loop: median of the pool's best distance over the run's last iterations


def parse_variant(spec: str) -> tuple[str, dict]:
    """'NAME:key=value,...' => (NAME, {field: typed value}); types from RobustConfig's defaults."""
    from ..engine.errors import GuideEngineError
    from ..guide.robust import RobustConfig

    name, _, rest = spec.partition(":")
    if not name:
        raise GuideEngineError(f"variant {spec!r}: NAME:key=value,...")
    fields = {f.name: f for f in dataclasses.fields(RobustConfig)}
    out = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or (key not in fields and key not in ("iters", "identity")):
            raise GuideEngineError(f"variant {name}: {item!r} is not key=value over iters, identity and RobustConfig's "
                                   f"fields ({', '.join(fields)})")
        default = {"iters": 0, "identity": ""}[key] if key in ("iters", "identity") else fields[key].default
        if isinstance(default, bool):
            if value not in ("0", "1"):
                raise GuideEngineError(f"variant {name}: {key}={value!r} is not 0 or 1")
            out[key] = value == "1"
            continue
        try:
            out[key] = value if isinstance(default, str) else int(value) if isinstance(default, int) else float(value)
        except ValueError:
            raise GuideEngineError(f"variant {name}: {key}={value!r} is not a number") from None
    if name == GUIDE and set(out) - {"iters", "identity"}:
        raise GuideEngineError(f"variant {GUIDE} is GUIDE without the robust mode: only iters= and identity= apply")
    return name, out


def settings(name: str, overrides: dict):
    """A variant's (iterations, RobustConfig or None for GUIDE, training network)."""
    from ..engine.models.zoo import DEFAULT_IDENTITY
    from ..guide.robust import RobustConfig

    kw = dict(overrides)
    iters, identity = kw.pop("iters", ITERS), kw.pop("identity", DEFAULT_IDENTITY)
    return iters, None if name == GUIDE else RobustConfig(**kw), identity


def check_reusable(run: Path, name: str, overrides: dict) -> None:
    """A finished run under OUT/runs is re-graded only if it was made with the settings asked for now."""
    from ..engine.errors import GuideEngineError

    if not rundir.is_run(run):
        return
    iters, robust, identity = settings(name, overrides)
    made = json.loads((run / rundir.CONFIG).read_text())
    want, got = None if robust is None else dataclasses.asdict(robust), made.get("robust")
    same = made.get("iters") == iters and made.get("identity") == identity and (want is None) == (got is None) and \
        (want is None or all(got.get(k) == v for k, v in want.items() if not (k == "margin" and v is None)))
    if not same:
        raise GuideEngineError(f"{run} was made with other settings than variant {name} asks for now; "
                               "name the variant differently or give another --out")


def trial(root: str, name: str, overrides: dict, seed: int, device: str, starts: int, steps: int,
          attackers: str, n_preserve: int) -> dict:
    """One (variant, seed): unlearn (unless OUT/runs holds it already), then verify. One thread per process."""
    import torch

    torch.set_num_threads(1)
    from ..guide import history
    from ..guide.config import UnlearnConfig
    from ..guide.identities import Source
    from ..guide.job import unlearn_job
    from ..guide.verify import VerifyConfig, verify_run

    run = Path(root) / "runs" / f"{name}_s{seed}"
    if not rundir.is_run(run):
        iters, robust, identity = settings(name, overrides)
        resume = rundir.resume_or_restart(run)  # a sweep killed mid-run goes on from the run's checkpoint
        unlearn_job(run, (Source(seed=seed),), UnlearnConfig(iters=iters, device=device, robust=robust,
                                                             identity=identity), resume=resume, progress=False)
    rep = verify_run(run, VerifyConfig(attack_starts=starts, attack_steps=steps, n_preserve=n_preserve,
                                       device=device, attackers=attackers))
    manifest = json.loads((run / rundir.MANIFEST).read_text())
    i, a, p = rep["identity"], rep["attack"], rep["preservation"]
    last = history.read(run / rundir.HISTORY)[-IN_LOOP_LAST:]
    in_loop = [float(h["attack_dist"]) for h in last if h.get("attack_dist")]
    per = {kind: {f"{key}_{fig}": k[f"{key}_{src}"] for key in ("judge", "train")
                  for fig, src in (("best", "best"), ("under", "starts_closer_than_p1"),
                                   ("best_pretrained_there", "best_pretrained_there"))}
           | {"outside": k.get("outside_network"), "agreed": k.get("agreed_starts")}
           for kind, k in a["attackers"].items()}
    return {"variant": name, "seed": seed, "overrides": overrides, "attack": exam_tag(starts, steps, attackers),
            "judge_at_wu": i["judge_id_dist"], "forgotten": i["forgotten"],
            # per attacker: the judge's and the training network's best face and starts under their p1
            "attackers": per, "robust": a["judge_robust"], "train_robust": a["train_robust"],
            "kept": p["same_person_frac"], "kept_train": p["train_same_person_frac"],
            "kept_judge": p["judge_same_person_frac"],
            "kept_ok": p["same_person_frac"] >= rep["thresholds"]["min_same_person_frac"],
            "pixel_l1": p["pixel_l1"], "unlearn_s": manifest["timings_s"]["unlearn"],
            "verify_s": rep["timings_s"]["total"], "attack_in_loop": statistics.median(in_loop) if in_loop else None}


def exam_tag(starts: int, steps: int, attackers: str) -> str:
    return f"{starts}x{steps} {attackers}"


def summarise(rows: list[dict]) -> list[dict]:
    """Per variant over its seeds; L1 and wall time as ratios to GUIDE on the same seed where it ran. Per attacker:
    the judge's best face (median over seeds) and the starts under its line (summed over seeds)."""
    guide = {r["seed"]: r for r in rows if r["variant"] == GUIDE}
    out = []
    for name in dict.fromkeys(r["variant"] for r in rows):
        rs = [r for r in rows if r["variant"] == name]
        l1 = [r["pixel_l1"] / guide[r["seed"]]["pixel_l1"] for r in rs if r["seed"] in guide]
        wall = [r["unlearn_s"] / guide[r["seed"]]["unlearn_s"] for r in rs if r["seed"] in guide]
        loop = [r["attack_in_loop"] for r in rs if r.get("attack_in_loop") is not None]
        bar = [r["forgotten"] and r["robust"] and r["kept_ok"]
               and r["seed"] in guide and r["pixel_l1"] <= 1.5 * guide[r["seed"]]["pixel_l1"] for r in rs]
        attackers = {kind: {"judge_best_median": statistics.median(r["attackers"][kind]["judge_best"] for r in rs),
                            "judge_under": sum(r["attackers"][kind]["judge_under"] for r in rs),
                            "agreed": sum(r["attackers"][kind].get("agreed") or 0 for r in rs),
                            "outside": rs[0]["attackers"][kind].get("outside"),
                            "train_best_median": statistics.median(r["attackers"][kind]["train_best"] for r in rs)}
                     for kind in rs[0]["attackers"]}
        out.append({"variant": name, "n": len(rs), "forgotten": sum(r["forgotten"] for r in rs),
                    "robust": sum(r["robust"] for r in rs), "kept_ok": sum(r["kept_ok"] for r in rs),
                    "attackers": attackers, "in_loop_median": statistics.median(loop) if loop else None,
                    "kept_min": min(r["kept"] for r in rs), "pixel_l1_mean": statistics.mean(r["pixel_l1"] for r in rs),
                    "l1_vs_guide_max": max(l1) if l1 else None,
                    "wall_vs_guide_median": statistics.median(wall) if wall else None,
                    "verify_s_median": statistics.median(r["verify_s"] for r in rs),
                    "bar_but_time": sum(bar)})
    return out


def _n(v, f: str) -> str:
    return "-" if v is None else format(v, f)


def _head(columns: list[str]) -> list[str]:
    """A markdown table's header and rule lines, the rule with as many columns as the header."""
    return ["| " + " | ".join(columns) + " |", "|-" * len(columns) + "|"]


def table(summary: list[dict], starts: int) -> str:
    """A row per variant: how many of its seeds meet each part of the bar, and the attacks' figures."""
    kinds = list(summary[0]["attackers"]) if summary else []
    lines = _head(["variant", "seeds", "forgotten at w_u", "robust (judge)", "kept >= 95%",
                   *(f"{k} attacker: judge best (median), starts under the line (the outside network agrees)"
                     for k in kinds),
                   "training net, white-box: " + " / ".join(kinds) + " best (median)",
                   "the pool's best in the loop (median)", "kept, min", "pixel L1 (mean)", "L1 / GUIDE's, max",
                   "wall / GUIDE's (median)", "verify s (median)", "all but time"])
    for s in summary:
        a = s["attackers"]
        lines.append(f"| {s['variant']} | {s['n']} | {s['forgotten']} | {s['robust']} | {s['kept_ok']} | "
                     + " | ".join(f"{a[k]['judge_best_median']:.3f}, {a[k]['judge_under']} of {s['n'] * starts} "
                                  f"({a[k]['outside'] or '-'}: {a[k]['agreed']})" for k in kinds)
                     + " | " + " / ".join(f"{a[k]['train_best_median']:.3f}" for k in kinds)
                     + f" | {_n(s['in_loop_median'], '.3f')} | {s['kept_min']:.1%} | {s['pixel_l1_mean']:.4f} | "
                     f"{_n(s['l1_vs_guide_max'], '.2f')} | {_n(s['wall_vs_guide_median'], '.2f')} | "
                     f"{s['verify_s_median']:.0f} | {s['bar_but_time']} |")
    return "\n".join(lines)


def seed_table(rows: list[dict]) -> str:
    """A row per (seed, variant), the variants side by side on each seed (the issue's table)."""
    kinds = list(rows[0]["attackers"]) if rows else []
    lines = _head(["seed", "variant", "judge at w_u",
                   *(f"{k} attacker: judge best (starts under the line; the outside network agrees)" for k in kinds),
                   "training net, white-box: " + " / ".join(kinds) + " best (under its line)",
                   "kept: both (training net / judge)", "pixel L1", "unlearn s", "verify s"])
    for r in sorted(rows, key=lambda r: r["seed"]):
        a = r["attackers"]
        lines.append(f"| {r['seed']} | {r['variant']} | {r['judge_at_wu']:.3f}{'' if r['forgotten'] else ' (no)'} | "
                     + " | ".join(f"{a[k]['judge_best']:.3f} ({a[k]['judge_under']}; {a[k].get('agreed', '-')})"
                                  for k in kinds)
                     + " | " + " / ".join(f"{a[k]['train_best']:.3f} ({a[k]['train_under']})" for k in kinds)
                     + f" | {r['kept']:.1%} ({r['kept_train']:.1%} / {r['kept_judge']:.1%}) | {r['pixel_l1']:.4f} | "
                     f"{r['unlearn_s']:.0f} | {r['verify_s']:.0f} |")
    return "\n".join(lines)


@click.command()
@click.option("--seeds", default="10-13", show_default=True, help="Identities (generator seeds) no test uses.")
@click.option("--variant", "variants", multiple=True, default=("base:",), show_default=True,
              help="NAME:key=value,... over RobustConfig's fields and iters; repeat it.")
@click.option("--no-guide", is_flag=True, help=f"Leave out the `{GUIDE}` runs the ratios are taken against.")
@click.option("--device", default=None, help="cpu or cuda; default: $GUIDE_ENGINE_DEVICE, else cuda where present.")
@click.option("--jobs", default=2, show_default=True, type=click.IntRange(min=1),
              help="Processes at a time (one thread each).")
@click.option("--attack", default="32x300", show_default=True, help="The exam: STARTSxSTEPS per attacker.")
@click.option("--attackers", default="all", show_default=True,
              help="Which re-inversion attackers grade (guide/attack.py: verify --attackers); robust is asked of all.")
@click.option("--n-preserve", default=256, show_default=True, type=click.IntRange(min=2))
@click.option("--out", default="results/robust", show_default=True, type=click.Path(file_okay=False))
def main(seeds, variants, no_guide, device, jobs, attack, attackers, n_preserve, out):
    from ..engine.errors import GuideEngineError
    from ..engine.images import parse_seeds
    from ..engine.models.zoo import DEFAULT_IDENTITY
    from ..engine.runtime import default_device
    from ..guide.attack import parse_attackers

    try:
        device = default_device(device)
        grid = dict(parse_variant(v) for v in variants)
        if no_guide:
            grid.pop(GUIDE, None)
        else:
            grid.setdefault(GUIDE, {})  # `--variant guide:iters=N` sets its iterations
        grid = list(grid.items())
        seed_list = parse_seeds(seeds)
        parse_attackers(attackers, DEFAULT_IDENTITY)  # checked here; each run's own network is known in `trial`
        kinds = attackers
        starts, _, steps = attack.partition("x")
        starts, steps = int(starts), int(steps)
        if starts < 1 or steps < 1:
            raise ValueError
    except (GuideEngineError, ValueError) as e:
        raise click.UsageError(str(e) if isinstance(e, GuideEngineError) else
                               f"--attack {attack!r}: STARTSxSTEPS, both at least 1")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    results = root / "results.jsonl"
    tag = exam_tag(starts, steps, kinds)
    done = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    have = {(r["variant"], r["seed"], r["attack"]) for r in done}
    todo = [(name, kw, s) for s in seed_list for name, kw in grid if (name, s, tag) not in have]
    try:
        for name, kw, s in todo:
            check_reusable(root / "runs" / f"{name}_s{s}", name, kw)
    except GuideEngineError as e:
        raise click.UsageError(str(e))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(trial, str(root), name, kw, s, device, starts, steps, kinds, n_preserve)
                   for name, kw, s in todo]
        for f in as_completed(futures):
            try:
                row = f.result()
            except GuideEngineError as e:  # a run the job or verify refuses: one line, not a traceback
                pool.shutdown(cancel_futures=True)
                raise click.ClickException(str(e))
            with results.open("a") as fh:  # a line per finished run: a sweep cut short keeps what it measured
                fh.write(json.dumps(row) + "\n")
            done.append(row)
            under = ", ".join(f"{k} {v['judge_best']:.3f} ({v['judge_under']} under)"
                              for k, v in row["attackers"].items())
            click.echo(f"{row['variant']} seed {row['seed']}: judge at w_u {row['judge_at_wu']:.3f}, attack "
                       f"{under}, kept {row['kept']:.1%}", err=True)
    wanted = {(name, s) for name, _ in grid for s in seed_list}
    rows = [r for r in done if r["attack"] == tag and (r["variant"], r["seed"]) in wanted]
    summary = summarise(rows)
    files.write_json(root / "summary.json", summary)
    click.echo(f"exam {tag}; seeds {seeds}\n\n" + seed_table(rows) + "\n\n" + table(summary, starts))


if __name__ == "__main__":
    main()
