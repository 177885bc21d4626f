"""Which implementation a kernel call runs."""
from __future__ import annotations

import os

import torch

from ..engine.errors import GuideEngineError

EPS = 1e-12  # both kernels and their references: a row norm below EPS counts as EPS (as F.normalize does)


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def use_triton(impl: str, *tensors: torch.Tensor) -> bool:
    """impl: "auto" | "triton" | "torch" => run the Triton kernel?"""
    if impl not in ("auto", "triton", "torch"):
        raise GuideEngineError(f"kernel impl {impl!r}: expected auto, triton or torch")
    if impl == "torch" or os.environ.get("GUIDE_ENGINE_KERNELS") == "torch":
        return False
    on_cuda = all(t.is_cuda for t in tensors)
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    if impl == "auto":
        return on_cuda and triton_available()
    if not triton_available():
        raise GuideEngineError("impl='triton' needs the triton package (pip install triton)")
    if not (on_cuda or interpret):
        raise GuideEngineError("impl='triton' needs CUDA tensors, or TRITON_INTERPRET=1 set before triton is imported "
                               "to run the kernel on the CPU")
    return True
