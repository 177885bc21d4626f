"""Runners: one interface, `infer(w) -> image`, over PyTorch, ONNX Runtime and TensorRT.

`infer` validates the input (shape, dtype, finite, batch range) and calls `infer_impl`.
Optional dependencies (onnxruntime, tensorrt) are imported lazily: a missing one explains itself.
Contract: w (N, *latent_shape) float32 => image (N, 3, H, W) float32 in [-1, 1], on the CPU.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import exportdir, integrity, rundir
from .errors import GuideEngineError, IntegrityError, first_line


class Runner:
    name = "runner"

    def __init__(self, latent_shape: tuple[int, ...], max_batch: int = 1 << 16):
        self.latent_shape = tuple(latent_shape)
        self.max_batch = max_batch

    def infer(self, w) -> torch.Tensor:
        if isinstance(w, np.ndarray):
            w = torch.from_numpy(w)
        if not isinstance(w, torch.Tensor):
            raise GuideEngineError(f"latents must be a tensor or array, got {type(w).__name__}")
        if w.dtype != torch.float32:
            raise GuideEngineError(f"latents must be float32, got {w.dtype}")
        if w.dim() != 1 + len(self.latent_shape) or tuple(w.shape[1:]) != self.latent_shape:
            raise GuideEngineError(f"latents must have shape (N, {', '.join(map(str, self.latent_shape))}), got "
                                   f"{tuple(w.shape)}")
        if not 1 <= w.shape[0] <= self.max_batch:
            raise GuideEngineError(f"batch of {w.shape[0]} latents: this {self.name} artifact takes 1 to "
                                   f"{self.max_batch}")
        if not torch.isfinite(w).all():
            raise GuideEngineError("latents contain NaN or infinity")
        return self.infer_impl(w.contiguous())

    def infer_impl(self, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class TorchRunner(Runner):
    name = "torch"

    def __init__(self, generator, max_batch: int = 1 << 16):
        super().__init__(generator.latent_shape, max_batch)
        self.generator = generator.eval()
        self.device = generator.average_latent().device

    @torch.no_grad()
    def infer_impl(self, w):
        return self.generator.synthesize(w.to(self.device)).float().cpu()


class OnnxrtRunner(Runner):
    """ONNX Runtime; asks for the CUDA / TensorRT providers when onnxruntime-gpu offers them,
    and records in `providers` what the session really runs."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, latent_shape, max_batch: int = 1 << 16, providers: list[str] | None = None):
        super().__init__(latent_shape, max_batch)
        try:
            import onnxruntime as ort
        except ImportError:
            raise GuideEngineError("ONNX Runtime is not installed: pip install onnxruntime (or onnxruntime-gpu on a "
                                   "CUDA host)") from None
        available = ort.get_available_providers()
        wanted = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=wanted)
        except Exception as e:
            raise GuideEngineError(f"{path}: not a loadable ONNX model ({first_line(e)[:200]})") from None
        self.providers = self.session.get_providers()
        self.input_name = self.session.get_inputs()[0].name

    def infer_impl(self, w):
        return torch.from_numpy(self.session.run(None, {self.input_name: w.cpu().numpy()})[0]).float()


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise GuideEngineError("TensorRT is not installed: on a CUDA host, pip install tensorrt (the `trt` "
                               "extra)") from None
    if not torch.cuda.is_available():
        raise GuideEngineError("TensorRT needs a CUDA GPU, and torch sees none on this machine")
    return trt


