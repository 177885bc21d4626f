"""Choose `--robust` settings by measurement: a grid of RobustConfig variants x seeds, each run for real
(guide.job.unlearn_job) and graded by `verify` (judge + attacker), in parallel processes, against GUIDE
on the same seeds. The table gives each variant's share of the issue's bar: forgotten at w_u, robust to
the attack under both networks, kept >= 95%, pixel L1 within 1.5x GUIDE's, unlearning wall time.

    python -m guide_engine.bench.robust --seeds 10-13 --variant base: \\
        --variant m20p16:margin_quantile=0.2,preserve=16 --device cuda --jobs 9 --out results/robust

A variant is NAME:key=value,... over RobustConfig's fields (guide/robust.py); `iters=` sets the run's
iteration count. GUIDE alone (no robust mode) runs as the variant `guide` (`--variant guide:iters=N` to
change its iterations, `--no-guide` to leave it out). Results go to OUT/results.jsonl
a line per (variant, seed) as each finishes; a second call with the same OUT reuses finished runs, so a
sweep cut short resumes, and `--attack 16x500` or `--attack-loss pixel` re-grades finished runs with a
harder or an identity-free attacker (OUT/runs holds the generators). Timings are only comparable between
runs that shared the machine the same way (--jobs).
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
        if not eq or (key not in fields and key != "iters"):
            raise GuideEngineError(f"variant {name}: {item!r} is not key=value over iters and RobustConfig's fields "
                                   f"({', '.join(fields)})")
        default = 0 if key == "iters" else fields[key].default
        try:
            out[key] = value if isinstance(default, str) else int(value) if isinstance(default, int) else float(value)
        except ValueError:
            raise GuideEngineError(f"variant {name}: {key}={value!r} is not a number") from None
    if name == GUIDE and set(out) - {"iters"}:
        raise GuideEngineError(f"variant {GUIDE} is GUIDE without the robust mode: only iters= applies")
    return name, out


def settings(name: str, overrides: dict):
    """A variant's (iterations, RobustConfig or None for GUIDE)."""
    from ..guide.robust import RobustConfig

    kw = dict(overrides)
    iters = kw.pop("iters", ITERS)
    return iters, None if name == GUIDE else RobustConfig(**kw)


def check_reusable(run: Path, name: str, overrides: dict) -> None:
    """A finished run under OUT/runs is re-graded only if it was made with the settings asked for now."""
    from ..engine.errors import GuideEngineError

    if not (run / rundir.MANIFEST).exists():
        return
    iters, robust = settings(name, overrides)
    made = json.loads((run / rundir.CONFIG).read_text())
    want, got = None if robust is None else dataclasses.asdict(robust), made.get("robust")
    same = made.get("iters") == iters and (want is None) == (got is None) and \
        (want is None or all(got.get(k) == v for k, v in want.items() if not (k == "margin" and v is None)))
    if not same:
        raise GuideEngineError(f"{run} was made with other settings than variant {name} asks for now; "
                               "name the variant differently or give another --out")


def trial(root: str, name: str, overrides: dict, seed: int, device: str, starts: int, steps: int, loss: str,
          n_preserve: int) -> dict:
    """One (variant, seed): unlearn (unless OUT/runs holds it already), then verify. One thread per process."""
    import torch

    torch.set_num_threads(1)
    from ..guide import history
    from ..guide.attack import AttackConfig
    from ..guide.config import UnlearnConfig
    from ..guide.identities import Source
    from ..guide.job import unlearn_job
    from ..guide.verify import verify_run

    run = Path(root) / "runs" / f"{name}_s{seed}"
    if not (run / rundir.MANIFEST).exists():
        iters, robust = settings(name, overrides)
        unlearn_job(run, (Source(seed=seed),), UnlearnConfig(iters=iters, device=device, robust=robust), progress=False)
    rep = verify_run(run, attack=AttackConfig(starts=starts, steps=steps), n_preserve=n_preserve, device=device,
                     attackers=(loss,))
    manifest = json.loads((run / rundir.MANIFEST).read_text())
    i, a, p = rep["identity"], rep["attack"], rep["preservation"]
    last = history.read(run / rundir.HISTORY)[-IN_LOOP_LAST:]
    in_loop = [float(h["attack_dist"]) for h in last if h.get("attack_dist")]
    return {"variant": name, "seed": seed, "overrides": overrides, "attack": f"{starts}x{steps} {loss}",
            "judge_at_wu": i["judge_id_dist"], "forgotten": i["forgotten"],
            "attack_judge": a["judge_best"], "attack_train": a["train_best"],
            "robust_judge": a["judge_robust"], "robust_train": a["train_robust"],
            # a home the loss missed where this is about attack_train
            "attack_train_pretrained_there": a["train_best_pretrained_there"],
            "kept": p["same_person_frac"],
            "kept_ok": p["same_person_frac"] >= rep["thresholds"]["min_same_person_frac"],
            "pixel_l1": p["pixel_l1"], "unlearn_s": manifest["timings_s"]["unlearn"],
            "attack_in_loop": statistics.median(in_loop) if in_loop else None}


