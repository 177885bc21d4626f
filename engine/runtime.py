"""Where tensors are computed and in what pieces: the device, and batched no-grad calls."""
from __future__ import annotations

import os

import torch

from .errors import GuideEngineError
from .progress import bar


def default_device(device: str | None = None) -> str:
    """An explicit --device; else $GUIDE_ENGINE_DEVICE (the test suite pins it to cpu, so a CUDA host runs
    the CPU tests as CI does); else cuda when present."""
    device = device or os.environ.get("GUIDE_ENGINE_DEVICE") or None
    if device:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise GuideEngineError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def synthesis_batch(generator) -> int:
    """How many images one no-grad synthesis call may draw: 64 at 64x64 px, fewer as images grow (4 at
    512 px: EG3D's renderer and super-resolution at batch 64 would need far more than a GPU holds)."""
    return max(1, min(64, 64 * 64 * 64 * 4 // generator.resolution ** 2))


@torch.no_grad()
def in_batches(fn, x, batch: int = 64, desc: str | None = None) -> torch.Tensor:
    """fn over x (a tensor or a list) in chunks of `batch` rows, concatenated: bounded peak memory inside fn;
    `desc`: a progress bar with that label."""
    parts = []
    with bar(len(x), desc or "", enabled=desc is not None, leave=False) as shown:
        for i in range(0, len(x), batch):
            parts.append(fn(x[i:i + batch]))
            shown.update(len(parts[-1]))
    return torch.cat(parts)
