"""Triton kernel for kernels.latent_adjacency: one program per random latent k reads w_r_k and w_u_k
to get ||w_r_k - w_u_k|| (chunks of BLOCK, fp32), then writes w_u_k + delta_k and w_t_k + delta_k.
PAIR_STRIDE is 0 when one (w_u, w_t) pair serves every k, S when each k has its own pair."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .dispatch import EPS


@triton.jit
def _latent_adjacency_kernel(WU, WT, WR, ALPHA, SRC, TGT, S, PAIR_STRIDE, eps, BLOCK: tl.constexpr):
    k = tl.program_id(0).to(tl.int64)
    row = k * S
    pair = k * PAIR_STRIDE
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, S, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        m = offs < S
        diff = (tl.load(WR + row + offs, mask=m, other=0.0).to(tl.float32)
                - tl.load(WU + pair + offs, mask=m, other=0.0).to(tl.float32))
        acc += diff * diff
    scale = tl.load(ALPHA + k).to(tl.float32) / tl.maximum(tl.sqrt(tl.sum(acc, axis=0)), eps)
    for start in range(0, S, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        m = offs < S
        wu = tl.load(WU + pair + offs, mask=m, other=0.0).to(tl.float32)
        wt = tl.load(WT + pair + offs, mask=m, other=0.0).to(tl.float32)
        delta = scale * (tl.load(WR + row + offs, mask=m, other=0.0).to(tl.float32) - wu)
        tl.store(SRC + row + offs, wu + delta, mask=m)
        tl.store(TGT + row + offs, wt + delta, mask=m)


@torch.no_grad()
def latent_adjacency_triton(w_u, w_t, w_r, alpha):
    w_u, w_t, w_r, alpha = (t.detach().contiguous() for t in (w_u, w_t, w_r, alpha))
    k = w_r.shape[0]
    s = w_r[0].numel()
    src = torch.empty(w_r.shape, device=w_r.device, dtype=torch.float32)
    tgt = torch.empty_like(src)
    if k:
        pair_stride = 0 if w_u.shape[0] == 1 else s
        _latent_adjacency_kernel[(k,)](w_u, w_t, w_r, alpha, src, tgt, s, pair_stride, EPS,
                                       BLOCK=min(1024, triton.next_power_of_2(s)))
    return src.to(w_r.dtype), tgt.to(w_r.dtype)
