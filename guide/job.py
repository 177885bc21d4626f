"""`guide-engine unlearn` as a library function: one frozen JobConfig => a run directory.

RUN_DIR/ generator.safetensors  the unlearned weights (full state dict)
         config.json            the job as given and the resolved UnlearnConfig
         identities.json        the ledger: every person this generator has forgotten (guide/ledger.py)
         manifest.json          model names, SHA-256 of base and result, engine version, timings
         before_after.png       pretrained vs unlearned at each w_u (up to 8), neighbours, random latents
Work happens in RUN_DIR.partial/ (which also holds the checkpoint for --resume and the ledger as soon as
the targets are chosen) and is renamed to RUN_DIR at the end: a run directory is never half-written.

Several people in one run: each gets its own inversion (or seed), identity-checked UFO target and
adjacency samples; each iteration trains B of them (guide/unlearn.py), so an iteration costs the same
whatever their number, and the default iteration count grows with it (`default_iters`).
One after another: `generator` may name a run directory. Its weights (checked against its manifest) are
where fine-tuning starts, its ledger is carried over, and the pretrained base generator stays the
reference for targets and preservation; the identities it forgot are trained again beside the new ones.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from guide_engine.engine import __version__
from guide_engine.engine.errors import GuideEngineError
from guide_engine.engine.models import nvlabs, zoo
from guide_engine.engine.files import read_json, state_sha256
from guide_engine.guide import distributed, ledger
from guide_engine.guide.losses import feature_perceptual_name
from guide_engine.guide.robust import RobustConfig
from guide_engine.guide.target import (NEIGHBOR_RADIUS_REL, identity_distances, latents_around, resolve_distance,
                                       search_ufo_target, typical_radius, ufo_target)
from guide_engine.guide.unlearn import ALL_LOSSES, UnlearnConfig, pretrained_photos, run_unlearning
from guide_engine.engine import files

DEFAULT_D_REL = 1.0  # d = r: the target sits on the prior's typical shell, opposite the identity
ALPHA_PER_D = 15 / 30  # the official alpha_max / d for EG3D (15 / 30), kept as a ratio
TARGET_SEARCH = 64  # identity-checked UFO: candidates on the far side (0 = the formula alone)
TARGET_ANGLE_DEG = 30.0  # ... at most this far from the formula's direction
DEFAULT_ITERS = 400  # one identity (official: 1000; see README)
PUSH_WEIGHT = 1.0  # --push-past: the term's weight, and its margin relative to the strangers' median distance
PUSH_MARGIN_REL = 1.85  # under the training network (dlib: 1.85 x 0.543 = 1.00, past every stranger pair's 0.81)
DEFAULT_PRECISION = "fp32"  # of the networks' passes in the loop, the inversion and the attack (README: measured)
UPDATES_PER_IDENTITY = 200  # with many: iterations in which each identity is drawn, on average (measured: README)


def default_iters(n_identities: int, per_iter: int) -> int:
    """One identity: DEFAULT_ITERS. More than fit in an iteration: enough that each is drawn
    UPDATES_PER_IDENTITY times on average, and never fewer than DEFAULT_ITERS."""
    if n_identities <= per_iter:
        return DEFAULT_ITERS
    return max(DEFAULT_ITERS, math.ceil(UPDATES_PER_IDENTITY * n_identities / per_iter))


@dataclass(frozen=True)
class Source:
    """One person to forget, as the user named them: a seed of the generator, or a photo."""

    seed: int | None = None
    image: str | None = None
    face: int | None = None  # which face of the photo (0 = the largest, the default)

    def describe(self) -> str:
        if self.image is None:
            return f"seed {self.seed}"
        return self.image + (f" (face {self.face})" if self.face else "")

    def key(self) -> str:
        """The ledger's key of this person (guide/ledger.py: source_key)."""
        if self.image is None:
            return ledger.source_key(seed=self.seed)
        return ledger.source_key(photo_sha256=hashlib.sha256(Path(self.image).read_bytes()).hexdigest(), face=self.face)


