"""ID(a, b) = 1 - cos(e_u, e_t), row-wise, with the L2 normalisation fused in (GUIDE-SPEC section 3).

Derivation (for the fused backward). With n_u = ||e_u||, n_t = ||e_t||, u = e_u / n_u, t = e_t / n_t:
    l_i = 1 - u . t
    dl_i / de_u = -(t - (u . t) u) / n_u
`e_t` is the target side: a constant (no gradient). The forward kernel writes l and dl/de_u in one
pass over the rows; backward only scales the saved gradient by grad_output (per row, and by 1/N for
reduction="mean").

Zero rows: a row whose norm is below EPS is treated as norm EPS (as F.normalize does), so a zero e_u
or e_t gives cos = 0, l = 1 and a finite gradient; never NaN.
"""
from __future__ import annotations

import torch

from .dispatch import EPS, use_triton


def identity_distance_reference(e_u: torch.Tensor, e_t: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """(N, D), (N, D) => (N,) 1 - cos, or its mean. Plain torch; the CPU path and the kernels' oracle."""
    e_t = e_t.detach()
    u = e_u / e_u.norm(dim=1, keepdim=True).clamp_min(EPS)
    t = e_t / e_t.norm(dim=1, keepdim=True).clamp_min(EPS)
    loss = 1 - (u * t).sum(dim=1)
    return _reduce(loss, reduction)


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction {reduction!r}: expected 'mean' or 'none'")


def identity_distance(e_u: torch.Tensor, e_t: torch.Tensor, reduction: str = "mean",
                      impl: str = "auto") -> torch.Tensor:
    """(N, D), (N, D) => 1 - cos(e_u_i, e_t_i): (N,) for reduction="none", the mean for "mean"."""
    if e_u.dim() != 2 or e_u.shape != e_t.shape:
        raise ValueError(f"identity_distance expects two (N, D) tensors of one shape, got {tuple(e_u.shape)} and "
                         f"{tuple(e_t.shape)}")
    if use_triton(impl, e_u, e_t):
        from .triton_identity_distance import IdentityDistanceFunction

        return _reduce(IdentityDistanceFunction.apply(e_u, e_t), reduction)
    return identity_distance_reference(e_u, e_t, reduction)
