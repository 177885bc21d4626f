"""Triton kernels (under TRITON_INTERPRET=1 on CPU tensors) against their plain-torch references,
and a compile of each kernel for sm_90 so that errors the interpreter hides fail CI."""
import os
import subprocess
import sys

import pytest
import torch

from guide_engine.engine.errors import GuideEngineError
from guide_engine.kernels import (
    identity_distance,
    identity_distance_reference,
    latent_adjacency,
    latent_adjacency_reference,
)

pytest.importorskip("triton", reason="triton is not installed")
interpret = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1 on the CPU")


@interpret
@pytest.mark.parametrize("n", [1, 5, 33])
@pytest.mark.parametrize("d", [1, 127, 128, 513])
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_identity_distance_matches_reference(n, d, reduction):
    e_u = torch.randn(n, d, dtype=torch.float32) * torch.rand(n, 1) * 3
    e_t = torch.randn(n, d)
    a = e_u.clone().requires_grad_(True)
    b = e_u.clone().requires_grad_(True)
    out_k = identity_distance(a, e_t, reduction, impl="triton")
    out_r = identity_distance_reference(b, e_t, reduction)
    torch.testing.assert_close(out_k, out_r, atol=1e-6, rtol=1e-5)
    g = torch.randn_like(out_r) * 3  # grad_output != 1
    (ga,) = torch.autograd.grad(out_k, a, g)
    (gb,) = torch.autograd.grad(out_r, b, g)
    # D = 1: cos = +-1 and the exact gradient is 0; both sides hold rounding noise of order eps / ||e_u||.
    torch.testing.assert_close(ga, gb, atol=1e-6 if d > 1 else 1e-4, rtol=1e-4)


@interpret
def test_identity_distance_edge_rows():
    e_u = torch.tensor([[0.0] * 8, [1e15] * 8, [3.0] * 8, [1e-20] * 8])
    e_t = torch.tensor([[1.0] * 8, [2.0] * 8, [0.0] * 8, [1.0] * 8])
    a = e_u.clone().requires_grad_(True)
    b = e_u.clone().requires_grad_(True)
    k = identity_distance(a, e_t, "none", impl="triton")
    r = identity_distance_reference(b, e_t, "none")
    torch.testing.assert_close(k, r)
    assert torch.isfinite(k).all() and k[0] == 1 and k[2] == 1  # zero rows: cos = 0
    (ga,) = torch.autograd.grad(k.sum(), a)
    (gb,) = torch.autograd.grad(r.sum(), b)
    assert torch.isfinite(ga).all()
    torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-6)


def test_identity_distance_target_gets_no_gradient():
    e_u = torch.randn(3, 16, requires_grad=True)
    e_t = torch.randn(3, 16, requires_grad=True)
    identity_distance(e_u, e_t).backward()
    assert e_t.grad is None and e_u.grad is not None


@interpret
@pytest.mark.parametrize("shape", [(1, 100), (2, 100), (7, 14, 512), (3, 1), (2, 1025)])
def test_latent_adjacency_matches_reference(shape):
    k = shape[0]
    w_u, w_t = torch.randn(1, *shape[1:]), torch.randn(1, *shape[1:]) * 5
    w_r = torch.randn(*shape)
    w_r[0] = w_u[0]  # a zero direction: delta = 0, no NaN
    alpha = torch.rand(k) * 15
    src_k, tgt_k = latent_adjacency(w_u, w_t, w_r, alpha, impl="triton")
    src_r, tgt_r = latent_adjacency_reference(w_u, w_t, w_r, alpha)
    torch.testing.assert_close(src_k, src_r, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tgt_k, tgt_r, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(src_k[0], w_u[0])
    # |delta_k| = alpha_k
    torch.testing.assert_close((src_r - w_u).flatten(1).norm(dim=1)[1:], alpha[1:], atol=1e-4, rtol=1e-4)


@interpret
@pytest.mark.parametrize("shape", [(3, 100), (5, 14, 512), (2, 1025)])
def test_latent_adjacency_one_pair_per_row(shape):
    """Several identities in one iteration: row k moves its own (w_u_k, w_t_k); equals row-by-row calls."""
    k = shape[0]
    w_u, w_t, w_r = torch.randn(*shape), torch.randn(*shape) * 5, torch.randn(*shape)
    alpha = torch.rand(k) * 15
    src_k, tgt_k = latent_adjacency(w_u, w_t, w_r, alpha, impl="triton")
    src_r, tgt_r = latent_adjacency_reference(w_u, w_t, w_r, alpha)
    rows = [latent_adjacency_reference(w_u[i:i + 1], w_t[i:i + 1], w_r[i:i + 1], alpha[i:i + 1]) for i in range(k)]
    torch.testing.assert_close(src_r, torch.cat([s for s, _ in rows]))
    torch.testing.assert_close(tgt_r, torch.cat([t for _, t in rows]))
    torch.testing.assert_close(src_k, src_r, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tgt_k, tgt_r, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="1 or K"):
        latent_adjacency(w_u[:2], w_t[:2], torch.randn(3, *shape[1:]), torch.rand(3))


def test_dispatch(monkeypatch):
    x = torch.randn(2, 4)
    monkeypatch.setenv("GUIDE_ENGINE_KERNELS", "torch")
    identity_distance(x, x, impl="triton")  # forced to the reference: no error
    monkeypatch.delenv("GUIDE_ENGINE_KERNELS")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(GuideEngineError, match="CUDA"):
        identity_distance(x, x, impl="triton")
    with pytest.raises(GuideEngineError, match="impl"):
        identity_distance(x, x, impl="cuda")
    # auto on CPU tensors runs the reference
    torch.testing.assert_close(identity_distance(x, x, impl="auto"), torch.tensor(0.0), atol=1e-6, rtol=0)


COMPILE = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from guide_engine.kernels.triton_identity_distance import _identity_distance_fwd
from guide_engine.kernels.triton_latent_adjacency import _latent_adjacency_kernel
p = "*fp32"
jobs = [
    (_identity_distance_fwd, dict(EU=p, ET=p, LOSS=p, GRAD=p, stride_u="i32", stride_t="i32", stride_g="i32",
                                  D="i32", eps="fp32", BLOCK="constexpr"), {"BLOCK": 128}),
    (_identity_distance_fwd, dict(EU="*bf16", ET="*bf16", LOSS=p, GRAD=p, stride_u="i32", stride_t="i32",
                                  stride_g="i32", D="i32", eps="fp32", BLOCK="constexpr"), {"BLOCK": 512}),
    (_latent_adjacency_kernel, dict(WU=p, WT=p, WR=p, ALPHA=p, SRC=p, TGT=p, S="i32", PAIR_STRIDE="i32",
                                    eps="fp32", BLOCK="constexpr"), {"BLOCK": 1024}),
]
for fn, sig, const in jobs:
    k = triton.compile(ASTSource(fn, signature=sig, constexprs=const), target=GPUTarget("cuda", 90, 32))
    assert len(k.asm["cubin"]) > 1000, fn
print("compiled", len(jobs))
"""


def test_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the real compiler, not the interpreter
    proc = subprocess.run([sys.executable, "-c", COMPILE], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0 and "compiled 3" in proc.stdout, proc.stderr[-3000:]
