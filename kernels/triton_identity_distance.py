"""Triton kernel for kernels.identity_distance (derivation and zero-row convention there).

Forward: one program per row loads e_u and e_t once (fp32 accumulation), and writes both
l = 1 - cos and dl/de_u = -(t - cos * u) / ||e_u||. Backward only scales the saved gradient.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .dispatch import EPS


@triton.jit
def _identity_distance_fwd(EU, ET, LOSS, GRAD, stride_u, stride_t, stride_g, D, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # int64 offsets: N * D may pass 2**31
    offs = tl.arange(0, BLOCK)
    mask = offs < D
    u = tl.load(EU + row * stride_u + offs, mask=mask, other=0.0).to(tl.float32)
    t = tl.load(ET + row * stride_t + offs, mask=mask, other=0.0).to(tl.float32)
    n_u = tl.maximum(tl.sqrt(tl.sum(u * u, axis=0)), eps)
    n_t = tl.maximum(tl.sqrt(tl.sum(t * t, axis=0)), eps)
    u_hat = u / n_u
    t_hat = t / n_t
    cos = tl.sum(u_hat * t_hat, axis=0)
    tl.store(LOSS + row, 1.0 - cos)
    tl.store(GRAD + row * stride_g + offs, -(t_hat - cos * u_hat) / n_u, mask=mask)


def identity_distance_fwd(e_u: torch.Tensor, e_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D), (N, D) => (loss (N,) fp32, dloss/de_u (N, D) fp32)."""
    e_u, e_t = e_u.contiguous(), e_t.contiguous()
    n, d = e_u.shape
    loss = torch.empty(n, device=e_u.device, dtype=torch.float32)
    grad = torch.empty(n, d, device=e_u.device, dtype=torch.float32)
    if n:
        _identity_distance_fwd[(n,)](e_u, e_t, loss, grad, e_u.stride(0), e_t.stride(0), grad.stride(0), d, EPS,
                                     BLOCK=triton.next_power_of_2(d))
    return loss, grad


class IdentityDistanceFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, e_u: torch.Tensor, e_t: torch.Tensor) -> torch.Tensor:
        loss, grad = identity_distance_fwd(e_u, e_t.detach())
        ctx.save_for_backward(grad)
        ctx.dtype = e_u.dtype
        return loss.to(e_u.dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return (grad * grad_output.to(torch.float32)[:, None]).to(ctx.dtype), None
