"""Sampling: a generator source (model name, unlearn run directory, export directory) => images."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import exportdir, files, reports, rundir
from .errors import GuideEngineError
from .models import nvlabs, zoo
from .rng import seeded_rng
from .runtime import default_device, in_batches


def load_generator_source(source: str | Path, device: str | None = None):
    """A model name => the pretrained generator; an unlearn run directory => the unlearned one, its files checked
    against its manifest first (engine/rundir.py)."""
    if Path(source).is_dir():
        return rundir.load_generator(Path(source), default_device(device))
    if str(source) in zoo.REGISTRY or str(source).startswith(nvlabs.PREFIX):
        return zoo.load_generator(str(source), device=default_device(device))
    raise GuideEngineError(f"--generator {source}: neither a directory nor a known model "
                           f"({', '.join(n for n, s in zoo.REGISTRY.items() if s.kind == 'generator')})")


def resolve_backend(source: str | Path, backend: str) -> str:
    """`auto`: an export directory's fastest measured runtime per batch (engine/backends.FastestRunner);
    anything else has PyTorch only (export it for ONNX Runtime / TensorRT)."""
    if backend != "auto":
        return backend
    return "auto" if exportdir.is_export(Path(source)) else "torch"


GRID_MAX = 256  # images in one grid PNG
NPY_MAX = 10_000  # images in one .npy (64 px: 490 MB of float32); beyond: --out DIR/
SAMPLE_BATCH = 64


def image_source(source: str, backend: str = "auto", device: str | None = None):
    """A source => (seeds => (N, 3, H, W) float32 images on the CPU, batch size), checked against its records."""
    backend = resolve_backend(source, backend)
    if backend == "torch":
        generator = load_generator_source(source, device)
        reports.check_beside(Path(source), getattr(generator, "verified", None))  # an edited report is refused

        def render(seeds) -> torch.Tensor:
            with seeded_rng(int(seeds[0]), generator.average_latent().device):  # EG3D's ray samples: same images
                return generator.synthesize(generator.latents_for_seeds(seeds)).cpu()
        return render, SAMPLE_BATCH
    from .backends import open_runner

    runner = open_runner(Path(source), backend)
    reports.check_beside(Path(source), runner.verified)
    base = zoo.load_generator(runner.manifest["generator"])
    return (lambda seeds: runner.infer(base.latents_for_seeds(seeds))), min(SAMPLE_BATCH, runner.max_batch)


def sample_to_file(source: str, seeds: str, out: str | Path, backend: str = "auto", device: str | None = None,
                   progress: bool = True) -> tuple[int, int]:
    """Images for `seeds` => a grid .png, a raw .npy, or (out ending in '/' or an existing directory) one
    seed%06d.png per seed, written in batches at constant memory, skipping files that exist (a stopped job
    resumes). => (images written, images skipped)."""
    import itertools

    from .images import save_grid, save_png, seed_ranges
    from .progress import bar

    ranges = seed_ranges(seeds)
    n = sum(len(r) for r in ranges)
    to_dir = str(out).endswith(("/", "\\")) or Path(out).is_dir()  # checked before Path() drops the slash
    out = Path(out)
    if Path(source).is_dir() and out.is_file() and out.resolve().is_relative_to(Path(source).resolve()):
        raise GuideEngineError(f"--out {out} is a file of {source} itself (its report or weights would be "
                               "overwritten); write the samples elsewhere")
    if not to_dir:
        kind = out.suffix.lower()
        if kind not in (".png", ".npy"):
            raise GuideEngineError(f"--out {out}: give a .png (grid), a .npy (raw array) or a directory (DIR/)")
        limit = GRID_MAX if kind == ".png" else NPY_MAX
        if n > limit:
            raise GuideEngineError(f"--seeds {seeds}: {n} images; a {kind} file holds at most {limit}: write one "
                                   f"PNG per seed with --out DIR/")
    render, batch = image_source(source, backend, device)
    if to_dir:
        out.mkdir(parents=True, exist_ok=True)
        written = 0
        all_seeds = itertools.chain.from_iterable(ranges)
        with torch.no_grad(), bar(n, f"sample => {out}", enabled=progress, unit="img") as shown:
            while chunk := list(itertools.islice(all_seeds, batch)):
                todo = [s for s in chunk if not (out / f"seed{s:06d}.png").exists()]
                if todo:
                    for s, image in zip(todo, render(todo)):
                        save_png(image, out / f"seed{s:06d}.png")  # each file atomically: never half-written
                    written += len(todo)
                shown.update(len(chunk))
        return written, n - written
    seed_list = [s for r in ranges for s in r]
    images = in_batches(render, seed_list, batch)
    if out.suffix.lower() == ".npy":
        def write_npy(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.save(f, images.numpy().astype(np.float32))

        files.atomic_write(out, write_npy)
    else:
        save_grid(images, out, nrow=min(8, len(seed_list)), scale=2)
    return len(seed_list), 0
