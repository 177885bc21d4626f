"""bench/robust.py: variants parse into RobustConfig fields, the summary applies the bar, and a tiny sweep runs
real unlearning + verify in a spawned process, then re-grades the same generators with another attacker."""
import json

import pytest
import torch
from click.testing import CliRunner

from guide_engine.bench.robust import main, parse_variant, summarise, table
from guide_engine.engine.errors import GuideEngineError


def test_variants_parse_with_the_config_types():
    assert parse_variant("a:pool=32,margin_quantile=0.2,reseed=farthest,iters=800") == \
        ("a", {"pool": 32, "margin_quantile": 0.2, "reseed": "farthest", "iters": 800})
    assert parse_variant("b:recolour=1,search_pixel=8") == ("b", {"recolour": True, "search_pixel": 8})
    assert parse_variant("base:") == ("base", {}) and parse_variant("guide:iters=10") == ("guide", {"iters": 10})
    assert parse_variant("e:identity=dlib-resnet-v1+arcface-mbf") == ("e", {"identity": "dlib-resnet-v1+arcface-mbf"})
    for bad, why in (("a:pools=3", "RobustConfig's fields"), ("a:pool=x", "not a number"), (":pool=3", "NAME"),
                     ("a:recolour=yes", "not 0 or 1"),
                     ("guide:pool=3", "only iters")):
        with pytest.raises(GuideEngineError, match=why):
            parse_variant(bad)


def _row(variant, seed, under=0, **kw):
    kinds = {k: {"judge_best": 0.6, "judge_under": under, "train_best": 0.4, "train_under": 3,
                 "outside": "arcface-mbf", "agreed": min(under, 1)}
             for k in ("dlib-resnet-v1", "pixel")}
    row = {"variant": variant, "seed": seed, "judge_at_wu": 0.9, "forgotten": True, "attackers": kinds, "robust": True,
           "kept": 0.97, "kept_ok": True, "pixel_l1": 0.04, "unlearn_s": 30.0, "verify_s": 5.0}
    return {**row, **kw}


def test_summary_applies_every_part_of_the_bar():
    rows = [_row("guide", 1, under=30, robust=False, unlearn_s=10.0), _row("guide", 2, unlearn_s=10.0),
            _row("v", 1), _row("v", 2, pixel_l1=0.061),  # L1 over 1.5x GUIDE's on seed 2
            _row("w", 1, under=2, robust=False), _row("w", 2, kept_ok=False, kept=0.9), _row("w", 3)]  # 3: no GUIDE
    s = {r["variant"]: r for r in summarise(rows)}
    assert s["v"]["bar_but_time"] == 1 and s["v"]["l1_vs_guide_max"] == pytest.approx(1.525)
    assert s["v"]["wall_vs_guide_median"] == 3.0 and s["w"]["bar_but_time"] == 0
    assert (s["w"]["robust"], s["w"]["kept_ok"], s["w"]["kept_min"]) == (2, 2, 0.9)
    assert s["guide"]["robust"] == 1 and s["guide"]["bar_but_time"] == 1
    # the training network's figures are white-box: 3 starts under its line on every seed, robust all the same
    assert s["v"]["robust"] == 2 and s["v"]["attackers"]["pixel"] == \
        {"judge_best_median": 0.6, "judge_under": 0, "agreed": 0, "outside": "arcface-mbf", "train_best_median": 0.4}
    assert s["guide"]["attackers"]["dlib-resnet-v1"]["judge_under"] == 30
    assert s["w"]["attackers"]["pixel"]["judge_under"] == 2 and s["w"]["attackers"]["pixel"]["agreed"] == 1
    text = table(summarise(rows), 32)
    assert "| w | 3 | 3 | 2 | 2 | 0.600, 2 of 96 (arcface-mbf: 1) | 0.600, 2 of 96 (arcface-mbf: 1) | 0.400 / 0.400 |" \
        in text
    assert len({line.count("|") for line in text.splitlines()}) == 1  # header, rule and rows: the same columns