def summarise(rows: list[dict]) -> list[dict]:
    """Per variant over its seeds; L1 and wall time as ratios to GUIDE on the same seed where it ran."""
    guide = {r["seed"]: r for r in rows if r["variant"] == GUIDE}
    out = []
    for name in dict.fromkeys(r["variant"] for r in rows):
        rs = [r for r in rows if r["variant"] == name]
        l1 = [r["pixel_l1"] / guide[r["seed"]]["pixel_l1"] for r in rs if r["seed"] in guide]
        wall = [r["unlearn_s"] / guide[r["seed"]]["unlearn_s"] for r in rs if r["seed"] in guide]
        loop = [r["attack_in_loop"] for r in rs if r.get("attack_in_loop") is not None]
        bar = [r["forgotten"] and r["robust_judge"] and r["robust_train"] and r["kept_ok"]
               and r["seed"] in guide and r["pixel_l1"] <= 1.5 * guide[r["seed"]]["pixel_l1"] for r in rs]
        out.append({"variant": name, "n": len(rs), "forgotten": sum(r["forgotten"] for r in rs),
                    "robust_judge": sum(r["robust_judge"] for r in rs),
                    "robust_train": sum(r["robust_train"] for r in rs),
                    "kept_ok": sum(r["kept_ok"] for r in rs),
                    "attack_judge_mean": statistics.mean(r["attack_judge"] for r in rs),
                    "attack_train_mean": statistics.mean(r["attack_train"] for r in rs),
                    "in_loop_median": statistics.median(loop) if loop else None,
                    "kept_min": min(r["kept"] for r in rs), "pixel_l1_mean": statistics.mean(r["pixel_l1"] for r in rs),
                    "l1_vs_guide_max": max(l1) if l1 else None,
                    "wall_vs_guide_median": statistics.median(wall) if wall else None,
                    "bar_but_time": sum(bar)})
    return out


def table(summary: list[dict]) -> str:
    n = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    lines = ["| variant | seeds | forgotten at w_u | robust: judge / training net | kept >= 95% | attack best, judge / "
             "training net (mean) | the pool's best in the loop (median) | kept, min | pixel L1 (mean) | "
             "L1 / GUIDE's, max | wall / GUIDE's (median) | all but time |", "|-" * 12 + "|"]
    for s in summary:
        lines.append(f"| {s['variant']} | {s['n']} | {s['forgotten']} | {s['robust_judge']} / {s['robust_train']} | "
                     f"{s['kept_ok']} | {s['attack_judge_mean']:.3f} / {s['attack_train_mean']:.3f} | "
                     f"{n(s['in_loop_median'], '.3f')} | {s['kept_min']:.1%} | {s['pixel_l1_mean']:.4f} | "
                     f"{n(s['l1_vs_guide_max'], '.2f')} | {n(s['wall_vs_guide_median'], '.2f')} | "
                     f"{s['bar_but_time']} |")
    return "\n".join(lines)


@click.command()
@click.option("--seeds", default="10-13", show_default=True, help="Identities (generator seeds) no test uses.")
@click.option("--variant", "variants", multiple=True, default=("base:",), show_default=True,
              help="NAME:key=value,... over RobustConfig's fields and iters; repeat it.")
@click.option("--no-guide", is_flag=True, help=f"Leave out the `{GUIDE}` runs the ratios are taken against.")
@click.option("--device", default=None, help="cpu or cuda; default: $GUIDE_ENGINE_DEVICE, else cuda where present.")
@click.option("--jobs", default=2, show_default=True, type=click.IntRange(min=1),
              help="Processes at a time (one thread each).")
@click.option("--attack", default="8x300", show_default=True, help="The verify attacker: STARTSxSTEPS.")
@click.option("--attack-loss", type=click.Choice(["identity", "pixel"]), default="identity", show_default=True)
@click.option("--n-preserve", default=256, show_default=True, type=click.IntRange(min=2))
@click.option("--out", default="results/robust", show_default=True, type=click.Path(file_okay=False))
def main(seeds, variants, no_guide, device, jobs, attack, attack_loss, n_preserve, out):
    from ..engine.errors import GuideEngineError
    from ..engine.images import parse_seeds
    from ..engine.runtime import default_device

    try:
        device = default_device(device)
        grid = dict(parse_variant(v) for v in variants)
        if no_guide:
            grid.pop(GUIDE, None)
        else:
            grid.setdefault(GUIDE, {})  # `--variant guide:iters=N` sets its iterations
        grid = list(grid.items())
        seed_list = parse_seeds(seeds)
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
    tag = f"{starts}x{steps} {attack_loss}"
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
        futures = [pool.submit(trial, str(root), name, kw, s, device, starts, steps, attack_loss, n_preserve)
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
            click.echo(f"{row['variant']} seed {row['seed']}: judge at w_u {row['judge_at_wu']:.3f}, attack "
                       f"{row['attack_judge']:.3f} / {row['attack_train']:.3f}, kept {row['kept']:.1%}", err=True)
    wanted = {(name, s) for name, _ in grid for s in seed_list}
    summary = summarise([r for r in done if r["attack"] == tag and (r["variant"], r["seed"]) in wanted])
    files.write_json(root / "summary.json", summary)
    click.echo(f"attack {tag}; seeds {seeds}\n" + table(summary))


if __name__ == "__main__":
    main()