@dataclass(frozen=True)
class JobConfig:
    """Everything `unlearn` was asked to do; the CLI builds it, unlearn_job resolves it into an UnlearnConfig."""

    out: Path
    sources: tuple[Source, ...]
    generator: str = "digiface-dcgan64"  # a model name, nvlabs:PATH.pkl, or a run directory to continue from
    identity: str = "dlib-resnet-v1"
    lpips_vgg: str | None = None
    iters: int | None = None  # None: default_iters(number of identities trained, identities_per_iter)
    lr: float = 1e-4
    target: str = "extra"
    target_search: int = TARGET_SEARCH
    target_angle: float = TARGET_ANGLE_DEG
    target_distance: float | None = None
    target_distance_rel: float | None = None
    alpha_max_rel: float | None = None
    losses: tuple[str, ...] = ALL_LOSSES
    identities_per_iter: int = 4
    device: str = "cpu"
    run_seed: int = 0
    invert_steps: int = 300
    checkpoint_every: int = 100
    reference_loop: bool = False
    micro_batch: int = 0
    robust: RobustConfig | None = None
    push_past: bool = False  # add the push-past term (guide/losses.py), its margin resolved from the calibration
    precision: str = DEFAULT_PRECISION
    resume: bool = False

    def validate(self) -> None:
        """Everything cheap, before any file is written or any model loaded."""
        if not self.sources:
            raise GuideEngineError("nothing to forget: give --seed, --seeds, --image or --images")
        UnlearnConfig(iters=DEFAULT_ITERS if self.iters is None else self.iters, lr=self.lr, losses=self.losses,
                      micro_batch=self.micro_batch,
                      reference_loop=self.reference_loop, robust=self.robust,
                      identities_per_iter=self.identities_per_iter, precision=self.precision).validate()
        if self.target_search < 0 or not 0 <= self.target_angle <= 90:
            raise GuideEngineError("--target-search must be >= 0 and --target-angle within [0, 90] degrees")
        if self.out.exists() and not self.resume:
            raise GuideEngineError(f"--out {self.out} already exists; choose a new directory")
        parent = self.out.absolute().parent  # missing folders are made; the nearest existing one must take them
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise GuideEngineError(f"--out {self.out}: {parent} is a file, not a folder")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise GuideEngineError(f"--out {self.out}: cannot write in {parent} (read-only or not yours)")
        if self.resume and not partial_dir(self.out).is_dir():
            raise GuideEngineError(f"--resume: no interrupted run at {partial_dir(self.out)}")


def collect_sources(seeds: list[int], images: list[str], images_dir: str | None,
                    face: int | None = None) -> tuple[tuple[Source, ...], list[str]]:
    """The identities the CLI was given => (sources, each counted once; notes on the duplicates dropped).
    `images_dir`: every file in it is a photo of one person (dotfiles and folders are passed over); a
    file that is not an image is refused by name, before any work starts. `face`: which face of each photo."""
    from guide_engine.engine.faces import read_photo

    if face is not None and face < 0:
        raise GuideEngineError(f"--face {face}: 0 is the largest face, 1 the next, ...")
    paths = list(images)
    if images_dir is not None:
        folder = Path(images_dir)
        if not folder.is_dir():
            raise GuideEngineError(f"--images {folder}: not a directory")
        found = sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith("."))
        if not found:
            raise GuideEngineError(f"--images {folder}: no files in it")
        for f in found:
            read_photo(f, f"--images {folder}:")
        paths += [str(f) for f in found]
    sources, seen, notes = [], {}, []
    for src in [Source(seed=s) for s in seeds] + [Source(image=p, face=face or None) for p in paths]:
        if src.image is not None and not Path(src.image).is_file():
            raise GuideEngineError(f"--image {src.image}: no such file")
        key = src.key()
        if key in seen:
            notes.append(f"{src.describe()}: the same identity as {seen[key].describe()}; counted once")
            continue
        seen[key] = src
        sources.append(src)
    return tuple(sources), notes