def test_tiny_sweep_runs_and_regrades(tmp_path):
    out = tmp_path / "sweep"
    args = ["--seeds", "900", "--variant", "tiny:pool=2,steps=1,iters=2,preserve=1", "--variant", "guide:iters=2",
            "--jobs", "1", "--n-preserve", "4", "--out", str(out)]
    r = CliRunner().invoke(main, args + ["--attack", "2x3"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(x["variant"] for x in rows) == ["guide", "tiny"] and {x["attack"] for x in rows} == {"2x3 all"}
    loop = {x["variant"]: x["attack_in_loop"] for x in rows}
    assert loop["guide"] is None and 0 < loop["tiny"] < 2  # the pool's best distance, from the run's history
    for x in rows:  # every attacker graded by both networks; 2 iterations barely move the generator, so the
        # pretrained one draws about the same at the best latent
        assert list(x["attackers"]) == ["dlib-resnet-v1", "arcface-mbf", "edgeface-s", "pixel"]
        for a in x["attackers"].values():
            assert 0 <= a["judge_under"] <= 2 and 0 <= a["train_under"] <= 2
            assert abs(a["train_best_pretrained_there"] - a["train_best"]) < 0.05
        p1 = json.loads((out / "runs" / f"{x['variant']}_s900" / "report.json").read_text())["judge"]["strangers"]["p1"]
        assert x["robust"] == (min(a["judge_best"] for a in x["attackers"].values()) >= p1) and x["verify_s"] > 0
    config = json.loads((out / "runs" / "tiny_s900" / "config.json").read_text())
    assert config["robust"]["pool"] == 2 and config["robust"]["preserve"] == 1 and config["iters"] == 2
    guide = json.loads((out / "runs" / "guide_s900" / "config.json").read_text())
    assert guide["robust"] is None and guide["iters"] == 2
    assert "| tiny | 1 |" in r.output and "| guide | 1 |" in r.output and "| 900 | tiny |" in r.output
    for block in r.output.split("\n\n")[1:]:  # the per-seed table and the per-variant one
        assert len({line.count("|") for line in block.strip().splitlines()}) == 1, block
    weights = (out / "runs" / "tiny_s900" / "manifest.json").stat().st_mtime_ns
    r = CliRunner().invoke(main, args + ["--attack", "2x4", "--attackers", "pixel", "--no-guide"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [x["attack"] for x in rows if x["variant"] == "tiny"] == ["2x3 all", "2x4 pixel"]
    assert len(rows) == 3 and set(rows[-1]["attackers"]) == {"pixel"}
    assert "| tiny | 1 |" in r.output and "| guide |" not in r.output
    assert (out / "runs" / "tiny_s900" / "manifest.json").stat().st_mtime_ns == weights  # re-graded, not re-run
    r = CliRunner().invoke(main, args + ["--attackers", "pixel,pixels"])
    assert r.exit_code == 2 and "--attackers pixel,pixels: 'all', or some of" in r.output
    r = CliRunner().invoke(main, args + ["--variant", "bad:pool=x"])
    assert r.exit_code == 2 and "not a number" in r.output
    changed = [a.replace("pool=2", "pool=3") for a in args]
    r = CliRunner().invoke(main, changed + ["--no-guide", "--attack", "2x5"])  # same name, other settings
    assert r.exit_code == 2 and "made with other settings" in r.output
    assert len((out / "results.jsonl").read_text().splitlines()) == 3
    r = CliRunner().invoke(main, [*args[:1], "9-x", *args[2:]])
    assert r.exit_code == 2 and "Traceback" not in r.output
    r = CliRunner().invoke(main, args + ["--attack", "0x5"])
    assert r.exit_code == 2 and "both at least 1" in r.output
    if not torch.cuda.is_available():
        r = CliRunner().invoke(main, args + ["--device", "cuda"])
        assert r.exit_code == 2 and "CUDA is not available" in r.output
