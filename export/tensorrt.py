"""TensorRT engine from the ONNX file: an optimisation profile over batch sizes (min 1, opt, max),
a workspace limit, a timing cache on disk, the plan saved beside the ONNX.

Runs on TensorRT 10.x and 11.x: precision comes from the ONNX graph (export --fp16), and the network
is created strongly typed where the flag exists (11 has no FP16 builder flag; 10 accepts either).
"""
from __future__ import annotations

from pathlib import Path

from ..engine.backends import import_tensorrt
from ..engine.errors import GuideEngineError


def build_engine(onnx_path: Path, plan_path: Path, latent_shape: tuple[int, ...], max_batch: int,
                 opt_batch: int | None = None, workspace_gib: float = 4.0, timing_cache: Path | None = None) -> None:
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # deprecated/removed in 10+, harmless if present
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise GuideEngineError(f"TensorRT could not parse {onnx_path}: {errors[:300]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    cache = None
    if timing_cache is not None:
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    opt = opt_batch or max(1, max_batch // 2)
    profile.set_shape("w", (1, *latent_shape), (opt, *latent_shape), (max_batch, *latent_shape))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise GuideEngineError(f"TensorRT failed to build an engine from {onnx_path}")
    plan_path.write_bytes(bytes(plan))
    if cache is not None:
        timing_cache.write_bytes(bytes(cache.serialize()))
