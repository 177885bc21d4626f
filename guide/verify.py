"""`guide-engine verify` as a library function: a run or export directory => report.json, report.png.

Graded by two networks side by side (guide/metrics.py): the training identity network and the judge,
which no loss and no attacker saw. Every identity of the run's ledger (guide/ledger.py) gets a row: the
judge at its w_u, its neighbours, and the re-inversion attacker (guide/attack.py) with its photo (the
photo itself when given with --image, else the aligned crop the run kept, else the pretrained image of w_u)
against the unlearned generator; whether the pretrained generator drew the photo's person at all (`drawn`,
under the judge: a person it never drew is "not drawn") and whether the run's w_u is that person (`found`: a
w_u the judge does not call the person is "not found", the run forgot someone else); for either, no
forgetting is claimed;
preservation is measured once. Verdict levels over all identities: `forgotten` and `robust`;
`passed` is the level asked for (`require`). `identity` and `attack` repeat the worst identity's row.
Exit semantics live in the CLI: passed => 0, failed => 1 (CheckFailed), usage errors => 2.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from guide_engine.engine import __version__, integrity
from guide_engine.engine.errors import GuideEngineError
from guide_engine.engine.models import zoo
from guide_engine.engine.sampling import load_generator_source
from guide_engine.engine.files import read_json
from guide_engine.engine.rng import seeded_rng
from guide_engine.guide import ledger, metrics
from guide_engine.guide.attack import AttackConfig
from guide_engine.engine.files import state_sha256
from guide_engine.guide.target import typical_radius
from guide_engine.engine import files

LEVELS = ("forgotten", "robust")
VERIFY_SEED = 20_240_617  # the global RNG while verify measures (EG3D's ray samples)


def attack_photos(book: dict, G_s, w_u: torch.Tensor, images: tuple[str, ...],
                  folders: tuple[Path, ...] = ()) -> list[tuple[torch.Tensor, str, bool]]:
    """What the attacker holds, per ledger identity => [(photo (1, 3, H, W), how it was obtained, whether it is
    the person's own photo rather than the pretrained image of w_u)]. A photo
    identity: its photo when given (matched by its SHA-256; its face found and aligned again as the run did),
    else the aligned crop the run kept (aligned.png, looked for in `folders`); a seed identity, or a photo run
    from before aligned crops were kept: the pretrained image of w_u (`how` says which)."""
    from guide_engine.engine.faces import load_face

    wanted = {e.get("latent", {}).get("photo_sha256") for e in book["identities"]} - {None}
    by_sha = {}
    for image in images:
        sha = hashlib.sha256(Path(image).read_bytes()).hexdigest() if Path(image).is_file() else None
        if sha is None or sha not in wanted:
            raise GuideEngineError(f"--image {image}: not a photo this run forgot (its SHA-256 is not in the ledger)")
        by_sha[sha] = image
    out = []
    for i, e in enumerate(book["identities"]):
        how = e.get("latent", {})
        if how.get("photo_sha256") in by_sha:
            face = load_face(by_sha[how["photo_sha256"]], G_s, face=(how.get("face") or {}).get("face"))
            out.append((face.image, "the run's photo", True))
            continue
        kept = next((f / how["aligned"] for f in folders if how.get("aligned") and (f / how["aligned"]).is_file()), None)
        if kept is not None:
            from guide_engine.engine.images import load_png

            out.append((load_png(kept, G_s.resolution), f"the run's aligned photo ({how['aligned']})", True))
            continue
        with torch.no_grad():
            photo = G_s.synthesize(w_u[i:i + 1])
        why = "(the run's photo was not given: --image PHOTO attacks with it)" if how.get("source") == "inversion" \
            else "(seed run)"
        out.append((photo, f"pretrained image of w_u {why}", False))
    return out


def drawn_figures(judge: metrics.Judged, photo: torch.Tensor, x_pre: torch.Tensor, source: str | None, how: str,
                  own_photo: bool, attack: dict | None) -> dict:
    """Did the pretrained generator draw the person in the photo before unlearning? Under the judge (which no
    loss, target choice or attacker saw): the photo against the pretrained face at w_u and, when the attack ran,
    the pretrained generator's best attack face; `drawn` when either comes within the strangers' p1. A seed
    identity's photo is that face, so it is drawn by definition; no photo at all: unknown (None).
    `found`: the face at w_u itself comes within the line, so what the run forgot is the person in the photo (the
    inversion can miss a person the generator draws: it descends on the training network, which then calls its
    own result the person while the judge does not)."""
    if source == "seed":
        return {"drawn": True, "found": True, "drawn_by": "seed"}
    if not own_photo:  # the person's photo is not at hand
        return {"drawn": None, "found": None, "drawn_by": how}
    line = judge.calib["strangers_dist_p1"]
    at_w_u = judge.dist(judge.desc(x_pre), judge.desc(photo)).item()
    best = min(at_w_u, attack["judge_pretrained"]) if attack else at_w_u
    return {"drawn": bool(best < line), "found": bool(at_w_u < line), "drawn_by": how, "photo_judge_dist_at_w_u": at_w_u,
            "photo_judge_dist_pretrained_attack": attack["judge_pretrained"] if attack else None,
            "drawn_line": line}


def verify_run(run: Path, backend: str = "torch", n_preserve: int = 256, compare: tuple[Path, ...] = (),
               reinversion: bool = True, judge: str = zoo.DEFAULT_JUDGE, require: str = "forgotten",
               images: tuple[str, ...] = (), attack: AttackConfig = AttackConfig(), progress: bool = False,
               device: str = "cpu") -> dict:
    """device: where the generators, the training network and the attacker run (the SFace judge runs on
    ONNX Runtime's CPU provider whatever it is); an export's runner keeps its own."""
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
        G_u = load_generator_source(run, device=device)
        base_name, verified = G_u.name, G_u.verified
        infer = lambda w: G_u.synthesize(w)  # noqa: E731
    else:
        from guide_engine.engine.backends import open_runner

        runner = open_runner(run, backend)
        base_name, verified = runner.manifest["generator"], runner.verified
        src = Path(runner.manifest["source"])
        G_u = load_generator_source(src, device=device) if src.is_dir() else None  # for the re-inversion attack
        if G_u is not None and G_u.verified["weights_sha256"] != verified["source_weights_sha256"]:
            G_u = None  # the source run moved on since the export: it cannot stand in for the artifact
        infer = lambda w: runner.infer(w).to(device)  # noqa: E731  (the runners answer on the CPU)
    if reinversion and G_u is None:
        raise GuideEngineError(f"{run}: the attack needs the unlearned PyTorch weights, and this export's source "
                               f"run is gone; give --no-reinversion (level robust is then not measured)")
    book = ledger.read(run)
    folders = (run,) if backend == "torch" else (run, Path(runner.manifest["source"]))  # where aligned.png may be
    G_s = zoo.load_generator(base_name, device=device)
    train_name = read_json(run / "manifest.json").get("identity_network", "dlib-resnet-v1") \
        if (run / "manifest.json").is_file() else "dlib-resnet-v1"
    train_net, judge_net = zoo.load_identity(train_name, device=device), zoo.load_judge(judge, device=device)
    base_sha = state_sha256(G_s)
    ledger.check_base(book, base_name, base_sha, run)
    train = metrics.Judged(train_net, metrics.calibrate(G_s, train_net, base_sha))
    jdg = metrics.Judged(judge_net, metrics.calibrate(G_s, judge_net, base_sha))
    # EG3D renders with random ray samples from the global RNG: seeded here, after everything is loaded and
    # calibrated, one artifact gets the same figures in every verify (the DCGAN draws nothing at random)
    with seeded_rng(VERIFY_SEED, device):
        w_u = ledger.latents(book, G_s.latent_shape).to(device)
        photos = attack_photos(book, G_s, w_u, images, folders)
        if reinversion:
            for p in (*G_s.parameters(), *G_u.parameters()):
                p.requires_grad_(False)
        views = G_s.eval_views() if backend == "torch" and hasattr(G_s, "eval_views") else None
        r = typical_radius(G_s)
        rows, pictures, attack_images = [], [], []
        for i, entry in enumerate(book["identities"]):
            row, pics = metrics.identity_figures(G_s, infer, train, jdg, w_u[i:i + 1], r, views=views,
                                                 infer_view=G_u.synthesize if views else None)
            row = {"identity_hash": entry["identity_hash"], "key": entry.get("key"), "run": entry.get("run"), **row}
            photo, target, own_photo = photos[i]
            if reinversion:
                found = metrics.attack_figures(G_s, G_u, train, jdg, photo, attack, target, progress, w_u[i:i + 1], r)
                row["attack"] = found["figures"]
                row.update(found["legacy"])
                attack_images.append(found["images"])
            row.update(drawn_figures(jdg, photo, pics["x_pre"], entry.get("latent", {}).get("source"), target,
                                     own_photo, row.get("attack")))
            rows.append(row)
            pictures.append({key: x.cpu() for key, x in pics.items()})
        preservation, random_faces = metrics.preservation_figures(G_s, infer, train, jdg, n_preserve)
        random_faces = {key: x.cpu() for key, x in random_faces.items()}
        k = metrics.worst(rows, jdg, train)
        report = {"identity_network": train.name,
                  "calibration": {k_: v for k_, v in train.calib.items() if k_ not in ("mean_embedding", "quantiles")},
                  "training_network": metrics.network_info(train), "judge": metrics.network_info(jdg),
                  "identity": {key: v for key, v in rows[k].items() if key != "attack"},
                  "identities": rows, "n_identities": len(rows), "worst_identity": k,
                  "preservation": preservation, "thresholds": metrics.thresholds(train, jdg),
                  "levels": metrics.verdict(rows, preservation, reinversion), "backend": backend, "required": require}
        if reinversion:
            report["attack"] = rows[k]["attack"]
        report["passed"] = bool(report["levels"][require])
        report["outcome"] = outcome(report)
        report["judged"] = {"backend": backend, "weights_sha256": verified["weights_sha256"],
                            "ledger_sha256": verified["ledger_sha256"], "base_sha256": base_sha,
                            "networks": {"train": {"name": train.name, "sha256": zoo.weights_sha256(train.name)},
                                         "judge": {"name": jdg.name, "sha256": zoo.weights_sha256(jdg.name)}},
                            "engine_version": __version__}
        targets = [ledger.latents(book, G_s.latent_shape, "w_t")] + \
            [ledger.latents(ledger.read(Path(c)), G_s.latent_shape, "w_t") for c in compare]
        n_targets = sum(len(x) for x in targets)
        if n_targets > 1:  # several identities: do their targets collapse onto one face (UFO collapse)?
            report["target"] = {"collapse_sim": metrics.collapse_sim(G_s, judge_net, list(torch.cat(targets).split(1))),
                                "n_identities": n_targets, "network": judge_net.name}
    report = integrity.sign(report)  # with GUIDE_ENGINE_SIGNING_KEY set: an HMAC the operator can check
    files.write_json(run / "report.json", report)
    save_report_picture(report, pictures, random_faces, attack_images[k] if reinversion else None, run / "report.png")
    from guide_engine.guide import report_html  # imports this module: imported here, not at the top

    report_html.write(report, run)
    return report


def save_report_picture(report: dict, pictures: list[dict], random_faces: dict, attack_images: dict | None,
                        path: Path) -> None:
    """report.png: the worst identity (photo, pretrained and unlearned at w_u, the attack's best faces), the
    thresholds and the verdict in words; below it, pretrained vs unlearned at each w_u (up to 8), the
    worst identity's neighbours, and random latents."""
    from guide_engine.engine.images import make_grid, save_stack

    t, i, k = report["training_network"], report["identity"], report["worst_identity"]
    short = t["name"].split("-")[0]  # dlib, arcface
    worst = pictures[k]
    top = [worst["x_pre"], worst["x_un"]]
    titles = ["pretrained w_u\n ", f"unlearned w_u\njudge {i['judge_id_dist']:.2f} {short} {i['id_dist']:.2f}"]
    if attack_images is not None:
        a = report["attack"]
        top = [attack_images["photo"], *top, attack_images["unlearned"], attack_images["pretrained"]]
        titles = ["attacker's photo\n ", *titles,
                  f"attack, unlearned\njudge {a['judge_best']:.2f} {short} {a['train_best']:.2f}",
                  f"attack, pretrained\njudge {a['judge_pretrained']:.2f} {short} {a['train_pretrained']:.2f}"]
    n_near = min(4, len(worst["xn_pre"]))
    pre = torch.cat([*(p["x_pre"] for p in pictures[:8]), worst["xn_pre"][:n_near], random_faces["pre"]])
    un = torch.cat([*(p["x_un"] for p in pictures[:8]), worst["xn_un"][:n_near], random_faces["un"]])
    rows = report["identities"][:8]
    captions = [f"judge {r['judge_id_dist']:.2f}" for r in rows] + ["neighbour"] * n_near + ["random"] * len(random_faces["pre"])
    grid = make_grid(torch.cat([pre, un]), nrow=len(pre), scale=2, row_labels=["pretrained", "unlearned"],
                     captions=[""] * len(pre) + captions)
    head = f"worst of {report['n_identities']} identities: #{k}" if report["n_identities"] > 1 else "the identity"
    save_stack([[head], make_grid(torch.cat(top), nrow=len(top), scale=2, captions=titles), verdict_lines(report),
                ["below: each w_u (judge distance, pretrained vs unlearned), neighbours of the worst, random faces"],
                grid], path)


def outcome(report: dict) -> str:
    """One phrase for the whole report: "not drawn" (some person's photo was never drawn by the pretrained
    generator: nothing about forgetting them can be claimed), "not found" (the generator draws them, but the run's
    w_u is someone else), "robust", "forgotten" or "not forgotten"."""
    if any(r.get("drawn") is False for r in report["identities"]):
        return "not drawn"
    if any(r.get("found") is False for r in report["identities"]):
        return "not found"
    if report["levels"].get("robust"):
        return "robust"
    return "forgotten" if report["levels"]["forgotten"] else "not forgotten"


def not_drawn_line(report: dict) -> str | None:
    """The not-drawn (or not-found) verdict in words, or None when every person was drawn and found (or it could
    not be told)."""
    rows = [(k, r) for k, r in enumerate(report["identities"]) if r.get("drawn") is False]
    if not rows:
        missed = [(k, r) for k, r in enumerate(report["identities"]) if r.get("found") is False]
        if not missed:
            return None
        k, r = missed[0]
        who = "this person" if report.get("n_identities", 1) == 1 else \
            f"{len(missed)} of the people (#{k}: {r.get('key')})"
        return (f"NOT FOUND: the pretrained generator draws {who} (its attack came "
                f"{r['photo_judge_dist_pretrained_attack']:.3f} from the photo to the judge), but the run's w_u is "
                f"someone else ({r['photo_judge_dist_at_w_u']:.3f}; same person below {r['drawn_line']:.3f}): it "
                f"forgot another face, and no forgetting of this person is claimed. Unlearn again with more "
                f"--invert-steps, or a clearer photo")
    k, r = rows[0]
    who = "this person" if report.get("n_identities", 1) == 1 else f"{len(rows)} of the people (#{k}: {r.get('key')})"
    best = min(v for v in (r.get("photo_judge_dist_at_w_u"), r.get("photo_judge_dist_pretrained_attack")) if v is not None)
    return (f"NOT DRAWN: the pretrained generator did not draw {who} before unlearning: its closest face is "
            f"{best:.3f} from the photo to the judge (same person below {r['drawn_line']:.3f}). No forgetting is "
            f"claimed: a generator cannot forget a face it never drew (is the photo of someone else, or the wrong "
            f"face in it?)")


def verdict_lines(report: dict) -> list[str]:
    """The two verdict levels in words, with the thresholds they were decided by."""
    t, j, i, p = report["training_network"], report["judge"], report["identity"], report["preservation"]
    lines = [f"judge {j['name']}: same person below p1 {j['strangers']['p1']:.3f}, p5 {j['strangers']['p5']:.3f}; "
             f"strangers' median {j['strangers']['p50']:.3f}",
             f"training network {t['name']}: p1 {t['strangers']['p1']:.3f}, p5 {t['strangers']['p5']:.3f}, "
             f"median {t['strangers']['p50']:.3f}"]
    yes = lambda b: "YES" if b else "NO"  # noqa: E731
    if (line := not_drawn_line(report)) is not None:
        lines.append(line)
    n = report.get("n_identities", 1)
    who = "the person" if n == 1 else f"the person (the worst of {n}: {sum(r['forgotten'] for r in report['identities'])} " \
                                      f"forgotten at w_u)"
    lines.append(f"forgotten: {yes(report['levels']['forgotten'])}, the judge puts the unlearned face "
                 f"{i['judge_id_dist']:.3f} from {who} (forgotten from {j['strangers']['p50']:.3f}); "
                 f"{p['same_person_frac']:.1%} of random faces kept (need {report['thresholds']['min_same_person_frac']:.0%})")
    if "attack" in report:
        a = report["attack"]
        worst = min((a["judge_best"] / j["strangers"]["p1"], "judge", a["judge_best"], j["strangers"]["p1"], "judge"),
                    (a["train_best"] / t["strangers"]["p1"], t["name"], a["train_best"], t["strangers"]["p1"], "train"))
        if a["robust"]:
            lines.append(f"robust to re-inversion: {yes(report['levels']['robust'])}, the attack gets no closer than "
                         f"{a['judge_best']:.3f} (judge) / {a['train_best']:.3f} ({t['name']}); same person below "
                         f"{j['strangers']['p1']:.3f} / {t['strangers']['p1']:.3f}"
                         + ("" if report["levels"]["forgotten"] else "; but not forgotten (above)"))
        else:
            found = a.get(f"{worst[4]}_starts_closer_than_p1")  # the report's key of that network
            lines.append(f"robust to re-inversion: NO, the attack reaches {worst[2]:.3f} ({worst[1]}), same person "
                         f"below {worst[3]:.3f}" + ("" if found is None else f" ({found} of {a['starts']} starts get there)")
                         + f"; to the judge its face is closer than {1 - a['judge_strangers_closer_frac']:.1%} of strangers are")
    else:
        lines.append("robust to re-inversion: not measured (--no-reinversion)")
    return lines


def yes_no(b) -> str:
    return "-" if b is None else ("yes" if b else "no")


def summary_rows(report: dict) -> list[tuple]:
    """(what, training network's figure, judge's figure) rows; the first is the header."""
    t, j, i, p, th = (report[k] for k in ("training_network", "judge", "identity", "preservation", "thresholds"))
    rows = [("", f"{t['name'][:22]} (trains)", f"{j['name'][:22]} (judge)"),
            ("at w_u: distance, pretrained vs unlearned", i["id_dist"], i["judge_id_dist"]),
            ("  forgotten from (strangers' median)", th["forgotten_if_id_dist_at_least"], th["judge_forgotten_if_id_dist_at_least"]),
            ("  forgotten", i["train_forgotten"], i["forgotten"]),
            (f"neighbours forgotten (K={i['neighbors_k']})", i["neighbors_forgotten_frac"], i["judge_neighbors_forgotten_frac"]),
            ("random faces kept", p["train_same_person_frac"], p["judge_same_person_frac"]),
            ("  kept below (strangers' p5)", th["kept_if_dist_below"], th["judge_kept_if_dist_below"]),
            ("embedding Frechet distance (not FID)", p["fd_embedding"], p["judge_fd_embedding"])]
    if i.get("photo_judge_dist_at_w_u") is not None:  # a photo identity: did the pretrained generator draw them?
        rows += [("photo to the pretrained face at w_u", None, i["photo_judge_dist_at_w_u"]),
                 ("  w_u is the person (below strangers' p1)", None, i.get("found")),
                 ("  drawn before unlearning (w_u or the attack)", None, i["drawn"])]
    if "attack" in report:
        a = report["attack"]
        how = f"{a['starts']} starts x {a['steps']} steps" + (", no identity term" if a.get("loss") == "pixel" else "")
        rows += [(f"attack ({how}): best, unlearned", a["train_best"], a["judge_best"]),
                 ("  pretrained generator at that latent", a.get("train_best_pretrained_there"),
                  a.get("judge_best_pretrained_there")),
                 ("  that latent's distance from w_u (radii)", a.get("train_best_from_w_u"), a.get("judge_best_from_w_u")),
                 ("  same attack on the pretrained generator", a["train_pretrained"], a["judge_pretrained"]),
                 ("  same person below (strangers' p1)", th["robust_if_attack_dist_at_least"]["train"],
                  th["robust_if_attack_dist_at_least"]["judge"]),
                 ("  strangers closer than the attack's face", a["train_strangers_closer_frac"], a["judge_strangers_closer_frac"]),
                 ("  starts that end closer than p1", a.get("train_starts_closer_than_p1"),
                  a.get("judge_starts_closer_than_p1"))]
    return rows


def fmt(v) -> str:
    return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def summary_table(report: dict) -> str:
    """Two columns, the training network's and the judge's, then the verdict in words."""
    t, i, p, rows = report["training_network"], report["identity"], report["preservation"], summary_rows(report)
    n = report.get("n_identities", 1)
    out = [f"worst of {n} identities: #{report['worst_identity']} ({i.get('key')})"] if n > 1 else []
    out += [f"{a:<46} {fmt(b):>30} {fmt(c):>30}" for a, b, c in rows]
    out += [f"{'random faces kept by both networks':<46} {fmt(p['same_person_frac']):>30}",
            f"{'pixel L1 on random faces':<46} {fmt(p['pixel_l1']):>30}"]
    if n > 1:  # a row each
        out += ["", f"{'#':>3} {'identity':<24} {'judge at w_u':>12} {'forgotten':>9} {'attack: judge':>13} "
                    f"{'attack: ' + t['name'][:5]:>13} {'robust':>6}"]
        for k, r in enumerate(report["identities"]):
            a = r.get("attack", {})
            out.append(f"{k:>3} {str(r.get('key'))[:24]:<24} {r['judge_id_dist']:>12.3f} {yes_no(r['forgotten']):>9} "
                       f"{fmt(a.get('judge_best')):>13} {fmt(a.get('train_best')):>13} {yes_no(a.get('robust')):>6}")
    if "target" in report:
        out.append(f"{'target collapse (' + report['target']['network'] + ' cos)':<46} {fmt(report['target']['collapse_sim']):>30}")
    out += [""] + verdict_lines(report)[2:]
    out.append(f"{'PASSED' if report['passed'] else 'FAILED'} (required level: {report['required']}; outcome: "
               f"{report.get('outcome', outcome(report))})")
    return "\n".join(out)
