"""Adjacency-aware latents (GUIDE-SPEC section 3): for K random latents w_r and K step sizes alpha,
    delta_k = alpha_k (w_r_k - w_u_k) / ||w_r_k - w_u_k||      (norm over all of a sample's elements)
    => (w_u + delta, w_t + delta), each (K, *S).
w_u and w_t are one latent pair (1, *S) shared by all k, or one pair per k (K, *S) (several identities
in one iteration). GUIDE draws these as constants: the outputs carry no gradient.
A w_r_k equal to w_u_k (zero direction) gives delta_k = 0, not NaN.
"""
from __future__ import annotations

import torch

from .dispatch import EPS, use_triton


@torch.no_grad()
def latent_adjacency_reference(w_u: torch.Tensor, w_t: torch.Tensor, w_r: torch.Tensor, alpha: torch.Tensor):
    """(1 or K, *S), (same), (K, *S), (K,) => ((K, *S), (K, *S)). Plain torch."""
    diff = (w_r - w_u).flatten(1)  # (K, prod S)
    delta = alpha.reshape(-1, 1) * diff / diff.norm(dim=1, keepdim=True).clamp_min(EPS)
    delta = delta.reshape(w_r.shape)
    return w_u + delta, w_t + delta


def latent_adjacency(w_u: torch.Tensor, w_t: torch.Tensor, w_r: torch.Tensor, alpha: torch.Tensor, impl: str = "auto"):
    """(1 or K, *S), (same), (K, *S), (K,) => (w_u + delta, w_t + delta), each (K, *S), no gradient."""
    k = w_r.shape[0]
    if (w_u.shape[0] not in (1, k) or w_u.shape != w_t.shape or w_r.shape[1:] != w_u.shape[1:]
            or alpha.shape != (k,)):
        raise ValueError(f"latent_adjacency shapes: w_u {tuple(w_u.shape)}, w_t {tuple(w_t.shape)}, "
                         f"w_r {tuple(w_r.shape)}, alpha {tuple(alpha.shape)}; "
                         f"expected (1 or K,*S) twice, (K,*S), (K,)")
    if use_triton(impl, w_u, w_t, w_r, alpha):
        from .triton_latent_adjacency import latent_adjacency_triton

        return latent_adjacency_triton(w_u, w_t, w_r, alpha)
    return latent_adjacency_reference(w_u, w_t, w_r, alpha)