def partial_dir(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def note(msg: str, progress: bool) -> None:
    if progress:
        print(msg, file=sys.stderr)


def continued_run(run: Path) -> tuple[str, dict, dict, str]:
    """A run directory to continue from => (its base generator's name, its weights, its ledger, their SHA-256).
    The weights must be the ones its manifest records."""
    from safetensors.torch import load_file

    manifest, weights = run / "manifest.json", run / "generator.safetensors"
    if not manifest.is_file() or not weights.is_file():
        raise GuideEngineError(f"--generator {run}: not an unlearn run directory (needs manifest.json and "
                               f"generator.safetensors)")
    m = read_json(manifest)
    base = zoo.load_generator(m["generator"])
    try:
        state = load_file(str(weights))
        base.load_state_dict(state)
    except Exception as e:
        raise GuideEngineError(f"{weights}: cannot load ({type(e).__name__}); the file is damaged or from another model") from None
    got = state_sha256(base)
    if got != m.get("result_sha256"):
        raise GuideEngineError(f"{weights}: SHA-256 of the weights {got[:16]}... is not the {str(m.get('result_sha256'))[:16]}... "
                               f"its manifest records; the run directory was changed after it was written")
    return m["generator"], state, ledger.read(run), got


def find_identity(G_s, id_net, src: Source, invert_steps: int, progress: bool, precision: str = "fp32",
                  calib: dict | None = None) -> tuple[torch.Tensor, dict, torch.Tensor | None]:
    """=> (w_u (1, *S), how it was obtained, the aligned photo (1, 3, H, W) or None for a seed).
    A photo: its face found and aligned to the generator's crop (engine/faces.py), inverted, and how close the
    inversion came said (against `calib`, the training network's strangers: guide/metrics.py)."""
    if src.image is None:
        return G_s.latents_for_seeds([src.seed]).to(G_s.average_latent().device), {"source": "seed", "seed": src.seed}, None
    from guide_engine.engine.faces import describe_faces, load_face
    from guide_engine.guide.invert import invert

    aligned = load_face(src.image, G_s, face=src.face)
    if len(aligned.faces) > 1:
        note(f"{src.image}: {len(aligned.faces)} faces found, #{aligned.chosen} used (--face K for another): "
             f"{describe_faces(aligned.faces)}", progress)
    photo = aligned.image.to(G_s.average_latent().device)
    w_u, rec_err = invert(G_s, id_net, photo, steps=invert_steps, progress=progress, precision=precision)
    how = {"source": "inversion", "steps": invert_steps, "reconstruction_mse": rec_err, "precision": precision,
           "photo_sha256": hashlib.sha256(Path(src.image).read_bytes()).hexdigest(), "face": aligned.record(),
           "detect_align_s": round(sum(aligned.seconds.values()), 4)}
    if calib is not None:  # can this generator draw this person? (the training network's view; verify asks the judge)
        with torch.no_grad():
            d = id_net.distance(id_net.descriptors(G_s.synthesize(w_u)), id_net.descriptors(photo)).item()
        line = calib["strangers_dist_p1"]
        how.update(inversion_id_dist=d, same_person_line=line)
        note(f"{src.describe()}: the inversion came to pixel MSE {rec_err:.4f} and {id_net.name} distance {d:.3f} from "
             f"the aligned photo (same person below {line:.3f}, the strangers' p1; strangers' median "
             f"{calib['strangers_dist_median']:.3f})", progress)
        if d >= line:
            note(f"warning: {src.describe()}: the generator's closest face is farther from the photo than the "
                 f"same-person line: it may never have drawn this person; `verify` will say (outcome 'not drawn')", True)
    return w_u, how, photo


FLAGS = {"seed": "--run-seed", "perceptual": "--lpips-vgg", "fused_adam": "--reference-loop", "push_weight": "--push-past",
         "push_margin": "--push-past", "alpha_max": "--alpha-max-rel", "radius": "--generator",
         "target_distance": "--target-distance / --target-distance-rel", "target_distance_rel":
         "--target-distance / --target-distance-rel"}  # the flag behind each resolved setting (else --the-name)


def check_same_config(partial: Path, cfg: UnlearnConfig) -> None:
    """--resume must continue the run it resumes: every resolved setting equal to what the interrupted run's
    config.json recorded (the device aside), else a one-line refusal naming the flag."""
    import json

    old = read_json(partial / "config.json")
    new = json.loads(json.dumps(dataclasses.asdict(cfg)))
    for key, value in new.items():
        if key != "device" and key in old and old[key] != value:
            flag = FLAGS.get(key, f"--{key.replace('_', '-')}")
            raise GuideEngineError(f"--resume: {flag} differs from the interrupted run ({key} {old[key]!r} there, "
                                   f"{value!r} now); resume with the flags it was started with, or start a new --out")


@contextlib.contextmanager
def owned(out: Path, partial: Path, resume: bool):
    """The run directory's one writer: an exclusive lock on OUT.partial/ while the job works. A second `unlearn`
    into the same --out is refused in one line; the folders this job made (the partial one, missing parents) are
    removed again when the job fails before writing into them."""
    import fcntl

    made = [p for p in (partial, *partial.absolute().parents) if not p.exists()]  # deepest first
    partial.mkdir(parents=True, exist_ok=True)
    fd = os.open(partial, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise GuideEngineError(f"--out {out}: another `unlearn` is writing it ({partial.name}/); wait for it to "
                               f"finish, or choose another --out") from None
    done = False
    try:
        if out.exists() and not resume:  # finished by another job between our first check and the lock
            raise GuideEngineError(f"--out {out} already exists; choose a new directory")
        yield
        done = True
    finally:
        if not done:  # what this job made and left empty goes again: a refused run writes nothing
            for folder in made:
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
        os.close(fd)


def unlearn_job(job: JobConfig, progress: bool = True, stop_after: int | None = None) -> Path:
    job.validate()
    from guide_engine.engine.faces import locate_face

    for src in job.sources:  # every photo readable, with its face found, before any work starts
        if src.image is not None:
            locate_face(src.image, face=src.face)
    if distributed.init_from_env(job.device):  # under torchrun: one device per rank, rank 0 speaks and writes
        if job.device.startswith("cuda"):
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            job = dataclasses.replace(job, device=f"cuda:{local}")
        progress = progress and distributed.is_writer()
    if not distributed.is_writer():
        return _unlearn_job(job, progress, stop_after)
    with owned(Path(job.out), partial_dir(Path(job.out)), job.resume):
        return _unlearn_job(job, progress, stop_after)


def _unlearn_job(job: JobConfig, progress: bool, stop_after: int | None) -> Path:
    from guide_engine.engine.faces import load_face

    out, partial, device = Path(job.out), partial_dir(Path(job.out)), job.device
    continued = Path(job.generator) if Path(job.generator).is_dir() else None
    base_name, init, old, init_sha = continued_run(continued) if continued else (job.generator, None, None, None)
    G_s = zoo.load_generator(base_name, device=device)
    base_sha = state_sha256(G_s)
    if old is not None:
        ledger.check_base(old, base_name, base_sha, continued)
    id_net = zoo.load_identity(job.identity, device=device)
    perceptual, perceptual_name = None, feature_perceptual_name(id_net)
    if job.lpips_vgg is not None:
        from guide_engine.engine.models.lpips_vgg import LPIPSVGG

        perceptual = LPIPSVGG(job.lpips_vgg).to(device)
        perceptual_name = f"lpips-vgg (LPIPS v0.1 on VGG16 weights {perceptual.path})"
    photo_keys = {src: src.key() for src in job.sources}
    forgotten_before = {e["key"] for e in (old or {}).get("identities", [])}
    new = [s for s in job.sources if photo_keys[s] not in forgotten_before]
    for s in job.sources:
        if s not in new:
            note(f"{s.describe()}: already forgotten by {continued} (its ledger); skipped", progress)
    if not new:
        raise GuideEngineError(f"nothing new to forget: every identity given is already in {continued}'s ledger")

    r = typical_radius(G_s)
    d = resolve_distance(r, job.target_distance, job.target_distance_rel, DEFAULT_D_REL)
    a_rel = ALPHA_PER_D * d / r if job.alpha_max_rel is None else job.alpha_max_rel
    w_avg = G_s.average_latent()
    t0 = time.perf_counter()
    if distributed.rank() > 0:  # rank 0 chooses the identities and targets (inversion included); the others wait
        book, photos = None, [None] * len(new)
    elif job.resume and (partial / ledger.LEDGER).is_file():  # identities and targets were chosen before the interruption
        book = read_json(partial / ledger.LEDGER)
        if [e["key"] for e in book["identities"][len(forgotten_before):]] != [photo_keys[s] for s in new]:
            raise GuideEngineError(f"--resume: {partial} was started for other identities; give the same ones")
        photos = [load_face(s.image, G_s, face=s.face).image.to(device) if s.image else None for s in new]
    else:
        entries, photos = [], []
        calib = None
        if any(s.image for s in new):  # the training network's strangers: how close is an inversion?
            from guide_engine.guide.metrics import calibrate

            calib = calibrate(G_s, id_net, base_sha)
        for i, src in enumerate(new):
            w_u, how, photo = find_identity(G_s, id_net, src, job.invert_steps, progress, job.precision, calib)
            if photo is not None:
                how["aligned"] = ledger.aligned_name(len(forgotten_before) + i)
            if job.target == "extra":
                w_t, search = search_ufo_target(G_s, id_net, w_u, w_avg, d, job.target_search, job.target_angle,
                                                torch.Generator().manual_seed(job.run_seed + i))
            else:
                w_t = ufo_target(w_u, w_avg, d, job.target)
                search = {"target_id_dist": identity_distances(G_s, id_net, w_u, w_t).item()}
            entries.append({"identity_hash": ledger.latent_hash(w_u), "key": photo_keys[src], "run": out.name,
                            "added": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                            "w_u": w_u.flatten().tolist(), "w_t": w_t.flatten().tolist(),
                            "norm_w_u": (w_u - w_avg).norm().item(), "norm_w_t": (w_t - w_avg).norm().item(),
                            "latent": how, "target_id_dist": search["target_id_dist"], "target_search": search})
            photos.append(photo)
        book = {"base_generator": base_name, "base_sha256": base_sha, "identity_network": job.identity,
                "radius_r": r, "target_distance_d": d, "target_distance_rel": d / r,
                "identity_distance_name": id_net.distance_name,
                "identities": (old or {}).get("identities", []) + entries}
    book = distributed.broadcast(book)
    t_invert = time.perf_counter() - t0

    shape = G_s.latent_shape
    w_u, w_t = ledger.latents(book, shape).to(device), ledger.latents(book, shape, "w_t").to(device)
    n_before = len(book["identities"]) - len(new)
    attacked = None  # what the robust mode's attackers hold, rendered only for them
    if job.robust is not None:  # per identity: its photo, or what G_s drew at w_u
        attacked = torch.cat([p if p is not None else pretrained_photos(G_s, w_u[i:i + 1], job.run_seed)
                              for i, p in enumerate([None] * n_before + photos)])
    robust, push_margin = job.robust, 0.0
    resolve_robust = robust is not None and robust.margin is None
    if resolve_robust or job.push_past:  # margins from the strangers' distances under the training network
        from guide_engine.guide.metrics import calibrate, quantile

        calib = calibrate(G_s, id_net, base_sha)
        if resolve_robust:  # a quantile of them
            robust = dataclasses.replace(robust, margin=quantile(calib, robust.margin_quantile))
        if job.push_past:  # PUSH_MARGIN_REL times their median
            push_margin = PUSH_MARGIN_REL * calib["strangers_dist_median"]
    iters = job.iters or default_iters(len(w_u), job.identities_per_iter)
    cfg = UnlearnConfig(generator=base_name, identity=job.identity, iters=iters, lr=job.lr, target=job.target,
                        target_distance=d, target_distance_rel=d / r, radius=r, alpha_max=a_rel * r,
                        alpha_max_rel=a_rel, target_search=job.target_search if job.target == "extra" else 0,
                        target_angle=job.target_angle, losses=job.losses, seed=job.run_seed, device=device,
                        checkpoint_every=job.checkpoint_every, reference_loop=job.reference_loop,
                        fused_adam=not job.reference_loop,  # the reference loop keeps the official optimiser too
                        micro_batch=job.micro_batch, perceptual=perceptual_name, robust=robust,
                        identities_per_iter=job.identities_per_iter, precision=job.precision,
                        push_weight=PUSH_WEIGHT if job.push_past else 0.0, push_margin=push_margin)
    if distributed.is_writer():
        if job.resume and (partial / "config.json").is_file():
            check_same_config(partial, cfg)
        partial.mkdir(parents=True, exist_ok=True)
        keep_aligned_photos(book, partial, continued, photos, n_before)
        files.write_json(partial / ledger.LEDGER, book)
        files.write_json(partial / "config.json", {**dataclasses.asdict(cfg), "job": {
            "sources": [dataclasses.asdict(s) for s in new], "continued_from": str(continued) if continued else None,
            "identities_trained": len(w_u), "ranks": distributed.world()}})
    distributed.barrier()
    t1 = time.perf_counter()
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    G_u, history = run_unlearning(G_s, id_net, w_u, w_t, cfg, checkpoint=partial / "checkpoint.pt", resume=job.resume,
                                  progress=progress, stop_after=stop_after, perceptual=perceptual,
                                  photo=attacked, init=init, history_csv=partial / "history.csv")
    t_unlearn = time.perf_counter() - t1
    if (stop_after is not None and stop_after < iters) or not distributed.is_writer():
        return partial  # interrupted on purpose (tests): resumable; or a rank that does not write

    from safetensors.torch import save_file

    files.atomic_write(partial / "generator.safetensors",
                     lambda tmp: save_file({k: v.contiguous() for k, v in G_u.state_dict().items()}, str(tmp)))
    if base_name.startswith(nvlabs.PREFIX):  # also in the user's own format, for their NVlabs tools
        nvlabs.save_pickle(G_u, partial / "generator.pkl")
    files.write_json(partial / "manifest.json", {
        "engine_version": __version__, "generator": base_name, "identity_network": job.identity,
        "base_sha256": base_sha, "result_sha256": state_sha256(G_u),
        "identities": [e["identity_hash"] for e in book["identities"]],
        "files": {name: files.sha256_file(partial / name)
                  for name in ("generator.safetensors", ledger.LEDGER, *aligned_files(book))},
        "continued_from": None if continued is None else {"run": str(continued), "result_sha256": init_sha},
        "timings_s": {"invert": round(t_invert, 3), "unlearn": round(t_unlearn, 3),
                      "per_iter": round(t_unlearn / max(1, len(history)), 5)},
        "peak_cuda_memory_mib": round(torch.cuda.max_memory_allocated(device) / 2**20)
        if torch.device(device).type == "cuda" else None,
        "final_losses": history[-1] if history else None, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    before_after(G_s, G_u, w_u[n_before:], partial / "before_after.png", r)
    if (partial / "history.csv").is_file():
        from guide_engine.guide.history import plot

        plot(partial / "history.csv", partial / "losses.png")
    (partial / "checkpoint.pt").unlink(missing_ok=True)
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return out


def aligned_files(book: dict) -> list[str]:
    """The aligned crops a run keeps, one per photo identity of its ledger."""
    return [e["latent"]["aligned"] for e in book["identities"] if e.get("latent", {}).get("aligned")]


def keep_aligned_photos(book: dict, partial: Path, continued: Path | None, photos: list, n_before: int) -> None:
    """Write each new photo identity's aligned crop (what inversion saw) into the run, and copy those of the run
    it continues: `verify` attacks with them when the photo is not given again."""
    from guide_engine.engine.images import save_png

    for i, e in enumerate(book["identities"]):
        name = e.get("latent", {}).get("aligned")
        if not name:
            continue
        if i >= n_before:
            save_png(photos[i - n_before], partial / name)
        elif continued is not None and (continued / name).is_file():
            shutil.copyfile(continued / name, partial / name)


@torch.no_grad()
def before_after(G_s, G_u, w_u: torch.Tensor, path: Path, r: float, n: int = 4) -> None:
    """Rows: pretrained, unlearned. Columns: each w_u (up to 8); for one identity, n neighbours
    (NEIGHBOR_RADIUS_REL r away); n random latents."""
    from guide_engine.engine.images import save_grid

    rng = torch.Generator().manual_seed(12345)
    near = latents_around(w_u[:1], n, NEIGHBOR_RADIUS_REL * r, rng) if len(w_u) == 1 else w_u[:0]
    w = torch.cat([w_u[:8], near, G_s.sample_latents(n, rng)])
    images = torch.cat([G_s.synthesize(w), G_u.synthesize(w)])
    save_grid(images, path, nrow=len(w), scale=2, row_labels=["pretrained", "unlearned"])
