"""The iteration's step holds no host synchronisation (traced as one graph here, on the CPU): what a CUDA
graph needs."""
import copy

import pytest
import torch

from guide_engine.guide.config import UnlearnConfig
from guide_engine.guide.target import ufo_target
from guide_engine.guide.unlearn import TargetCache, iteration_latents, step_batched


def _identities(generator, n):
    w_u = generator.latents_for_seeds(range(80, 80 + n))
    return w_u, torch.cat([ufo_target(w_u[i:i + 1], generator.average_latent(), 10.0) for i in range(n)])


@pytest.mark.parametrize("cached, push", [(True, True), (False, True), (True, False)])
def test_step_traces_as_one_graph(generator, identity, cached, push):
    """A data-dependent shape or a read of a tensor's value on the host (a boolean index, .item(), .any())
    would break the trace: each is a host synchronisation that a CUDA graph cannot capture."""
    cfg = UnlearnConfig(iters=1, alpha_max=5.0, push_weight=1.0 if push else 0.0, push_margin=1.0)
    w_u, w_t = _identities(generator, 2)
    cache = TargetCache(generator, identity, w_t, cfg).with_sources(generator, identity, w_u) if cached else None
    batch = iteration_latents(generator, w_u, w_t, cfg, 0)
    G_u = copy.deepcopy(generator)
    eager = step_batched(G_u, generator, identity, batch, cfg, cache=cache)
    traced = torch.compile(lambda b: step_batched(G_u, generator, identity, b, cfg, cache=cache), fullgraph=True,
                           backend="eager")(batch)
    assert set(traced) == set(eager) and ("push" in eager) == push
    for k in eager:
        torch.testing.assert_close(traced[k], eager[k])
