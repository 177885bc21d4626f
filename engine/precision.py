"""Compute precision of the networks' forward and backward passes: "fp32", or "bf16" autocast.

bf16 runs the identity network's convolutions in bfloat16 (AVX512-BF16 on this CPU, tensor cores on a
GPU); the generator, master weights, Adam's state and every loss reduction stay float32 (bf16 in the
generator too took the gradient's cosine to fp32's from 0.99 to 0.98): callers take `.float()` of network
outputs before computing a loss. Decided once at the edge (the CLI), recorded in config.json and
report.json.
"""
from __future__ import annotations

import contextlib

import torch

from .errors import GuideEngineError

PRECISIONS = ("fp32", "bf16")


def check(precision: str) -> str:
    if precision not in PRECISIONS:
        raise GuideEngineError(f"--precision {precision}: choose {' or '.join(PRECISIONS)}")
    return precision


def autocast(precision: str, device: torch.device | str):
    """A context in which network forward passes run at `precision` (fp32: nothing changes)."""
    if check(precision) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
