"""`guide-engine verify` as a library function: a run or export directory => report.json, report.png.

Graded by two networks side by side (guide/metrics.py): the training identity network and the judge,
which no loss and no attacker saw. The re-inversion attacker (guide/attack.py) gets the photo (for a
seed run: the pretrained image of w_u) and the unlearned generator. Verdict levels: `forgotten` and
`robust`; `passed` is the level asked for (`require`). Exit semantics live in the CLI: passed => 0,
failed => 1 (CheckFailed), usage errors => 2.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from guide_engine.engine.errors import GuideEngineError
from guide_engine.engine.models import zoo
from guide_engine.engine.sampling import load_generator_source, read_json
from guide_engine.guide import metrics
from guide_engine.guide.attack import AttackConfig
from guide_engine.guide.job import state_sha256
from guide_engine.guide.target import typical_radius

LEVELS = ("forgotten", "robust")


def _identity_latent(run: Path, shape: tuple[int, ...], key: str = "w_u") -> torch.Tensor:
    """identity.json stores latents flattened => (1, *shape)."""
    ident = run / "identity.json"
    if not ident.is_file():
        raise GuideEngineError(f"{run}: no identity.json; give a directory made by `guide-engine unlearn` or `export`")
    return torch.tensor(read_json(ident)[key], dtype=torch.float32).view(1, *shape)


def attack_photo(run: Path, G_s, w_u: torch.Tensor, image: str | None) -> tuple[torch.Tensor, str]:
    """What the attacker holds => (photo (1, 3, H, W), how it was obtained). A photo run's own photo when
    `image` is given (checked against the hash the run recorded); otherwise the pretrained image of w_u."""
    how = read_json(run / "identity.json").get("latent", {})
    if image is None:
        with torch.no_grad():
            photo = G_s.synthesize(w_u)
        if how.get("source") == "inversion":
            return photo, "pretrained image of w_u (the run's photo was not given: --image PHOTO attacks with it)"
        return photo, "pretrained image of w_u (seed run)"
    if how.get("source") != "inversion":
        raise GuideEngineError(f"--image {image}: {run} forgot the generator's own identity at seed {how.get('seed')}, "
                               f"not a photo; leave --image out")
    from guide_engine.engine.images import load_image

    photo = load_image(image, G_s.resolution)
    got = hashlib.sha256(Path(image).read_bytes()).hexdigest()
    if got != how.get("photo_sha256"):
        raise GuideEngineError(f"--image {image}: SHA-256 {got[:16]}... is not the photo this run forgot "
                               f"({str(how.get('photo_sha256'))[:16]}...)")
    return photo, "the run's photo"


def verify_run(run: Path, backend: str = "torch", n_preserve: int = 256, compare: tuple[Path, ...] = (),
               reinversion: bool = True, judge: str = zoo.DEFAULT_JUDGE, require: str = "forgotten",
               image: str | None = None, attack: AttackConfig = AttackConfig(), progress: bool = False) -> dict:
    run = Path(run)
    if n_preserve < 2:
        raise GuideEngineError(f"--n-preserve {n_preserve}: needs at least 2")
    if require not in LEVELS:
        raise GuideEngineError(f"--require {require}: choose {' or '.join(LEVELS)}")
    if require == "robust" and not reinversion:
        raise GuideEngineError("--require robust needs the re-inversion attack; drop --no-reinversion")
    if attack.starts < 1 or attack.steps < 1:
        raise GuideEngineError("--attack-starts and --attack-steps must be at least 1")
    if backend == "torch":
        G_u = load_generator_source(run, device="cpu")
        base_name = G_u.name
        infer = lambda w: G_u.synthesize(w)  # noqa: E731
    else:
        from guide_engine.engine.backends import open_runner

        runner = open_runner(run, backend)
        base_name = runner.manifest["generator"]
        src = Path(runner.manifest["source"])
        G_u = load_generator_source(src, device="cpu") if src.is_dir() else None  # for the re-inversion attack
        infer = runner.infer
    if reinversion and G_u is None:
        raise GuideEngineError(f"{run}: the attack needs the unlearned PyTorch weights, and this export's source "
                               f"run is gone; give --no-reinversion (level robust is then not measured)")
    G_s = zoo.load_generator(base_name)
    train_name = read_json(run / "manifest.json").get("identity_network", "dlib-resnet-v1") \
        if (run / "manifest.json").is_file() else "dlib-resnet-v1"
    train_net, judge_net = zoo.load_identity(train_name), zoo.load_judge(judge)
    base_sha = state_sha256(G_s)
    train = metrics.Judged(train_net, metrics.calibrate(G_s, train_net, base_sha))
    jdg = metrics.Judged(judge_net, metrics.calibrate(G_s, judge_net, base_sha))
    w_u = _identity_latent(run, G_s.latent_shape)
    attacked = None
    if reinversion:
        for p in (*G_s.parameters(), *G_u.parameters()):
            p.requires_grad_(False)
        photo, target = attack_photo(run, G_s, w_u, image)
        attacked = metrics.attack_figures(G_s, G_u, train, jdg, photo, attack, target, progress)
    views = G_s.eval_views() if backend == "torch" and hasattr(G_s, "eval_views") else None
    report, images = metrics.evaluate(G_s, infer, train, jdg, w_u, typical_radius(G_s), n_preserve,
                                      attack=attacked, views=views, infer_view=G_u.synthesize if views else None)
    report["backend"] = backend
    report["required"] = require
    report["passed"] = bool(report["levels"][require])
    if compare:
        targets = [_identity_latent(Path(r), G_s.latent_shape, "w_t") for r in (run, *compare)]
        report["target"] = {"collapse_sim": metrics.collapse_sim(G_s, judge_net, targets), "n_identities": len(targets),
                            "network": judge_net.name}
    zoo.write_json(run / "report.json", report)
    save_report_picture(report, images, None if attacked is None else attacked["images"], run / "report.png")
    return report


def save_report_picture(report: dict, images: dict, attack_images: dict | None, path: Path) -> None:
    """report.png: the person, pretrained and unlearned at w_u, the attack's best faces, the thresholds and
    the verdict in words; below it, pretrained vs unlearned at w_u, neighbours and random latents."""
    from guide_engine.engine.images import make_grid, save_stack

    t, i = report["training_network"], report["identity"]
    short = t["name"].split("-")[0]  # dlib, arcface
    top = [images["x_pre"], images["x_un"]]
    titles = ["pretrained w_u\n ", f"unlearned w_u\njudge {i['judge_id_dist']:.2f} {short} {i['id_dist']:.2f}"]
    if attack_images is not None:
        a = report["attack"]
        top = [attack_images["photo"], *top, attack_images["unlearned"], attack_images["pretrained"]]
        titles = ["attacker's photo\n ", *titles,
                  f"attack, unlearned\njudge {a['judge_best']:.2f} {short} {a['train_best']:.2f}",
                  f"attack, pretrained\njudge {a['judge_pretrained']:.2f} {short} {a['train_pretrained']:.2f}"]
    n = len(images["sims"])
    grid = make_grid(torch.cat([images["pre"], images["un"]]), nrow=n, scale=2, row_labels=["pretrained", "unlearned"],
                     captions=[f"{s:.2f}" for s in images["sims"]] * 2)
    save_stack([make_grid(torch.cat(top), nrow=len(top), scale=2, captions=titles), verdict_lines(report),
                [f"below: {t['name']} cosine, pretrained vs unlearned: w_u, neighbours, random faces"], grid], path)


def verdict_lines(report: dict) -> list[str]:
    """The two verdict levels in words, with the thresholds they were decided by."""
    t, j, i, p = report["training_network"], report["judge"], report["identity"], report["preservation"]
    lines = [f"judge {j['name']}: same person below p1 {j['strangers']['p1']:.3f}, p5 {j['strangers']['p5']:.3f}; "
             f"strangers' median {j['strangers']['p50']:.3f}",
             f"training network {t['name']}: p1 {t['strangers']['p1']:.3f}, p5 {t['strangers']['p5']:.3f}, "
             f"median {t['strangers']['p50']:.3f}"]
    yes = lambda b: "YES" if b else "NO"  # noqa: E731
    lines.append(f"forgotten: {yes(report['levels']['forgotten'])}, the judge puts the unlearned face "
                 f"{i['judge_id_dist']:.3f} from the person (forgotten from {j['strangers']['p50']:.3f}); "
                 f"{p['same_person_frac']:.1%} of random faces kept (need {report['thresholds']['min_same_person_frac']:.0%})")
    if "attack" in report:
        a = report["attack"]
        worst = min((a["judge_best"] / j["strangers"]["p1"], "judge", a["judge_best"], j["strangers"]["p1"]),
                    (a["train_best"] / t["strangers"]["p1"], t["name"], a["train_best"], t["strangers"]["p1"]))
        if a["robust"]:
            lines.append(f"robust to re-inversion: {yes(report['levels']['robust'])}, the attack gets no closer than "
                         f"{a['judge_best']:.3f} (judge) / {a['train_best']:.3f} ({t['name']}); same person below "
                         f"{j['strangers']['p1']:.3f} / {t['strangers']['p1']:.3f}"
                         + ("" if report["levels"]["forgotten"] else "; but not forgotten (above)"))
        else:
            lines.append(f"robust to re-inversion: NO, the attack reaches {worst[2]:.3f} ({worst[1]}), same person "
                         f"below {worst[3]:.3f}; to the judge its face is closer than "
                         f"{1 - a['judge_strangers_closer_frac']:.1%} of strangers are")
    else:
        lines.append("robust to re-inversion: not measured (--no-reinversion)")
    return lines


def summary_table(report: dict) -> str:
    """Two columns, the training network's and the judge's, then the verdict in words."""
    t, j, i, p, th = (report[k] for k in ("training_network", "judge", "identity", "preservation", "thresholds"))
    fmt = lambda v: "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))  # noqa: E731
    rows = [("", f"{t['name'][:22]} (trains)", f"{j['name'][:22]} (judge)"),
            ("at w_u: distance, pretrained vs unlearned", i["id_dist"], i["judge_id_dist"]),
            ("  forgotten from (strangers' median)", th["forgotten_if_id_dist_at_least"], th["judge_forgotten_if_id_dist_at_least"]),
            ("  forgotten", i["train_forgotten"], i["forgotten"]),
            (f"neighbours forgotten (K={i['neighbors_k']})", i["neighbors_forgotten_frac"], i["judge_neighbors_forgotten_frac"]),
            ("random faces kept", p["train_same_person_frac"], p["judge_same_person_frac"]),
            ("  kept below (strangers' p5)", th["kept_if_dist_below"], th["judge_kept_if_dist_below"]),
            ("embedding Frechet distance (not FID)", p["fd_embedding"], p["judge_fd_embedding"])]
    if "attack" in report:
        a = report["attack"]
        rows += [(f"attack ({a['starts']} starts x {a['steps']} steps): best, unlearned", a["train_best"], a["judge_best"]),
                 ("  same attack on the pretrained generator", a["train_pretrained"], a["judge_pretrained"]),
                 ("  same person below (strangers' p1)", th["robust_if_attack_dist_at_least"]["train"],
                  th["robust_if_attack_dist_at_least"]["judge"]),
                 ("  strangers closer than the attack's face", a["train_strangers_closer_frac"], a["judge_strangers_closer_frac"])]
    out = [f"{a:<46} {fmt(b):>30} {fmt(c):>30}" for a, b, c in rows]
    out += [f"{'random faces kept by both networks':<46} {fmt(p['same_person_frac']):>30}",
            f"{'pixel L1 on random faces':<46} {fmt(p['pixel_l1']):>30}"]
    if "target" in report:
        out.append(f"{'target collapse (' + report['target']['network'] + ' cos)':<46} {fmt(report['target']['collapse_sim']):>30}")
    out += [""] + verdict_lines(report)[2:]
    out.append(f"{'PASSED' if report['passed'] else 'FAILED'} (required level: {report['required']})")
    return "\n".join(out)
