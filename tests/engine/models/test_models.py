"""Generator contract, and gradients from the identity network back to the generator."""
import torch

from guide_engine.engine.protocols import Generator, IdentityNetwork


def test_protocols(generator, identity):
    assert isinstance(generator, Generator)
    assert isinstance(identity, IdentityNetwork)


def test_generator_shape_range_determinism(generator):
    w = generator.latents_for_seeds([5, 6, 7])
    assert w.shape == (3, 100)
    with torch.no_grad():
        x = generator.synthesize(w)
        again = generator.synthesize(generator.latents_for_seeds([6]))
    assert x.shape == (3, 3, 64, 64) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1 and x.std() > 0.1
    torch.testing.assert_close(again[0], x[1])  # an image depends on its seed, not its batch
    assert not torch.equal(x[0], x[1])
    assert torch.equal(generator.average_latent(), torch.zeros(1, 100))


def test_trainable_parameters_are_the_convolutions(generator):
    params = list(generator.trainable_parameters())
    assert len(params) == 5 and all(p.dim() == 4 for p in params)


def test_gradients_flow_from_identity_to_generator(generator, identity):
    import copy

    g = copy.deepcopy(generator)
    for p in g.trainable_parameters():  # the session fixture may have been frozen by an unlearning run
        p.requires_grad_(True)
    w = g.latents_for_seeds([0, 1])
    target = identity.embed(generator.synthesize(g.latents_for_seeds([2, 3]))).detach()
    loss = (1 - (identity.embed(g.synthesize(w)) * target).sum(1)).mean()
    loss.backward()
    grads = [p.grad for p in g.trainable_parameters()]
    assert all(gr is not None and torch.isfinite(gr).all() and gr.abs().sum() > 0 for gr in grads)
    assert all(p.grad is None for p in identity.parameters())  # the identity network stays frozen
