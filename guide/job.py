"""`guide-engine unlearn` as a library function: photo or seed => a run directory.

RUN_DIR/ generator.safetensors  the unlearned weights (full state dict)
         config.json            the resolved UnlearnConfig
         identity.json          w_u, w_t and w_avg norms, r, d, how w_u was obtained (never the photo)
         manifest.json          model names, SHA-256 of base and result, engine version, timings
         before_after.png       pretrained vs unlearned at w_u, neighbours and random latents
Work happens in RUN_DIR.partial/ (which also holds the checkpoint for --resume) and is renamed to
RUN_DIR at the end: a run directory is never half-written.
"""
from __future__ import annotations

import dataclasses
import hashlib
import shutil
import time
from pathlib import Path

import torch

from guide_engine.engine import __version__
from guide_engine.engine.models import nvlabs, zoo
from guide_engine.engine.errors import GuideEngineError
from guide_engine.guide.losses import feature_perceptual_name
from guide_engine.guide.target import (NEIGHBOR_RADIUS_REL, identity_distances, latents_around, resolve_distance,
                                       search_ufo_target, typical_radius, ufo_target)
from guide_engine.guide.robust import RobustConfig
from guide_engine.guide.unlearn import UnlearnConfig, run_unlearning

DEFAULT_D_REL = 1.0  # d = r: the target sits on the prior's typical shell, opposite the identity
ALPHA_PER_D = 15 / 30  # the official alpha_max / d for EG3D (15 / 30), kept as a ratio
TARGET_SEARCH = 64  # identity-checked UFO: candidates on the far side (0 = the formula alone)
TARGET_ANGLE_DEG = 30.0  # ... at most this far from the formula's direction


