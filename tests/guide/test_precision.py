"""Speed without changing the answer: bf16 against fp32, the cached target side against recomputing it."""
import copy
import dataclasses

import pytest
import torch

from guide_engine.engine.errors import GuideEngineError
from guide_engine.guide.config import UnlearnConfig
from guide_engine.guide.target import ufo_target
from guide_engine.guide.unlearn import TargetCache, iteration_latents, step_batched

BF16_LOSS_RTOL = 0.02  # bf16 keeps 8 bits of mantissa; the losses are sums of many such products


def _setup(generator, n=1):
    w_u = generator.latents_for_seeds(range(70, 70 + n))
    w_t = torch.cat([ufo_target(w_u[i:i + 1], generator.average_latent(), 10.0) for i in range(n)])
    return w_u, w_t


def _grads(generator, identity, batch, cfg, cache=None):
    g = copy.deepcopy(generator)
    params = list(g.trainable_parameters())
    for p in params:
        p.requires_grad_(True)
    losses = step_batched(g, generator, identity, batch, cfg, cache=cache)
    losses["total"].backward()
    return {k: v.item() for k, v in losses.items()}, torch.cat([p.grad.flatten() for p in params])


@pytest.mark.parametrize("it", [0, 1, 2])
def test_bf16_step_matches_fp32(generator, identity, it):
    """bf16 convolutions in the identity network (the generator, its gradients and the losses stay fp32)."""
    w_u, w_t = _setup(generator)
    cfg = UnlearnConfig(alpha_max=5.0)
    batch = iteration_latents(generator, w_u, w_t, cfg, it)
    l32, g32 = _grads(generator, identity, batch, cfg)
    bf16 = identity.at_precision("bf16")
    assert identity.precision == "fp32" and bf16.net is identity.net  # a view: the same weights
    feats, desc = bf16.features(generator.synthesize(w_u))
    assert desc.dtype == torch.float32 and all(f.dtype == torch.float32 for f in feats)  # outputs stay fp32
    l16, g16 = _grads(generator, bf16, batch, dataclasses.replace(cfg, precision="bf16"))
    assert l16 == pytest.approx(l32, rel=BF16_LOSS_RTOL)
    assert g16.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(g16, g32, dim=0) > 0.99


def test_cached_target_side_equals_recomputing_it(generator, identity):
    """Three identities, two per iteration, whole and in micro-batch-like parts: the same losses and gradients."""
    w_u, w_t = _setup(generator, 3)
    cfg = UnlearnConfig(alpha_max=5.0, identities_per_iter=2)
    assert TargetCache.usable(generator)
    cache = TargetCache(generator, identity, w_t, cfg)
    for it in range(3):
        batch = iteration_latents(generator, w_u, w_t, cfg, it)
        for part in (batch, batch.rows(slice(1, 5)), batch.rows(torch.tensor([1, 4, 5, 7]))):
            l_plain, g_plain = _grads(generator, identity, part, cfg)
            l_cached, g_cached = _grads(generator, identity, part, cfg, cache)
            assert l_cached == pytest.approx(l_plain, rel=1e-5)
            torch.testing.assert_close(g_cached, g_plain, atol=1e-6, rtol=1e-4)


def test_unknown_precision_is_refused():
    with pytest.raises(GuideEngineError, match="--precision"):
        UnlearnConfig(precision="fp8").validate()
