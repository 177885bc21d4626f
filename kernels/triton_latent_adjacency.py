"""Triton kernel for kernels.latent_adjacency: one program per random latent k reads w_r_k and w_u
to get ||w_r_k - w_u|| (chunks of BLOCK, fp32), then writes w_u + delta_k and w_t + delta_k."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from guide_engine.kernels.latent_adjacency import EPS


@triton.jit
def _latent_adjacency_kernel(WU, WT, WR, ALPHA, SRC, TGT, S, eps, BLOCK: tl.constexpr):
    k = tl.program_id(0).to(tl.int64)
    row = k * S
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, S, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        m = offs < S
        diff = tl.load(WR + row + offs, mask=m, other=0.0).to(tl.float32) - tl.load(WU + offs, mask=m, other=0.0).to(tl.float32)
        acc += diff * diff
    scale = tl.load(ALPHA + k).to(tl.float32) / tl.maximum(tl.sqrt(tl.sum(acc, axis=0)), eps)
    for start in range(0, S, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        m = offs < S
        wu = tl.load(WU + offs, mask=m, other=0.0).to(tl.float32)
        wt = tl.load(WT + offs, mask=m, other=0.0).to(tl.float32)
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
        _latent_adjacency_kernel[(k,)](w_u, w_t, w_r, alpha, src, tgt, s, EPS, BLOCK=min(1024, triton.next_power_of_2(s)))
    return src.to(w_r.dtype), tgt.to(w_r.dtype)
