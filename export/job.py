"""`guide-engine export`: a run directory or base model => an export directory.

OUT/ generator.onnx (or generator_fp16.onnx), generator.plan (with --trt), export.json, and the
run's manifest.json / identities.json copied along (verify and serve read them). Every artifact is
run against PyTorch at batch sizes 1, 7 and the max; one that misses its threshold fails the export
and leaves nothing behind (engine/exportdir.py: work happens in OUT.partial/, locked, renamed at the end).
"""
from __future__ import annotations

import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..engine import __version__, exportdir, rundir
from ..engine.backends import OnnxrtRunner, TorchRunner, TrtRunner, measure_throughput
from ..engine.errors import CheckFailed, GuideEngineError
from ..engine.files import sha256_file
from ..engine.sampling import load_generator_source
from ..engine.settings import flag
from .onnx import OPSET, export_onnx
from .parity import compare


@dataclass(frozen=True)
class ExportConfig:
    """Every setting of `export`, declared once (engine/settings.py): the CLI's options are built from it."""

    onnx: bool = flag(False, f"Export ONNX (opset {OPSET}, dynamic batch); the default when --trt is not given.",
                      is_flag=True)
    fp16: bool = flag(False, "fp16 compute in the graph, fp32 input/output.", is_flag=True)
    trt: bool = flag(False, "Also build a TensorRT plan (CUDA host with tensorrt).", is_flag=True)
    max_batch: int = flag(64, "The largest batch the artifacts take; parity is checked at 1, 7 and this.")
    workspace_gib: float = 4.0  # TensorRT's builder workspace

    def validate(self) -> None:
        if self.max_batch < 1:
            raise GuideEngineError(f"--max-batch {self.max_batch}: must be at least 1")


def export_job(source: str, out: Path, cfg: ExportConfig = ExportConfig()) -> dict:
    """`source` (a run directory or a base model's name) => the export directory `out` => its manifest."""
    cfg.validate()
    fp16, trt, max_batch, workspace_gib = cfg.fp16, cfg.trt, cfg.max_batch, cfg.workspace_gib  # ONNX always
    out = Path(out)
    if out.exists():
        raise GuideEngineError(f"--out {out} already exists; choose a new directory")  # before any work
    if trt:
        from ..engine.backends import import_tensorrt

        import_tensorrt()  # fail before any work when TensorRT cannot run here
    generator = load_generator_source(source, device="cpu")
    ref = TorchRunner(generator, max_batch)
    latents = generator.latents_for_seeds(range(10_000, 10_000 + max_batch))
    batches = sorted({1, min(7, max_batch), max_batch})
    src_dir = Path(source) if Path(source).is_dir() else None
    source_sha = sha256_file(src_dir / rundir.WEIGHTS) if src_dir else None

    with exportdir.owned(out) as partial:
        onnx_name = "generator_fp16.onnx" if fp16 else "generator.onnx"
        t0 = time.perf_counter()
        export_onnx(generator, partial / onnx_name, fp16=fp16)
        ort = OnnxrtRunner(partial / onnx_name, generator.latent_shape, max_batch)
        artifacts = {"onnx": {"file": onnx_name, "opset": OPSET, "precision": "fp16" if fp16 else "fp32",
                              "sha256": sha256_file(partial / onnx_name), "export_s": round(time.perf_counter() - t0,
                                                                                            3),
                              "runtime": f"onnxruntime {__import__('onnxruntime').__version__}",
                              "providers": ort.providers,
                              "parity": compare(ref, ort, latents, batches, fp16)}}
        if trt:
            from .tensorrt import build_engine

            t0 = time.perf_counter()
            build_engine(partial / onnx_name, partial / "generator.plan", generator.latent_shape, max_batch,
                         workspace_gib=workspace_gib, timing_cache=out.parent / ".trt_timing.cache")
            import tensorrt

            runner = TrtRunner(partial / "generator.plan", generator.latent_shape, max_batch)
            artifacts["tensorrt"] = {"file": "generator.plan", "precision": "fp16" if fp16 else "fp32",
                                     "sha256": sha256_file(partial / "generator.plan"),
                                     "build_s": round(time.perf_counter() - t0, 3),
                                     "runtime": f"tensorrt {tensorrt.__version__}",
                                     "device": torch.cuda.get_device_name(),
                                     "parity": compare(ref, runner, latents, batches, fp16)}
        # images/s of each runtime at the parity batches: `--backend auto` picks by this table
        throughput = {"onnxruntime": measure_throughput(ort, latents, batches)}
        if src_dir:  # torch competes where the source run is (sample/serve find it through `source`)
            throughput["torch"] = measure_throughput(ref, latents, batches)
        if trt:
            throughput["tensorrt"] = measure_throughput(runner, latents, batches)
        manifest = {"engine_version": __version__, "generator": getattr(generator, "name", "?"),
                    "latent_shape": list(generator.latent_shape),
                    "image_shape": [3, generator.resolution, generator.resolution], "max_batch": max_batch,
                    "input": "w", "output": "image",
                    "source": str(src_dir.resolve() if src_dir else source), "source_weights_sha256": source_sha,
                    "artifacts": artifacts,
                    "throughput": throughput, "throughput_device": "cuda" if trt else "cpu",
                    "versions": {"torch": torch.__version__, "python": platform.python_version()},
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        failed = [k for k, a in artifacts.items() if not a["parity"]["passed"]]
        if failed:
            parity = {k: artifacts[k]["parity"] for k in failed}
            detail = "; ".join(f"{k}: max abs {p['max_abs']:.2e}, PSNR {p['psnr']:.1f} dB (needs {p['threshold']})"
                               for k, p in parity.items())
            raise CheckFailed(f"export parity failed, no artifact written: {detail}")
        if src_dir:
            for f in (rundir.MANIFEST, rundir.LEDGER, rundir.CONFIG, rundir.REPORT):
                if (src_dir / f).is_file():
                    shutil.copy2(src_dir / f, partial / f)
            if (partial / rundir.LEDGER).is_file():  # the guard's list travels with the artifact, and is bound to it
                manifest["files"] = {rundir.LEDGER: sha256_file(partial / rundir.LEDGER)}
        exportdir.write_manifest(partial, manifest)
    return manifest
