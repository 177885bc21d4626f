"""`guide-engine verify` as a library function: a run or export directory => report.json, report.png.
Exit semantics live in the CLI: passed => 0, failed => 1 (CheckFailed), usage errors => 2."""
from __future__ import annotations

from pathlib import Path

import torch

from guide_engine.engine.models import zoo
from guide_engine.engine.errors import GuideEngineError
from guide_engine.engine.sampling import load_generator_source, read_json
from guide_engine.guide import metrics
from guide_engine.guide.job import state_sha256
from guide_engine.guide.target import typical_radius


def _identity_latent(run: Path, shape: tuple[int, ...], key: str = "w_u") -> torch.Tensor:
    """identity.json stores latents flattened => (1, *shape)."""
    ident = run / "identity.json"
    if not ident.is_file():
        raise GuideEngineError(f"{run}: no identity.json; give a directory made by `guide-engine unlearn` or `export`")
    return torch.tensor(read_json(ident)[key], dtype=torch.float32).view(1, *shape)


def verify_run(run: Path, backend: str = "torch", n_preserve: int = 256, compare: tuple[Path, ...] = (),
               reinversion: bool = True) -> dict:
    run = Path(run)
    if n_preserve < 2:
        raise GuideEngineError(f"--n-preserve {n_preserve}: needs at least 2")
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
    G_s = zoo.load_generator(base_name)
    id_net = zoo.load_identity(read_json(run / "manifest.json").get("identity_network", "dlib-resnet-v1")
                               if (run / "manifest.json").is_file() else "dlib-resnet-v1")
    w_u = _identity_latent(run, G_s.latent_shape)
    calib = metrics.calibrate(G_s, id_net, state_sha256(G_s))
    attack = metrics.reinversion_attack(G_s, G_u, id_net) if reinversion and G_u is not None else None
    views = G_s.eval_views() if backend == "torch" and hasattr(G_s, "eval_views") else None
    report, images = metrics.evaluate(G_s, infer, id_net, w_u, calib, typical_radius(G_s), n_preserve, reinversion=attack,
                                      views=views, infer_view=G_u.synthesize if views else None)
    report["backend"] = backend
    if compare:
        targets = [_identity_latent(Path(r), G_s.latent_shape, "w_t") for r in (run, *compare)]
        report["target"] = {"collapse_sim": metrics.collapse_sim(G_s, id_net, targets), "n_identities": len(targets)}
    from guide_engine.engine.images import save_grid

    zoo.write_json(run / "report.json", report)
    n = len(images["sims"])
    captions = [f"{s:.2f}" for s in images["sims"]] * 2
    save_grid(torch.cat([images["pre"], images["un"]]), run / "report.png", nrow=n, scale=2,
              row_labels=["pretrained", "unlearned"], captions=captions)
    return report


def summary_table(report: dict) -> str:
    i, p, t = report["identity"], report["preservation"], report["thresholds"]
    fmt = lambda v: "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))  # noqa: E731
    rows = [("identity.id_sim (cos, lower=better)", i["id_sim"]), ("identity.id_sim_centred", i["id_sim_centred"]),
            ("identity.id_dist", i["id_dist"]), (f"identity.forgotten (dist >= {t['forgotten_if_id_dist_at_least']:.3f})", i["forgotten"]),
            (f"identity.neighbors_id_sim (K={i['neighbors_k']})", i["neighbors_id_sim"]),
            ("identity.neighbors_forgotten_frac", i["neighbors_forgotten_frac"]),
            ("identity.reinversion_id_sim", i.get("reinversion_id_sim")),
            ("  same attack on the pretrained model", i.get("reinversion_id_sim_pretrained")),
            (f"preservation.same_person_frac (dist < {t['kept_if_dist_below']:.3f})", p["same_person_frac"]),
            ("preservation.id_sim_mean", p["id_sim_mean"]), ("preservation.pixel_l1", p["pixel_l1"]),
            ("preservation.fd_embedding (not FID)", p["fd_embedding"])]
    if "target" in report:
        rows.append(("target.collapse_sim", report["target"]["collapse_sim"]))
    rows.append(("PASSED" if report["passed"] else "FAILED", report["passed"]))
    return "\n".join(f"{k:<52} {fmt(v)}" for k, v in rows)
