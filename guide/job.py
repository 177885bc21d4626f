"""`guide-engine unlearn` as a library function: the people to forget and one UnlearnConfig => a run directory
(engine/rundir.py says what it holds).

Several people in one run: each gets its own inversion (or seed), identity-checked UFO target and
adjacency samples; each iteration trains B of them (guide/unlearn.py), so an iteration costs the same
whatever their number, and the default iteration count grows with it (guide/config.py: default_iters).
One after another: `cfg.generator` may name a run directory. Its weights (checked against its manifest) are
where fine-tuning starts, its ledger is carried over, and the pretrained base generator stays the
reference for targets and preservation; the identities it forgot are trained again beside the new ones.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import torch

from ..engine import __version__, rundir
from ..engine.errors import GuideEngineError
from ..engine.files import PRIVATE, atomic_write, read_json, state_sha256, write_json
from ..engine.models import nvlabs, zoo
from . import cuda_graph, distributed, ledger
from .config import UnlearnConfig, resolve
from .history import read as read_history
from .identities import Source, ledger_entries, note
from .losses import feature_perceptual_name
from .networks import identity_network
from .target import NEIGHBOR_RADIUS_REL, latents_around, typical_radius
from .unlearn import TargetCache, pretrained_photos, run_unlearning


def check_request(out: Path, sources: tuple[Source, ...], cfg: UnlearnConfig, resume: bool) -> None:
    """Everything cheap, before any file is written or any model loaded."""
    if not sources:
        raise GuideEngineError("nothing to forget: give --seed, --seeds, --image or --images")
    cfg.validate()
    if out.exists() and not resume:
        raise GuideEngineError(f"--out {out} already exists; choose a new directory")
    parent = out.absolute().parent  # missing folders are made; the nearest existing one must take them
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise GuideEngineError(f"--out {out}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise GuideEngineError(f"--out {out}: cannot write in {parent} (read-only or not yours)")
    if resume and not rundir.partial(out).is_dir():
        done = " (it is complete; nothing to resume)" if rundir.is_run(out) else ""
        raise GuideEngineError(f"--resume: no interrupted run at {rundir.partial(out)}{done}")


def check_same_config(work: Path, cfg: UnlearnConfig) -> None:
    """--resume must continue the run it resumes: every resolved setting equal to what the interrupted run's
    config.json recorded (the device and --cuda-graph aside: where it runs, not what), else a one-line refusal
    naming the flag."""
    old = read_json(work / rundir.CONFIG)
    new = json.loads(json.dumps(dataclasses.asdict(cfg)))
    differ = [key for key, value in new.items()
              if key not in ("device", "cuda_graph") and key in old and old[key] != value]
    if differ:
        flags = list(dict.fromkeys(cfg.flag_of(key) for key in differ))
        what = "; ".join(f"{key} {old[key]!r} there, {new[key]!r} now" for key in differ)
        raise GuideEngineError(f"--resume: {', '.join(flags)} {'differs' if len(flags) == 1 else 'differ'} from the "
                               f"interrupted run ({what}); resume with the flags it was started with, or start a "
                               f"new --out")


def unlearn_job(out: Path, sources: tuple[Source, ...], cfg: UnlearnConfig = UnlearnConfig(), resume: bool = False,
                progress: bool = True, stop_after: int | None = None) -> Path:
    """Forget `sources` (guide/identities.py) with the settings `cfg` (guide/config.py) into the run directory
    `out`. `stop_after`: stop after that many iterations, leaving a
    resumable OUT.partial/ (tests)."""
    out = Path(out)
    check_request(out, sources, cfg, resume)
    from ..engine.faces import locate_face

    for src in sources:  # every photo readable, with its face found, before any work starts
        if src.image is not None:
            locate_face(src.image, face=src.face)
    device = cfg.device
    if distributed.init_from_env(device):  # under torchrun: one device per rank, rank 0 speaks and writes
        if device.startswith("cuda"):
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            device = f"cuda:{local}"
        progress = progress and distributed.is_writer()
    cfg = dataclasses.replace(cfg, device=device)
    if not distributed.is_writer():
        return _unlearn(out, rundir.partial(out), sources, cfg, resume, progress, stop_after)
    with rundir.owned(out, resume) as work:
        return _unlearn(out, work, sources, cfg, resume, progress, stop_after)


def _unlearn(out: Path, work: Path, sources: tuple[Source, ...], cfg: UnlearnConfig, resume: bool, progress: bool,
             stop_after: int | None) -> Path:
    from ..engine.faces import load_face

    device = cfg.device
    continued = Path(cfg.generator) if Path(cfg.generator).is_dir() else None
    base_name, init, init_sha = rundir.load_continued(continued) if continued else (cfg.generator, None, None)
    old = ledger.read(continued) if continued else None
    G_s = zoo.load_generator(base_name, device=device)
    if cfg.cuda_graph and (why := cuda_graph.refusal_at_run(device, not TargetCache.usable(G_s),
                                                             distributed.active())):
        raise GuideEngineError(f"--cuda-graph: {why}")  # before anything is written into the run directory
    base_sha = state_sha256(G_s)
    if old is not None:
        ledger.check_base(old, base_name, base_sha, continued)
    id_net = identity_network(cfg.identity, G_s, base_sha, device)
    for line in zoo.licence_notes([base_name, cfg.identity]):
        note(line, True)
    perceptual, perceptual_name = None, feature_perceptual_name(id_net)
    if cfg.lpips_vgg is not None:
        from ..engine.models.lpips_vgg import LPIPSVGG

        perceptual = LPIPSVGG(cfg.lpips_vgg).to(device)
        perceptual_name = f"lpips-vgg (LPIPS v0.1 on VGG16 weights {perceptual.path})"
    forgotten_before = [e["key"] for e in (old or {}).get("identities", [])]
    new = [s for s in sources if s.key() not in forgotten_before]
    for s in sources:
        if s not in new:
            note(f"{s.describe()}: already forgotten by {continued} (its ledger); skipped", progress)
    if not new:
        raise GuideEngineError(f"nothing new to forget: every identity given is already in {continued}'s ledger")
    n_before = len(forgotten_before)

    # the training network's strangers (guide/calibration.py): how close an inversion came, and the margins
    strangers = None
    if cfg.robust is not None or cfg.push_past or any(s.image for s in new):
        from .calibration import calibrate

        strangers = calibrate(G_s, id_net, base_sha)
    cfg = resolve(cfg, base=base_name, device=device, radius=typical_radius(G_s), n_identities=n_before + len(new),
                  perceptual=perceptual_name, strangers=strangers)

    t0 = time.perf_counter()
    if distributed.rank() > 0:  # rank 0 chooses the identities and targets (inversion included); the others wait
        book, photos = None, [None] * len(new)
    elif resume and (work / rundir.LEDGER).is_file():  # identities and targets were chosen before the interruption
        book = read_json(work / rundir.LEDGER)
        if [e["key"] for e in book["identities"][n_before:]] != [s.key() for s in new]:
            raise GuideEngineError(f"--resume: {work} was started for other identities; give the same ones")
        photos = [load_face(s.image, G_s, face=s.face).image.to(device) if s.image else None for s in new]
    else:
        entries, photos = ledger_entries(G_s, id_net, new, cfg, n_before, out.name,
                                         strangers if any(s.image for s in new) else None, progress)
        book = {"base_generator": base_name, "base_sha256": base_sha, "identity_network": cfg.identity,
                "radius_r": cfg.radius, "target_distance_d": cfg.target_distance,
                "target_distance_rel": cfg.target_distance_rel, "identity_distance_name": id_net.distance_name,
                "identities": (old or {}).get("identities", []) + entries}
    book = distributed.broadcast(book)
    t_invert = time.perf_counter() - t0

    shape = G_s.latent_shape
    w_u, w_t = ledger.latents(book, shape).to(device), ledger.latents(book, shape, "w_t").to(device)
    attacked = None  # what the robust mode's attackers hold, rendered only for them
    if cfg.robust is not None:  # per identity: its photo, or what G_s drew at w_u
        attacked = torch.cat([p if p is not None else pretrained_photos(G_s, w_u[i:i + 1], cfg.seed)
                              for i, p in enumerate([None] * n_before + photos)])
    if distributed.is_writer():
        if resume and (work / rundir.CONFIG).is_file():
            check_same_config(work, cfg)
        keep_aligned_photos(book, work, continued, photos, n_before)
        write_json(work / rundir.LEDGER, book, private=True)  # w_u: with the pretrained weights, the person's face
        write_json(work / rundir.CONFIG, {**dataclasses.asdict(cfg), "job": {
            "sources": [dataclasses.asdict(s) for s in new], "continued_from": str(continued) if continued else None,
            "identities_trained": len(w_u), "ranks": distributed.world()}})
    distributed.barrier()
    t1 = time.perf_counter()
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    G_u, history = run_unlearning(G_s, id_net, w_u, w_t, cfg, checkpoint=work / rundir.CHECKPOINT, resume=resume,
                                  progress=progress, stop_after=stop_after, perceptual=perceptual,
                                  photo=attacked, init=init, history_csv=work / rundir.HISTORY)
    t_unlearn = time.perf_counter() - t1
    if (stop_after is not None and stop_after < cfg.iters) or not distributed.is_writer():
        return work  # interrupted on purpose (tests): resumable; or a rank that does not write
    # a resumed run: the iterations before the interruption count too, at the seconds history.csv kept for them
    before = [float(r["seconds"]) for r in read_history(work / rundir.HISTORY)[:-len(history)]] \
        if resume and history else []
    t_unlearn += sum(before)
    write_run(work, G_s, G_u, book, cfg, history, n_before, continued, init_sha,
              timings={"invert": round(t_invert, 3), "unlearn": round(t_unlearn, 3),
                       "per_iter": round(t_unlearn / max(1, len(history) + len(before)), 5)})
    return rundir.publish(work, out)


def write_run(work: Path, G_s, G_u, book: dict, cfg: UnlearnConfig, history: list, n_before: int,
              continued: Path | None, init_sha: str | None, timings: dict) -> None:
    """The unlearned weights, the manifest (with the SHA-256 of every file it vouches for) and the pictures."""
    from safetensors.torch import save_file

    atomic_write(work / rundir.WEIGHTS,
                 lambda tmp: save_file({k: v.contiguous() for k, v in G_u.state_dict().items()}, str(tmp)))
    if cfg.generator.startswith(nvlabs.PREFIX):  # also in the user's own format, for their NVlabs tools
        nvlabs.save_pickle(G_u, work / rundir.PICKLE)
    device = cfg.device
    rundir.write_manifest(work, {
        "engine_version": __version__, "generator": cfg.generator, "identity_network": cfg.identity,
        "licences": {name: zoo.REGISTRY[name].licence for name in (cfg.generator, *zoo.ensemble_parts(cfg.identity))
                     if name in zoo.REGISTRY},
        "base_sha256": book["base_sha256"], "result_sha256": state_sha256(G_u),
        "identities": [e["identity_hash"] for e in book["identities"]],
        "continued_from": None if continued is None else {"run": str(continued), "result_sha256": init_sha},
        "timings_s": timings,
        "peak_cuda_memory_mib": round(torch.cuda.max_memory_allocated(device) / 2**20)
        if torch.device(device).type == "cuda" else None,
        "final_losses": history[-1] if history else None, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        aligned_files(book))
    w_u = ledger.latents(book, G_s.latent_shape).to(device)
    before_after(G_s, G_u, w_u[n_before:], work / rundir.BEFORE_AFTER, cfg.radius)
    if (work / rundir.HISTORY).is_file():
        from .history import plot

        plot(work / rundir.HISTORY, work / rundir.LOSSES)


def aligned_files(book: dict) -> list[str]:
    """The aligned crops a run keeps, one per photo identity of its ledger."""
    return [e["latent"]["aligned"] for e in book["identities"] if e.get("latent", {}).get("aligned")]


def keep_aligned_photos(book: dict, work: Path, continued: Path | None, photos: list, n_before: int) -> None:
    """Write each new photo identity's aligned crop (what inversion saw) into the run, and copy those of the run
    it continues: `verify` attacks with them when the photo is not given again."""
    from ..engine.images import save_png

    for i, e in enumerate(book["identities"]):
        name = e.get("latent", {}).get("aligned")
        if not name:
            continue
        if i >= n_before:
            save_png(photos[i - n_before], work / name, private=True)  # the person's face: personal data
        elif continued is not None and (continued / name).is_file():
            shutil.copyfile(continued / name, work / name)
            os.chmod(work / name, PRIVATE)


@torch.no_grad()
def before_after(G_s, G_u, w_u: torch.Tensor, path: Path, r: float, n: int = 4) -> None:
    """Rows: pretrained, unlearned. Columns: each w_u (up to 8); for one identity, n neighbours
    (NEIGHBOR_RADIUS_REL r away); n random latents."""
    from ..engine.images import save_grid

    rng = torch.Generator().manual_seed(12345)
    near = latents_around(w_u[:1], n, NEIGHBOR_RADIUS_REL * r, rng) if len(w_u) == 1 else w_u[:0]
    w = torch.cat([w_u[:8], near, G_s.sample_latents(n, rng)])
    images = torch.cat([G_s.synthesize(w), G_u.synthesize(w)])
    save_grid(images, path, nrow=len(w), scale=2, row_labels=["pretrained", "unlearned"])
