"""The Triton kernels compiled for and run on a CUDA GPU (not the interpreter), against their torch
references computed in float64: fp32 and bf16 inputs, forward and backward, odd sizes. Skipped without
a GPU (conftest), and under TRITON_INTERPRET=1, which would interpret them instead of compiling them."""
import os

import pytest
import torch

from guide_engine.kernels import (
    identity_distance,
    identity_distance_reference,
    latent_adjacency,
    latent_adjacency_reference,
)

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1",
                                 reason="TRITON_INTERPRET=1 interprets the kernels; run with TRITON_INTERPRET=0")]
# relative error bounds ||out - ref|| / ||ref||: fp32 arithmetic (loss, gradient); bf16 results are the
# kernel's fp32 values rounded to bf16 (2**-9 relative per element)
TOL = {torch.float32: (1e-5, 1e-4), torch.bfloat16: (4e-3, 4e-3)}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n,d", [(1, 1), (5, 127), (33, 128), (257, 513), (1000, 7168), (3, 4099)])
def test_identity_distance_cuda(dtype, n, d):
    g = torch.Generator(device="cuda").manual_seed(n * 7919 + d)
    e_u = (torch.randn(n, d, device="cuda", generator=g) * 3).to(dtype).requires_grad_(True)
    e_t = torch.randn(n, d, device="cuda", generator=g).to(dtype)
    out = identity_distance(e_u, e_t, "none", impl="triton")
    assert out.dtype == dtype and out.shape == (n,) and torch.isfinite(out).all()
    # the oracle: the same inputs (already rounded to dtype) in float64
    u64 = e_u.detach().double().requires_grad_(True)
    ref = identity_distance_reference(u64, e_t.double(), "none")
    w = torch.randn(n, device="cuda", generator=g).to(dtype).double()  # grad_output != 1, exact in dtype
    (g_k,) = torch.autograd.grad(out, e_u, w.to(dtype))
    (g_r,) = torch.autograd.grad(ref, u64, w)
    assert g_k.dtype == dtype and torch.isfinite(g_k).all()
    out_tol, grad_tol = TOL[dtype]
    if d > 1:
        assert rel(out, ref) < out_tol or (out.double() - ref).abs().max() < 1e-6
        assert rel(g_k, g_r) < grad_tol
    else:  # D = 1: cos = +-1 and the true gradient is 0
        assert (g_k.double() - g_r).abs().max() < 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape,pairs", [((1, 100), 1), ((7, 14, 512), 1), ((5, 1025), 5), ((4096, 14, 512), 1),
                                         ((33, 3), 33)])
def test_latent_adjacency_cuda(dtype, shape, pairs):
    k = shape[0]
    g = torch.Generator(device="cuda").manual_seed(k)
    w_u = torch.randn(pairs, *shape[1:], device="cuda", generator=g).to(dtype)
    w_t = (torch.randn(pairs, *shape[1:], device="cuda", generator=g) * 5).to(dtype)
    w_r = torch.randn(*shape, device="cuda", generator=g).to(dtype)
    alpha = (torch.rand(k, device="cuda", generator=g) * 15).to(dtype)
    src, tgt = latent_adjacency(w_u, w_t, w_r, alpha, impl="triton")
    # outputs come from torch.empty: an element the kernel missed holds garbage and fails the comparison
    assert src.dtype == dtype and torch.isfinite(src).all() and torch.isfinite(tgt).all()
    src_r, tgt_r = latent_adjacency_reference(w_u.double(), w_t.double(), w_r.double(), alpha.double())
    tol = 1e-6 if dtype == torch.float32 else 4e-3
    assert rel(src, src_r) < tol and rel(tgt, tgt_r) < tol


def test_auto_runs_triton_on_cuda(monkeypatch):
    """impl="auto" on CUDA tensors goes to the kernel; GUIDE_ENGINE_KERNELS=torch to the reference."""
    import guide_engine.kernels.triton_identity_distance as tk

    calls = []
    real = tk.identity_distance_fwd
    monkeypatch.setattr(tk, "identity_distance_fwd", lambda *a: calls.append(1) or real(*a))
    x = torch.randn(4, 128, device="cuda", requires_grad=True)
    y = torch.randn(4, 128, device="cuda")
    identity_distance(x, y)
    assert calls == [1]
    monkeypatch.setenv("GUIDE_ENGINE_KERNELS", "torch")
    identity_distance(x, y)
    assert calls == [1]
