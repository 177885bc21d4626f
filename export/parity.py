"""Parity of an artifact against PyTorch on the same fixed latents (Polygraphy-style comparison)."""
from __future__ import annotations

import math

import torch

FP32_MAX_ABS = 1e-4
FP16_MIN_PSNR = 40.0  # dB, with the [-1, 1] image range (peak-to-peak 2)


def psnr(ref: torch.Tensor, out: torch.Tensor) -> float:
    mse = (ref.double() - out.double()).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(4.0 / mse)


def compare(reference_runner, runner, latents: torch.Tensor, batches: list[int], fp16: bool) -> dict:
    """=> {"batches": {b: {max_abs, psnr}}, "max_abs", "psnr" (worst), "threshold", "passed"}."""
    from ..engine.progress import bar

    per = {}
    for b in bar(batches, "parity", unit="batch", leave=False):
        ref, out = reference_runner.infer(latents[:b]), runner.infer(latents[:b])
        assert out.shape == ref.shape, (out.shape, ref.shape)
        per[str(b)] = {"max_abs": (ref - out).abs().max().item(), "psnr": psnr(ref, out)}
    worst_abs = max(v["max_abs"] for v in per.values())
    worst_psnr = min(v["psnr"] for v in per.values())
    passed = worst_psnr >= FP16_MIN_PSNR if fp16 else worst_abs <= FP32_MAX_ABS
    threshold = {"psnr_db_min": FP16_MIN_PSNR} if fp16 else {"max_abs_max": FP32_MAX_ABS}
    return {"batches": per, "max_abs": worst_abs, "psnr": worst_psnr, "threshold": threshold, "passed": passed}
