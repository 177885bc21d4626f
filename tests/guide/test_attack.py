"""The re-inversion attacker: all starts as one batch give what each start gives alone; it finds the person
on the pretrained generator; it never touches the generator's gradients."""
import torch

from guide_engine.guide.attack import AttackConfig, reinvert
from guide_engine.guide.invert import descend


def test_batched_attack_equals_starts_one_by_one(generator, identity):
    """In float64, to 1e-10. (In float32 the rows agree to 6e-8 after one step, then drift to ~1e-2 by
    step 6: Adam's g / sqrt(v) turns last-bit differences of near-zero gradients into lr-sized steps.)"""
    import copy

    G, net = copy.deepcopy(generator).double(), copy.deepcopy(identity).double()
    cfg = AttackConfig(starts=3, steps=6)
    with torch.no_grad():
        photo = G.synthesize(G.latents_for_seeds([11]).double())
    batched = reinvert(G, net, photo, cfg)
    starts = G.sample_latents(cfg.starts, torch.Generator().manual_seed(cfg.seed)).double()
    alone = torch.cat([descend(G, net, photo, starts[k:k + 1], cfg.steps, cfg.lr, progress=False)
                       for k in range(cfg.starts)])
    assert batched.shape == (3, *G.latent_shape)
    torch.testing.assert_close(batched, alone, atol=1e-10, rtol=0)
    assert (batched - starts).abs().max() > 0.1  # it moved


def test_several_people_in_one_batch_equal_each_alone(generator, identity, monkeypatch):
    """verify attacks every identity of a ledger together, in batches of ATTACK_BATCH rows that cut across
    people: each person's ends are what their own attack gives (float64, to 1e-10)."""
    import copy

    from guide_engine.guide import attack

    G, net = copy.deepcopy(generator).double(), copy.deepcopy(identity).double()
    cfg = AttackConfig(starts=3, steps=4)
    with torch.no_grad():
        photos = G.synthesize(G.latents_for_seeds([11, 12]).double())
    monkeypatch.setattr(attack, "ATTACK_BATCH", 4)  # rows 0-3 and 4-5: the first batch holds both people
    together = attack.reinvert_all(G, net, photos, cfg)
    assert together.shape == (2, 3, *G.latent_shape)
    for i in range(2):
        torch.testing.assert_close(together[i], reinvert(G, net, photos[i:i + 1], cfg), atol=1e-10, rtol=0)


def test_attack_finds_the_person_on_the_pretrained_generator(generator, identity):
    with torch.no_grad():
        photo = generator.synthesize(generator.latents_for_seeds([11]))
        ref = identity.descriptors(photo)

    def best(steps):
        w = reinvert(generator, identity, photo, AttackConfig(starts=2, steps=steps))
        with torch.no_grad():
            return identity.distance(identity.descriptors(generator.synthesize(w)), ref.expand(2, -1)).min().item()

    b1, b20, b60 = best(1), best(20), best(60)
    assert b1 > b20 > b60 and b60 < 0.437  # the same person to dlib: closer than strangers' p5 on this generator


def test_attack_leaves_generator_gradients_alone(generator, identity):
    import copy

    g = copy.deepcopy(generator)
    for p in g.parameters():
        p.requires_grad_(True)
    with torch.no_grad():
        photo = g.synthesize(g.latents_for_seeds([11]))
    reinvert(g, identity, photo, AttackConfig(starts=2, steps=2))
    assert all(p.grad is None for p in g.parameters())


def test_pixel_attacker_leaves_the_identity_term_out(generator, identity):
    """loss="pixel": the same inversion without the descriptor distance, so a different path from the same
    starts; an unknown loss is refused."""
    import pytest

    from guide_engine.engine.errors import GuideEngineError
    from guide_engine.guide.invert import inversion_loss

    with torch.no_grad():
        photo = generator.synthesize(generator.latents_for_seeds([11]))
        feats_x, desc_x = identity.features(photo)
        w = generator.sample_latents(2, torch.Generator().manual_seed(0))
        full, _ = inversion_loss(generator, identity, w, photo, feats_x, desc_x)
        pixel, _ = inversion_loss(generator, identity, w, photo, feats_x, desc_x, identity_term=False)
        desc = identity.descriptors(generator.synthesize(w))
    from guide_engine.kernels import identity_distance  # the loss's identity term (1 - cos)

    torch.testing.assert_close(full - pixel, identity_distance(desc, desc_x.expand(2, -1), reduction="none"),
                               atol=1e-5, rtol=1e-4)
    a = reinvert(generator, identity, photo, AttackConfig(starts=2, steps=3, loss="pixel"))
    b = reinvert(generator, identity, photo, AttackConfig(starts=2, steps=3))
    assert (a - b).abs().max() > 1e-4
    with pytest.raises(GuideEngineError, match="identity or pixel"):
        AttackConfig(loss="lpips")