class TrtRunner(Runner):
    """A TensorRT plan executed with torch-allocated CUDA buffers (set_tensor_address +
    execute_async_v3 on the current torch stream); no pycuda."""

    name = "tensorrt"

    def __init__(self, plan: str | Path, latent_shape, max_batch: int):
        super().__init__(latent_shape, max_batch)
        trt = import_tensorrt()
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(Path(plan).read_bytes())
        if self.engine is None:
            raise GuideEngineError(f"{plan}: TensorRT could not deserialise this plan (built for another GPU or "
                                   "version?)")
        self.context = self.engine.create_execution_context()

    @torch.no_grad()
    def infer_impl(self, w):
        w = w.cuda()
        self.context.set_input_shape("w", tuple(w.shape))
        out = torch.empty(tuple(self.context.get_tensor_shape("image")), device="cuda", dtype=torch.float32)
        self.context.set_tensor_address("w", w.data_ptr())
        self.context.set_tensor_address("image", out.data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise GuideEngineError("TensorRT execution failed")
        stream.synchronize()
        return out.cpu()


def measure_throughput(runner: Runner, latents: torch.Tensor, batches: list[int], min_time: float = 0.1,
                       repeats: int = 3) -> dict[str, float]:
    """=> {batch: images/s}, the median of `repeats` runs of at least `min_time` s each, after one burn-in call."""
    import statistics
    import time

    rates = {}
    for b in batches:
        w = latents[:b]
        runner.infer(w)
        runs = []
        for _ in range(repeats):
            n, t = 0, time.perf_counter()
            while n == 0 or time.perf_counter() - t < min_time:
                runner.infer(w)
                n += 1
            runs.append(n * b / (time.perf_counter() - t))
        rates[str(b)] = statistics.median(runs)
    return rates


class FastestRunner(Runner):
    """Several runners of one artifact (their parity checked by `export`) and the images/s `export` measured
    for each at a few batch sizes: every call goes to the fastest at the nearest measured batch size at
    or above its own (the largest measured one beyond it)."""

    name = "auto"

    def __init__(self, runners: dict[str, Runner], table: dict[str, dict[str, float]], latent_shape, max_batch: int):
        super().__init__(latent_shape, max_batch)
        self.runners = runners
        self.table = {k: {int(b): v for b, v in rates.items()} for k, rates in table.items() if k in runners}
        if not self.table:
            raise GuideEngineError("--backend auto: no measured runtime is available here")

    def choose(self, n: int) -> str:
        def rate(name: str) -> float:
            rates = self.table[name]
            at = min((b for b in rates if b >= n), default=max(rates))
            return rates[at]

        return max(self.table, key=rate)

    def infer_impl(self, w):
        return self.runners[self.choose(len(w))].infer(w)


def open_runner(export_dir: Path, backend: str) -> Runner:
    """An export directory (with export.json) => the runner of `backend` over its artifact; `auto`: the
    fastest measured runtime for each call's batch size (FastestRunner). Each file is checked against
    export.json's record before it is used (engine/integrity.py), once per load."""
    manifest_path = Path(export_dir) / exportdir.MANIFEST
    manifest = exportdir.read_manifest(export_dir)
    try:
        shape, max_batch = tuple(manifest["latent_shape"]), manifest["max_batch"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise GuideEngineError(f"{manifest_path}: not a readable export record ({type(e).__name__}); "
                               f"export again") from None
    ledger = integrity.check_files(Path(export_dir), manifest.get("files", {}), str(manifest_path)).get(rundir.LEDGER)
    if backend == "auto":
        runners = {}
        for name in manifest.get("throughput", {}):
            try:
                runners[name] = _source_torch_runner(manifest) if name == "torch" else \
                    _artifact_runner(Path(export_dir), manifest, name)
            except IntegrityError:  # a swapped artifact is refused, never passed over
                raise
            except GuideEngineError:
                continue  # not here (TensorRT on a CPU host, the source run moved): the others compete
        runner = FastestRunner(runners, manifest.get("throughput", {}), shape, max_batch) if runners else \
            _artifact_runner(Path(export_dir), manifest, "onnxruntime")
        sha = manifest["artifacts"]["onnx"]["sha256"]
    elif backend in ("onnxruntime", "tensorrt"):
        runner = _artifact_runner(Path(export_dir), manifest, backend)
        sha = runner.artifact_sha256
    else:
        raise GuideEngineError(f"--backend {backend}: an export directory serves onnxruntime or tensorrt")
    runner.manifest = manifest
    runner.verified = {"weights_sha256": sha, "ledger_sha256": ledger, "recorded": True,
                       "source_weights_sha256": manifest.get("source_weights_sha256")}
    return runner


def _artifact_runner(export_dir: Path, manifest: dict, backend: str) -> Runner:
    """The ONNX Runtime or TensorRT runner of an export's artifact, its file checked against its SHA-256 first."""
    art = manifest["artifacts"]
    key = "onnx" if backend == "onnxruntime" else "tensorrt"
    if key not in art:
        raise GuideEngineError(f"{export_dir}: has no TensorRT plan; export again with --trt on a CUDA host")
    path = export_dir / art[key]["file"]
    if not path.is_file():
        raise GuideEngineError(f"{path}: missing; {export_dir / exportdir.MANIFEST} records it")
    sha = integrity.check_file(path, art[key].get("sha256"), str(export_dir / exportdir.MANIFEST))
    shape, max_batch = tuple(manifest["latent_shape"]), manifest["max_batch"]
    runner = OnnxrtRunner(path, shape, max_batch) if key == "onnx" else TrtRunner(path, shape, max_batch)
    runner.artifact_sha256 = sha
    return runner


def _source_torch_runner(manifest: dict) -> Runner:
    """The export's source run in PyTorch, when it is still where the export found it."""
    from .files import sha256_file

    src = Path(manifest["source"])
    if not src.is_dir():
        raise GuideEngineError(f"the export's source run {src} is not here")
    if sha256_file(src / rundir.WEIGHTS) != manifest.get("source_weights_sha256"):  # moved on: not this export
        raise GuideEngineError(f"{src / rundir.WEIGHTS} is no longer the weights this export was made from")
    return TorchRunner(rundir.load_generator(src, device="cpu"), manifest["max_batch"])
