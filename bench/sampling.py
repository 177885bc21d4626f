"""One backend's sampling throughput, measured in its own process (mixing torch and ONNX Runtime
in one process distorts timings). `python -m guide_engine.bench.sampling BACKEND SOURCE BATCHES REPEATS`
prints one JSON line."""
from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def dcgan_flops(generator) -> int:
    """FLOPs of one image (2 per multiply-add) from the transposed convolutions."""
    flops, h = 0, 1
    for m in generator.main:
        if isinstance(m, torch.nn.ConvTranspose2d):
            flops += 2 * m.in_channels * m.out_channels * m.kernel_size[0] * m.kernel_size[1] * h * h
            h = (h - 1) * m.stride[0] - 2 * m.padding[0] + m.kernel_size[0]
    return flops


def make_infer(backend: str, generator, max_batch: int):
    from ..engine.backends import OnnxrtRunner, TorchRunner

    if backend == "torch":
        return TorchRunner(generator).infer, {}
    if backend in ("torch-compile", "torch-cudagraph"):
        # torch-cudagraph: mode="reduce-overhead" records CUDA graphs per batch size, so a call is one
        # graph replay instead of a launch per kernel (what pays at small batches)
        mode = "reduce-overhead" if backend == "torch-cudagraph" else None
        compiled = torch.compile(generator.synthesize, mode=mode)
        device = generator.average_latent().device

        @torch.no_grad()
        def run(w):  # the runners' contract: the images come back to the host
            return compiled(w.to(device)).float().cpu()

        return run, {"compile_mode": mode or "default"}
    if backend in ("onnxruntime", "tensorrt"):
        from ..export.onnx import export_onnx

        tmp = Path(tempfile.mkdtemp(prefix="guide-bench-")) / "g.onnx"
        export_onnx(generator, tmp)
        if backend == "onnxruntime":
            r = OnnxrtRunner(tmp, generator.latent_shape, max_batch)
            return r.infer, {"providers": r.providers}
        from ..engine.backends import TrtRunner
        from ..export.tensorrt import build_engine

        build_engine(tmp, tmp.with_suffix(".plan"), generator.latent_shape, max_batch)
        return TrtRunner(tmp.with_suffix(".plan"), generator.latent_shape, max_batch).infer, {}
    raise ValueError(backend)


def measure(backend: str, source: str, batches: list[int], repeats: int, min_time: float = 0.3) -> dict:
    from ..engine.runtime import default_device
    from ..engine.sampling import load_generator_source

    # TensorRT needs CUDA; ONNX Runtime picks its own providers; the torch backends run where the engine would
    on_gpu = backend == "tensorrt" or (backend != "onnxruntime" and default_device().startswith("cuda"))
    generator = load_generator_source(source, device="cuda" if on_gpu else "cpu")
    infer, extra = make_infer(backend, generator, max(batches))
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    rows = []
    for b in batches:
        w = generator.latents_for_seeds(range(b)).to(generator.average_latent().device)
        t0 = time.perf_counter()
        for _ in range(3):  # burn-in (and torch.compile's compilation)
            infer(w)
        sync()
        burn = time.perf_counter() - t0
        rates = []
        for _ in range(repeats):
            n, t = 0, time.perf_counter()
            while True:
                infer(w)
                n += 1
                sync()
                if time.perf_counter() - t >= min_time:
                    break
            rates.append(n * b / (time.perf_counter() - t))
        rows.append({"batch": b, "images_per_s": statistics.median(rates), "min": min(rates), "max": max(rates),
                     "repeats": repeats, "burn_in_s": round(burn, 3)})
    return {"backend": backend, "device": "cuda" if on_gpu else "cpu", "threads": torch.get_num_threads(),
            "flops_per_image": dcgan_flops(generator),
            "rows": rows, **extra}


if __name__ == "__main__":
    backend, source, batches, repeats = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    batches = [int(b) for b in batches.split(",")]
    print(json.dumps(measure(backend, source, batches, repeats)))