def state_sha256(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def unlearn_job(out: Path, image: str | None = None, seed: int | None = None, *, iters: int = 400, lr: float = 1e-4,
                target: str = "extra", target_search: int = TARGET_SEARCH, target_angle: float = TARGET_ANGLE_DEG,
                target_distance: float | None = None, target_distance_rel: float | None = None,
                alpha_max_rel: float | None = None, losses: str = "local,adj,glob", generator: str = "digiface-dcgan64",
                identity: str = "dlib-resnet-v1", lpips_vgg: str | None = None, device: str = "cpu",
                run_seed: int = 0, invert_steps: int = 300,
                checkpoint_every: int = 100, reference_loop: bool = False, micro_batch: int = 0, resume: bool = False,
                robust: RobustConfig | None = None, progress: bool = True, stop_after: int | None = None) -> Path:
    if (image is None) == (seed is None):
        raise GuideEngineError("give exactly one of --image PATH or --seed N")
    loss_names = tuple(s.strip() for s in losses.split(",") if s.strip())
    # Validate everything cheap before any file is written.
    UnlearnConfig(iters=iters, lr=lr, losses=loss_names, micro_batch=micro_batch, reference_loop=reference_loop,
                  robust=robust).validate()
    if target_search < 0 or not 0 <= target_angle <= 90:
        raise GuideEngineError("--target-search must be >= 0 and --target-angle within [0, 90] degrees")
    out = Path(out)
    if out.exists() and not resume:
        raise GuideEngineError(f"--out {out} already exists; choose a new directory")
    partial = out.with_name(out.name + ".partial")
    if resume and not partial.is_dir():
        raise GuideEngineError(f"--resume: no interrupted run at {partial}")
    G_s = zoo.load_generator(generator, device=device)
    id_net = zoo.load_identity(identity, device=device)
    perceptual, perceptual_name = None, feature_perceptual_name(id_net)
    if lpips_vgg is not None:
        from guide_engine.engine.models.lpips_vgg import LPIPSVGG

        perceptual = LPIPSVGG(lpips_vgg).to(device)
        perceptual_name = f"lpips-vgg (LPIPS v0.1 on VGG16 weights {perceptual.path})"
    photo = None
    if image is not None:
        from guide_engine.engine.images import load_image

        photo = load_image(image, G_s.resolution)

    t0 = time.perf_counter()
    if photo is not None:
        from guide_engine.guide.invert import invert

        w_u, rec_err = invert(G_s, id_net, photo, steps=invert_steps, progress=progress)
        how = {"source": "inversion", "steps": invert_steps, "reconstruction_mse": rec_err,
               "photo_sha256": hashlib.sha256(Path(image).read_bytes()).hexdigest()}
    else:
        w_u = G_s.latents_for_seeds([seed]).to(device)
        how = {"source": "seed", "seed": seed}
    t_invert = time.perf_counter() - t0

    r = typical_radius(G_s)
    d = resolve_distance(r, target_distance, target_distance_rel, DEFAULT_D_REL)
    a_rel = ALPHA_PER_D * d / r if alpha_max_rel is None else alpha_max_rel
    w_avg = G_s.average_latent()
    if target == "extra":
        w_t, search = search_ufo_target(G_s, id_net, w_u, w_avg, d, target_search, target_angle,
                                        torch.Generator().manual_seed(run_seed))
    else:
        w_t = ufo_target(w_u, w_avg, d, target)
        search = {"target_id_dist": identity_distances(G_s, id_net, w_u, w_t).item()}
    if robust is not None and robust.margin is None:  # a quantile of the strangers' training-network distance
        from guide_engine.guide.metrics import calibrate, quantile

        calib = calibrate(G_s, id_net, state_sha256(G_s))
        robust = dataclasses.replace(robust, margin=quantile(calib, robust.margin_quantile))
    cfg = UnlearnConfig(generator=generator, identity=identity, iters=iters, lr=lr, target=target,
                        target_distance=d, target_distance_rel=d / r, radius=r, alpha_max=a_rel * r,
                        alpha_max_rel=a_rel, target_search=target_search if target == "extra" else 0,
                        target_angle=target_angle, losses=loss_names, seed=run_seed, device=device,
                        checkpoint_every=checkpoint_every, reference_loop=reference_loop, micro_batch=micro_batch,
                        perceptual=perceptual_name, robust=robust)
    partial.mkdir(parents=True, exist_ok=True)
    zoo.write_json(partial / "config.json", dataclasses.asdict(cfg))
    t1 = time.perf_counter()
    G_u, history = run_unlearning(G_s, id_net, w_u, w_t, cfg, checkpoint=partial / "checkpoint.pt", resume=resume,
                                  progress=progress, stop_after=stop_after, perceptual=perceptual,
                                  photo=None if photo is None else photo.to(device))
    t_unlearn = time.perf_counter() - t1
    if stop_after is not None and stop_after < iters:
        return partial  # interrupted on purpose (tests): resumable

    from safetensors.torch import save_file

    zoo.atomic_write(partial / "generator.safetensors",
                     lambda tmp: save_file({k: v.contiguous() for k, v in G_u.state_dict().items()}, str(tmp)))
    if generator.startswith(nvlabs.PREFIX):  # also in the user's own format, for their NVlabs tools
        nvlabs.save_pickle(G_u, partial / "generator.pkl")
    zoo.write_json(partial / "identity.json", {
        "w_u": w_u.flatten().tolist(), "w_t": w_t.flatten().tolist(),
        "norm_w_u": (w_u - w_avg).norm().item(), "norm_w_t": (w_t - w_avg).norm().item(), "norm_w_avg": w_avg.norm().item(),
        "radius_r": r, "target_distance_d": d, "target_distance_rel": d / r, "latent": how,
        "target_id_dist": search["target_id_dist"], "target_search": search,
        "identity_distance_name": id_net.distance_name})
    zoo.write_json(partial / "manifest.json", {
        "engine_version": __version__, "generator": generator, "identity_network": identity,
        "base_sha256": state_sha256(G_s), "result_sha256": state_sha256(G_u),
        "identity_hash": hashlib.sha256(w_u.cpu().numpy().tobytes()).hexdigest(),
        "timings_s": {"invert": round(t_invert, 3), "unlearn": round(t_unlearn, 3),
                      "per_iter": round(t_unlearn / max(1, len(history)), 5)},
        "final_losses": history[-1] if history else None, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    before_after(G_s, G_u, w_u, partial / "before_after.png", r)
    (partial / "checkpoint.pt").unlink(missing_ok=True)
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return out


@torch.no_grad()
def before_after(G_s, G_u, w_u: torch.Tensor, path: Path, r: float, n: int = 4) -> None:
    """Rows: pretrained, unlearned. Columns: w_u, n neighbours (NEIGHBOR_RADIUS_REL r away), n random latents."""
    from guide_engine.engine.images import save_grid

    rng = torch.Generator().manual_seed(12345)
    w = torch.cat([w_u, latents_around(w_u, n, NEIGHBOR_RADIUS_REL * r, rng), G_s.sample_latents(n, rng)])
    images = torch.cat([G_s.synthesize(w), G_u.synthesize(w)])
    save_grid(images, path, nrow=len(w), scale=2, row_labels=["pretrained", "unlearned"])
