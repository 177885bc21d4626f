"""`guide-engine verify` as a library function: a run or export directory => report.json, report.png, report.html.

Graded by two networks side by side (guide/metrics.py; thresholds from guide/calibration.py): the training
identity network and the judge, which no loss and no attacker saw. Every identity of the run's ledger
(guide/ledger.py) gets a row: the judge at its w_u, its neighbours, and both re-inversion attackers
(guide/attack.py) with its photo (the photo itself when given with --image, else the aligned crop the run
kept, else the pretrained image of w_u) against the unlearned generator, all identities attacked together;
whether the pretrained generator drew the photo's person at all (`drawn`, under the judge: a person it never
drew is "not drawn") and whether the run's w_u is that person (`found`: else "not found", the run forgot
someone else); for either, no forgetting is claimed. Preservation is measured once. Verdict levels over all
identities: `forgotten` and `robust`; `passed` is the level asked for (`require`). `identity` and `attack`
repeat the worst identity's row. Exit semantics live in the CLI: passed => 0, failed => 1 (CheckFailed),
usage errors => 2.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..engine import __version__, reports, rundir
from ..engine.crops import crop_of
from ..engine.errors import GuideEngineError
from ..engine.files import state_sha256
from ..engine.models import zoo
from ..engine.precision import check as check_precision
from ..engine.rng import seeded_rng
from ..engine.settings import flag
from . import calibration, ledger, metrics
from .attack import AttackConfig, all_attackers, parse_attackers
from .config import DEFAULT_PRECISION
from .faceness import look_range
from .networks import identity_network
from .report import outcome, save_report_picture, write_html
from .target import typical_radius

LEVELS = ("forgotten", "robust")
VERIFY_SEED = 20_240_617  # the global RNG while verify measures (EG3D's ray samples)


def attack_photos(book: dict, G_s, w_u: torch.Tensor, images: tuple[str, ...],
                  folders: tuple[Path, ...] = ()) -> list[tuple[torch.Tensor, str, bool]]:
    """What the attacker holds, per ledger identity => [(photo (1, 3, H, W), how it was obtained, whether it is
    the person's own photo rather than the pretrained image of w_u)]. A photo
    identity: its photo when given (matched by its SHA-256; its face found and aligned again as the run did),
    else the aligned crop the run kept (aligned.png, looked for in `folders`); a seed identity, or a photo run
    from before aligned crops were kept: the pretrained image of w_u (`how` says which)."""
    from ..engine.faces import load_face

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
        kept = next((f / how["aligned"] for f in folders if how.get("aligned") and (f / how["aligned"]).is_file()),
                    None)
        if kept is not None:
            from ..engine.images import load_png

            out.append((load_png(kept, G_s.resolution), f"the run's aligned photo ({how['aligned']})", True))
            continue
        with torch.no_grad():
            photo = G_s.synthesize(w_u[i:i + 1])
        why = "(the run's photo was not given: --image PHOTO attacks with it)" if how.get("source") == "inversion" \
            else "(seed run)"
        out.append((photo, f"pretrained image of w_u {why}", False))
    return out


def unlearned_face(looks, x_un: torch.Tensor) -> dict:
    """Is the unlearned image at w_u a face (someone else), not a smear? `is_face` None: not checked (the
    detector does not see this generator's faces)."""
    if not looks.usable:
        return {"is_face": None, "what": f"not checked: {looks.unusable_why()}"}
    seen = looks.check(x_un)
    return {"is_face": bool(seen["ok"][0]), "face_found": bool(seen["face"][0]),
            "in_look_range": bool(seen["in_look"][0]), "brightness": float(seen["brightness"][0]),
            "contrast": float(seen["contrast"][0]), "detection_score": float(seen["score"][0]),
            "what": looks.describe(seen)}


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
    on_pretrained = (attack or {}).get("judge_pretrained")  # None unless the training network's attacker ran
    best = at_w_u if on_pretrained is None else min(at_w_u, on_pretrained)
    return {"drawn": bool(best < line), "found": bool(at_w_u < line), "drawn_by": how,
            "photo_judge_dist_at_w_u": at_w_u, "photo_judge_dist_pretrained_attack": on_pretrained,
            "drawn_line": line}


@dataclass(frozen=True)
class VerifyConfig:
    """Every setting of `verify`, declared once (engine/settings.py): the CLI's options are built from it."""

    backend: str = flag("torch", "torch for a run directory; onnxruntime/tensorrt for an export directory.",
                        choices=("torch", "onnxruntime", "tensorrt"))
    judge: str = flag(zoo.DEFAULT_JUDGE, "The network that grades forgetting (never in a loss); or an identity "
                      "network (dlib-resnet-v1, arcface-mbf, edgeface-s, arcface-ir-se50:PATH.pth).")
    require: str = flag("forgotten", "The verdict level that sets the exit code: forgotten at w_u, or also robust "
                        "to re-inversion.", choices=LEVELS)
    attackers: str = flag("all", "Re-inversion attackers, joined by commas: an identity network's name "
                          "(dlib-resnet-v1, arcface-mbf, edgeface-s; train: the run's own) inverts with pixel MSE + "
                          "perceptual + that network's identity distance; pixel: without an identity term. all: "
                          "each network and pixel (the level robust needs all).")
    attack_starts: int = flag(AttackConfig.starts, "Re-inversion attacks: starts from the prior per identity and "
                              "attacker.")
    attack_steps: int = flag(AttackConfig.steps, "Re-inversion attacks: Adam steps.")
    attack_precision: str = flag(DEFAULT_PRECISION, "Networks' passes during the attack (docs/performance.md).",
                                 choices=("bf16", "fp32"))
    no_reinversion: bool = flag(False, "Skip the re-inversion attack (level robust is then not measured).",
                                is_flag=True)
    n_preserve: int = flag(256, "Random latents for preservation.")
    device: str = flag("cpu", "Generators and attackers: cpu or cuda; the SFace judge runs on ONNX Runtime's CPU "
                       "provider whatever it is.", shown="cuda when present")

    def attack(self) -> AttackConfig:
        return AttackConfig(starts=self.attack_starts, steps=self.attack_steps, precision=self.attack_precision)

    def validate(self) -> None:
        """Everything cheap, before any model is loaded."""
        if self.n_preserve < 2:
            raise GuideEngineError(f"--n-preserve {self.n_preserve}: needs at least 2")
        if self.require not in LEVELS:
            raise GuideEngineError(f"--require {self.require}: choose {' or '.join(LEVELS)}")
        if self.require == "robust" and self.no_reinversion:
            raise GuideEngineError("--require robust needs the re-inversion attack; drop --no-reinversion")
        if self.attack_starts < 1 or self.attack_steps < 1:
            raise GuideEngineError("--attack-starts and --attack-steps must be at least 1")
        check_precision(self.attack_precision)


def verify_run(run: Path, cfg: VerifyConfig = VerifyConfig(), images: tuple[str, ...] = (),
               compare: tuple[Path, ...] = (), progress: bool = False) -> dict:
    """Grade the run or export directory `run` with the settings `cfg` => the report (also written beside it).
    `images`: photos the run forgot, for the attackers (default: the aligned crops it kept); `compare`: other runs
    on the same base, for the targets' collapse. An export's runner keeps its own device."""
    t_start = time.perf_counter()
    run = Path(run)
    cfg.validate()
    backend, judge, require, device = cfg.backend, cfg.judge, cfg.require, cfg.device
    n_preserve, reinversion, attack, attackers = cfg.n_preserve, not cfg.no_reinversion, cfg.attack(), cfg.attackers
    if backend == "torch":
        G_u = rundir.load_generator(run, device)
        base_name, verified = G_u.name, G_u.verified
        infer = lambda w: G_u.synthesize(w)  # noqa: E731
    else:
        from ..engine.backends import open_runner

        runner = open_runner(run, backend)
        base_name, verified = runner.manifest["generator"], runner.verified
        src = Path(runner.manifest["source"])
        G_u = rundir.load_generator(src, device) if src.is_dir() else None  # for the re-inversion attack
        if G_u is not None and G_u.verified["weights_sha256"] != verified["source_weights_sha256"]:
            G_u = None  # the source run moved on since the export: it cannot stand in for the artifact
        infer = lambda w: runner.infer(w).to(device)  # noqa: E731  (the runners answer on the CPU)
    if reinversion and G_u is None:
        raise GuideEngineError(f"{run}: the attack needs the unlearned PyTorch weights, and this export's source "
                               f"run is gone; give --no-reinversion (level robust is then not measured)")
    book = ledger.read(run)
    folders = (run,) if backend == "torch" else (run, Path(runner.manifest["source"]))  # where aligned.png may be
    train_name = rundir.read_manifest(run).get("identity_network", zoo.DEFAULT_IDENTITY)
    attackers = parse_attackers(attackers, train_name)
    if require == "robust" and attackers != all_attackers(train_name):
        raise GuideEngineError(f"--require robust needs every attacker ({','.join(all_attackers(train_name))}); "
                               f"give --attackers all")
    G_s = zoo.load_generator(base_name, device=device)
    base_sha = state_sha256(G_s)
    ledger.check_base(book, base_name, base_sha, run)
    def judged(net) -> metrics.Judged:  # a network with its calibration on the base generator
        return metrics.Judged(net, calibration.calibrate(G_s, net, base_sha))

    judge_net = zoo.load_judge(judge, device=device, face_crop=crop_of(G_s))
    jdg = judged(judge_net)
    # the training network first, then (for the attackers and the networks outside their losses) the zoo's others
    names = dict.fromkeys([train_name, *(zoo.identity_names() if reinversion else ())])
    nets = {name: judged(identity_network(name, G_s, base_sha, device)) for name in names}
    train = nets[train_name]
    looks = look_range(G_s, base_sha)
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
        t_attack = time.perf_counter()
        attacks = metrics.attack_figures(G_s, G_u, train, jdg, nets, [p for p, _, _ in photos], attack, attackers,
                                         [how for _, how, _ in photos], progress, w_u, r) if reinversion else None
        t_attack = time.perf_counter() - t_attack
        for i, entry in enumerate(book["identities"]):
            row, pics = metrics.identity_figures(G_s, infer, train, jdg, w_u[i:i + 1], r, views=views,
                                                 infer_view=G_u.synthesize if views else None)
            row = {"identity_hash": entry["identity_hash"], "key": entry.get("key"), "run": entry.get("run"), **row}
            row["unlearned_face"] = unlearned_face(looks, pics["x_un"])
            photo, target, own_photo = photos[i]
            if reinversion:
                found = attacks[i]
                row["attack"] = found["figures"]
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
                  "attack_networks": {name: metrics.network_info(j) for name, j in nets.items()},
                  "look_range": {"brightness": list(looks.brightness), "contrast": list(looks.contrast),
                                 "score_min": looks.score_min, "width": list(looks.width),
                                 "detected_frac": looks.detected_frac},
                  "licences": zoo.licence_notes([base_name, train.name, *nets]),
                  "identity": {key: v for key, v in rows[k].items() if key != "attack"},
                  "identities": rows, "n_identities": len(rows), "worst_identity": k,
                  "preservation": preservation, "thresholds": metrics.thresholds(train, jdg),
                  "levels": reports.verdict(rows, preservation, reinversion), "backend": backend, "required": require}
        if reinversion:
            report["attack"] = rows[k]["attack"]
        total = time.perf_counter() - t_start
        report["timings_s"] = {"total": round(total, 2), "per_identity": round(total / len(rows), 2),
                               "attacks": round(t_attack, 2) if reinversion else None}
        report["passed"] = bool(report["levels"][require])
        report["outcome"] = outcome(report)
        report["judged"] = {"backend": backend, "weights_sha256": verified["weights_sha256"],
                            "ledger_sha256": verified["ledger_sha256"], "base_sha256": base_sha,
                            "networks": {"train": {"name": train.name, "sha256": zoo.weights_sha256(train.name)},
                                         "judge": {"name": jdg.name, "sha256": zoo.weights_sha256(jdg.name)},
                                         "attackers": {n: zoo.weights_sha256(n) for n in nets}},
                            "engine_version": __version__}
        targets = [ledger.latents(book, G_s.latent_shape, "w_t")] + \
            [ledger.latents(ledger.read(Path(c)), G_s.latent_shape, "w_t") for c in compare]
        n_targets = sum(len(x) for x in targets)
        if n_targets > 1:  # several identities: do their targets collapse onto one face (UFO collapse)?
            report["target"] = {"collapse_sim": metrics.collapse_sim(G_s, judge_net, list(torch.cat(targets).split(1))),
                                "n_identities": n_targets, "network": judge_net.name}
    report = reports.write(run, report)  # signed with GUIDE_ENGINE_SIGNING_KEY set
    save_report_picture(report, pictures, random_faces, attack_images[k] if reinversion else None,
                        run / reports.REPORT_PNG)
    write_html(report, run)
    return report
