"""An NVIDIA Triton Inference Server model repository for an exported generator:
DIR/<name>/config.pbtxt and DIR/<name>/1/model.onnx (or model.plan), with the max batch size,
dynamic batching and instance groups. The batch axis is implicit in Triton (max_batch_size > 0)."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

from ..engine.errors import GuideEngineError


def config_pbtxt(name: str, platform: str, latent_shape: list[int], image_shape: list[int], max_batch: int,
                 instances: int = 1, kind: str = "KIND_GPU", queue_delay_us: int = 2000) -> str:
    preferred = sorted({b for b in (max(1, max_batch // 4), max_batch) if b >= 1})
    backend = 'backend: "onnxruntime"' if platform == "onnx" else 'platform: "tensorrt_plan"'
    dims = lambda s: ", ".join(map(str, s))  # noqa: E731
    return f"""name: "{name}"
{backend}
max_batch_size: {max_batch}
input [
  {{ name: "w" data_type: TYPE_FP32 dims: [ {dims(latent_shape)} ] }}
]
output [
  {{ name: "image" data_type: TYPE_FP32 dims: [ {dims(image_shape)} ] }}
]
dynamic_batching {{
  preferred_batch_size: [ {dims(preferred)} ]
  max_queue_delay_microseconds: {queue_delay_us}
}}
instance_group [
  {{ count: {instances} kind: {kind} }}
]
"""


def model_name(export_dir: Path) -> str:
    """The Triton model's name: guide_<run> for the default RUN/export, guide_<run>_<folder> for another export
    folder (two exports of one run must not share a name)."""
    export_dir = Path(export_dir).absolute()
    tail = "" if export_dir.name == "export" else f"_{export_dir.name}"
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"guide_{export_dir.parent.name}{tail}")


def check_free(export_dir: Path, repo: Path) -> None:
    """Refuse before anything is exported when the repository already holds a model of that name."""
    if (Path(repo) / model_name(export_dir)).exists():
        raise GuideEngineError(f"--triton-repo: {Path(repo) / model_name(export_dir)} already exists; remove it or "
                               f"export to another --out")


def write_triton_repo(export_dir: Path, repo: Path, name: str | None = None) -> Path:
    """Copy the export's artifact (the TensorRT plan if there is one, else the ONNX file) into a
    Triton model repository; => the model's folder."""
    from ..engine import exportdir

    manifest = exportdir.read_manifest(export_dir)
    name = name or model_name(export_dir)
    art = manifest["artifacts"]
    platform, src, target = (("tensorrt", art["tensorrt"]["file"], "model.plan") if "tensorrt" in art
                             else ("onnx", art["onnx"]["file"], "model.onnx"))
    model_dir = repo / name
    if model_dir.exists():
        raise GuideEngineError(f"--triton-repo: {model_dir} already exists")
    (model_dir / "1").mkdir(parents=True)
    shutil.copy2(export_dir / src, model_dir / "1" / target)
    (model_dir / "config.pbtxt").write_text(config_pbtxt(name, platform, manifest["latent_shape"],
                                                         manifest["image_shape"], manifest["max_batch"]))
    return model_dir
