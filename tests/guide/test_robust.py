"""Attack-aware unlearning: the attacker finds the person, the loss on what it finds, resume bit for bit
with the attacker's state, the refusal with the reference loop, the CLI end to end."""
import copy
import dataclasses
import json

import pytest
import torch
from click.testing import CliRunner

from guide_engine.apps.cli import main
from guide_engine.engine.errors import GuideEngineError
from guide_engine.engine.rng import stream
from guide_engine.guide.config import UnlearnConfig
from guide_engine.guide.invert import descend
from guide_engine.guide.losses import feature_distance, pair_terms
from guide_engine.guide.robust import (
    LOOK_FACES,
    LOOK_OFFSET,
    MARGIN_FACES,
    MARGIN_OFFSET,
    PIXEL_OFFSET,
    PRESERVE_OFFSET,
    SCREEN_OFFSET,
    SEARCH_OFFSET,
    Attacker,
    RobustConfig,
)
from guide_engine.guide.target import ufo_target
from guide_engine.guide.unlearn import run_unlearning

SEED = 31  # an identity no other test forgets


def _photo(generator):
    with torch.no_grad():
        return generator.synthesize(generator.latents_for_seeds([SEED]))


def test_pool_moves_toward_the_person(generator, identity):
    """On the pretrained generator the attacker's faces get closer to the photo, step after step."""
    cfg = RobustConfig(pool=3, steps=10, reseed_every=10**6, margin=0.6, search_every=0)  # the pool alone
    attacker = Attacker(generator, identity, _photo(generator), cfg, seed=0)
    dists = []
    for it in range(4):
        with torch.no_grad():
            dists.append(attacker.distance(generator.synthesize(attacker.w)).min().item())
        attacker.advance(generator, it)
    assert dists[-1] < dists[0] - 0.03 and min(dists[1:]) < dists[0], dists
    assert all(p.grad is None for p in generator.parameters())  # the attacker moves its latents only


def test_loss_is_zero_past_the_margin(generator, identity):
    """With the pool's faces past the margin and G_u = G_s (nothing to anchor), the loss and its gradient vanish;
    below the margin the hinge pulls."""
    G_u = copy.deepcopy(generator)
    for p in G_u.parameters():
        p.requires_grad_(True)
    photo = _photo(generator)
    # the hinge alone (preserve=0): preservation rows are GUIDE's pair terms, tested with the losses
    attacker = Attacker(generator, identity, photo, RobustConfig(pool=3, margin=0.0, preserve=0), seed=0)
    with torch.no_grad():
        assert (attacker.distance(generator.synthesize(attacker.w)) > 0).all()
    found = attacker.loss(G_u, generator, 0)
    assert found["robust"].item() == 0.0
    found["robust"].backward()
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in G_u.parameters())
    pulled = Attacker(generator, identity, photo, RobustConfig(pool=3, margin=5.0, preserve=0), seed=0)
    assert pulled.loss(G_u, generator, 0)["robust"].item() > 0


def test_preservation_is_its_weight_times_the_rows_mean(generator, identity):
    """With the hinge at rest (margin 0), the loss is preserve_weight x the mean over the `preserve` rows of GUIDE's
    pair terms between G_u and G_s at latents from the preservation stream; 4 rows at weight 4 = their sum."""
    G_u = copy.deepcopy(generator)
    with torch.no_grad():
        for p in G_u.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    photo = _photo(generator)
    w = generator.sample_latents(4, stream(0, 0, PRESERVE_OFFSET))
    with torch.no_grad():
        x_u, x_s = G_u.synthesize(w), generator.synthesize(w)
        rows = pair_terms(identity, x_u, x_s, x_u, x_s).pair()
        losses = {weight: Attacker(generator, identity, photo, RobustConfig(pool=1, margin=0.0, preserve=4,
                                                                         preserve_weight=weight), seed=0)
                  .loss(G_u, generator, 0)["robust"] for weight in (4.0, 1.0)}
    assert rows.min() > 0
    torch.testing.assert_close(losses[4.0], rows.sum(), rtol=1e-5, atol=0)
    torch.testing.assert_close(losses[1.0], rows.mean(), rtol=1e-5, atol=0)
    with pytest.raises(GuideEngineError, match="preserve_weight"):
        RobustConfig(preserve_weight=-1.0).validate()


def test_a_search_round_banks_what_ends_under_the_margin(generator, identity):
    """Search, then erase: a fresh batched attack through G_u; its ends closer than the margin join the bank
    (all of them under a margin past every face, none under a margin of 0), the newest bank_size kept."""
    photo = _photo(generator)
    cfg = RobustConfig(pool=1, margin=5.0, replay=1, bank_size=4, search_every=1, search_starts=3, search_steps=1)
    attacker = Attacker(generator, identity, photo, cfg, seed=0)
    assert attacker.search(generator, 0) == 3 and len(attacker.bank) == 3
    assert attacker.search(generator, 1) == 3 and len(attacker.bank) == 4  # capped: the newest kept
    none = Attacker(generator, identity, photo, dataclasses.replace(cfg, margin=0.0), seed=0)
    assert none.search(generator, 0) == 0 and len(none.bank) == 0
    # the screen: random latents as drawn (no descent), banked, after the round's ends, where the face is under
    # the margin: exactly those, in order
    screened = Attacker(generator, identity, photo, dataclasses.replace(cfg, margin=0.5, screen=70, bank_size=100),
                        seed=0)
    n = screened.search(generator, 0)
    drawn = generator.sample_latents(70, stream(0, 0, SCREEN_OFFSET))
    with torch.no_grad():
        near = screened.distance(generator.synthesize(drawn)) < 0.5
    assert 0 < near.sum() < 70  # some lookalikes, not everyone: the test means something
    assert torch.equal(screened.bank[-int(near.sum()):], drawn[near]) and n >= int(near.sum())
    with pytest.raises(GuideEngineError, match="replay > 0"):
        RobustConfig(search_every=10, replay=0).validate()


def _look(identity, images, photo):
    """The pixel attacker's objective, written out, on each image shifted to the photo's mean colour: pixel MSE +
    the perceptual distance of the network's features."""
    images = images + photo.mean(dim=(2, 3), keepdim=True) - images.mean(dim=(2, 3), keepdim=True)
    feats, feats_x = identity.features(images)[0], identity.features(photo)[0]
    return (images - photo).pow(2).flatten(1).mean(1) + \
        feature_distance(feats, [f.expand(len(images), *f.shape[1:]) for f in feats_x])


def test_the_photos_look_margin_its_hinge_and_its_search(generator, identity):
    """pixel_quantile: the margin is that quantile of the look (pixel + perceptual distance to the photo) of
    LOOK_FACES random faces of G_s; the hinge adds weight x (margin - look) for each hinged face closer than it, zero
    past it; a search round's pixel attacker (no identity term) banks the ends under the look margin."""
    photo = _photo(generator)
    cfg = RobustConfig(pool=3, margin=0.0, preserve=0, weight=2.0, pixel_quantile=0.3)  # the identity hinge at rest
    attacker = Attacker(generator, identity, photo, cfg, seed=0)
    with torch.no_grad():
        faces = _look(identity, generator.synthesize(generator.sample_latents(LOOK_FACES, stream(0, -1, LOOK_OFFSET))),
                      photo)
        assert attacker.look_margin == pytest.approx(float(faces.quantile(0.3)), rel=1e-6)
        G_u = copy.deepcopy(generator)
        for p in G_u.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
        look = _look(identity, G_u.synthesize(attacker.w), photo)
        attacker.look_margin = float(look.median())  # some rows under it, some past it: the hinge means something
        expected = 2.0 * (attacker.look_margin - look).clamp_min(0).sum()
        assert expected > 0
        torch.testing.assert_close(attacker.loss(G_u, generator, 0)["robust"], expected, rtol=1e-5, atol=0)
        attacker.look_margin = float(look.min()) - 1e-3
        assert attacker.loss(G_u, generator, 0)["robust"].item() == 0.0
        faces = G_u.synthesize(attacker.w)  # a change of every pixel of a colour by the same amount moves neither
        tint = torch.tensor([0.3, -0.1, 0.2]).view(1, 3, 1, 1)  # term: tinting all faces is no way out of the hinge
        torch.testing.assert_close(attacker.look(faces + tint), attacker.look(faces), rtol=1e-5, atol=1e-6)
    # the search: 1 identity start and 2 pixel starts; with the identity margin at 0 only the look can bank
    search = dataclasses.replace(cfg, replay=1, bank_size=8, search_every=1, search_starts=1, search_pixel=2,
                                 search_steps=2)
    searcher = Attacker(generator, identity, photo, search, seed=0)
    ends = torch.cat([descend(generator, identity, photo, generator.sample_latents(1, stream(0, 0, SEARCH_OFFSET)), 2,
                              progress=False),
                      descend(generator, identity, photo, generator.sample_latents(2, stream(0, 0, PIXEL_OFFSET)), 2,
                              progress=False, identity_term=False)])
    with torch.no_grad():
        look = _look(identity, generator.synthesize(ends), photo)
    searcher.look_margin = float(look.sort().values[1:].mean())  # between the 2nd and 3rd: two ends under it
    assert searcher.search(generator, 0) == 2
    torch.testing.assert_close(searcher.bank, ends[look < searcher.look_margin])
    assert searcher.state_dict()["look_margin"] == searcher.look_margin  # in the checkpoint
    with pytest.raises(GuideEngineError, match="pixel_quantile"):
        RobustConfig(pixel_quantile=1.0).validate()


def test_recolour_leaves_no_way_out_by_a_tint(generator, identity):
    """recolour: the identity hinge, like the look hinge, sees each face recoloured to the photo's mean colour: a
    tint of every face moves neither distance (it moves the plain network distance), and the hinge is weight x
    (margin - distance) on the recoloured faces."""
    photo = _photo(generator)
    cfg = RobustConfig(pool=3, margin=0.0, preserve=0, weight=2.0, pixel_quantile=0.3, recolour=True)
    attacker = Attacker(generator, identity, photo, cfg, seed=0)
    plain = Attacker(generator, identity, photo, dataclasses.replace(cfg, recolour=False), seed=0)
    tint = torch.tensor([0.3, -0.1, 0.2]).view(1, 3, 1, 1)
    with torch.no_grad():
        faces = generator.synthesize(attacker.w)
        for tinted, face in zip(attacker.hinged(faces + tint), attacker.hinged(faces)):
            torch.testing.assert_close(tinted, face, rtol=1e-5, atol=1e-6)
        assert (plain.hinged(faces + tint)[0] - plain.hinged(faces)[0]).abs().max() > 1e-3
        recoloured = faces - faces.mean(dim=(2, 3), keepdim=True) + photo.mean(dim=(2, 3), keepdim=True)
        dist = identity.distance(identity.descriptors(recoloured), identity.descriptors(photo).expand(3, -1))
        torch.testing.assert_close(attacker.hinged(faces)[0], dist, rtol=1e-5, atol=1e-6)
        attacker.cfg = dataclasses.replace(cfg, margin=float(dist.median()))  # one row under the margin
        attacker.look_margin = float(attacker.hinged(faces)[2].min()) - 1e-3  # the look hinge at rest
        expected = 2.0 * (attacker.cfg.margin - dist).clamp_min(0).sum()
        assert expected > 0
        torch.testing.assert_close(attacker.loss(generator, generator, 0)["robust"], expected, rtol=1e-5, atol=0)


def test_members_apart_each_to_its_own_margin(generator, identity):
    """apart: each member's margin is the margin_quantile of its 1 - cos over the stranger pairs of MARGIN_FACES
    random faces of G_s; the hinge is weight x the sum over the members of (own margin - own distance) where
    positive; a search round attacks with each member alone from the same starts and banks what lies inside any
    member's margin; one network alone is refused."""
    from guide_engine.engine.models.ensemble import EnsembleIdentity

    photo = _photo(generator)
    ens = EnsembleIdentity([identity, identity], [1.0, 2.0])  # units do not change a member's own distance
    cfg = RobustConfig(pool=3, margin=0.0, preserve=0, weight=2.0, margin_quantile=0.2, apart=True)
    attacker = Attacker(generator, ens, photo, cfg, seed=0)

    def own(images):  # dlib's 1 - cos, written out
        return 1 - torch.nn.functional.cosine_similarity(identity.descriptors(images), identity.descriptors(photo))

    with torch.no_grad():
        d = identity.descriptors(generator.synthesize(generator.sample_latents(MARGIN_FACES,
                                                                               stream(0, -1, MARGIN_OFFSET))))
        half = MARGIN_FACES // 2
        pairs = 1 - torch.nn.functional.cosine_similarity(d[:half, None], d[None, half:], dim=2).flatten()
        torch.testing.assert_close(attacker.member_margins, pairs.quantile(0.2).expand(2, 1), rtol=1e-5, atol=1e-6)
        dist = own(generator.synthesize(attacker.w))
        lo, hi = float(dist.min()) + 1e-3, float(dist.max()) + 1e-3  # one member's line past one face, one past all
        attacker.member_margins = torch.tensor([[lo], [hi]])
        expected = 2.0 * ((lo - dist).clamp_min(0) + (hi - dist).clamp_min(0)).sum()
        torch.testing.assert_close(attacker.loss(generator, generator, 0)["robust"], expected, rtol=1e-5, atol=1e-6)
        assert attacker.near(generator.synthesize(attacker.w)).all()  # inside the wider line: all pushed
        attacker.member_margins = torch.tensor([[lo], [lo]])
        assert attacker.near(generator.synthesize(attacker.w)).sum() == 1
    search = dataclasses.replace(cfg, replay=1, bank_size=8, search_every=1, search_starts=2, search_steps=1)
    searcher = Attacker(generator, ens, photo, search, seed=0)
    searcher.member_margins = torch.tensor([[5.0], [5.0]])  # everything inside
    ends = descend(generator, identity, photo, generator.sample_latents(2, stream(0, 0, SEARCH_OFFSET)), 1,
                   progress=False)
    assert searcher.search(generator, 0) == 4  # each member's 2 ends
    torch.testing.assert_close(searcher.bank, torch.cat([ends, ends]), rtol=1e-5, atol=1e-6)
    assert torch.equal(searcher.state_dict()["member_margins"], searcher.member_margins)  # in the checkpoint
    with pytest.raises(GuideEngineError, match="apart"):
        Attacker(generator, identity, photo, cfg, seed=0)


def test_search_rounds_alone(generator, identity):
    """pool 0: no in-loop pool, the rounds' finds alone are hinged; before the first find there is nothing to
    hinge (no gradient, attack_dist nan), after it the bank's rows pull. pool 0 without rounds is refused."""
    G_u = copy.deepcopy(generator)
    for p in G_u.parameters():
        p.requires_grad_(True)
    cfg = RobustConfig(pool=0, margin=5.0, preserve=0, replay=2, bank_size=4, search_every=2, search_starts=2,
                       search_steps=1)
    cfg.validate()
    attacker = Attacker(generator, identity, _photo(generator), cfg, seed=0)
    empty = attacker.loss(G_u, generator, 0)
    assert not empty["robust"].requires_grad and torch.isnan(empty["attack_dist"])
    attacker.advance(G_u, 0)  # a round (iteration 0): both ends under a margin past every face
    assert len(attacker.bank) == 2 and len(attacker.w) == 0
    attacker.advance(G_u, 1)  # no round, and no pool to move
    assert len(attacker.bank) == 2
    found = attacker.loss(G_u, generator, 1)
    assert found["robust"].item() > 0 and found["robust"].requires_grad and found["attack_dist"] < 5.0
    with pytest.raises(GuideEngineError, match="pool 0"):
        RobustConfig(pool=0, search_every=0).validate()


def test_robust_resume_equals_uninterrupted(generator, identity, tmp_path):
    w_u = generator.latents_for_seeds([SEED])
    w_t = ufo_target(w_u, generator.average_latent(), 10.0)
    # re-seeds and banks before and after the checkpoint
    robust = RobustConfig(pool=2, steps=1, reseed_every=2, margin=0.6, replay=2, search_every=2, search_starts=2,
                          search_steps=1, search_pixel=1, pixel_quantile=0.5, recolour=True)
    cfg = UnlearnConfig(iters=6, alpha_max=5.0, checkpoint_every=3, robust=robust)
    a, hist = run_unlearning(generator, identity, w_u, w_t, cfg, progress=False)
    ck = tmp_path / "ck.pt"
    run_unlearning(generator, identity, w_u, w_t, cfg, checkpoint=ck, progress=False, stop_after=3)
    b, _ = run_unlearning(generator, identity, w_u, w_t, cfg, checkpoint=ck, resume=True, progress=False)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert "robust" in hist[0] and "attack_dist" in hist[0]
    plain, _ = run_unlearning(generator, identity, w_u, w_t, dataclasses.replace(cfg, robust=None), progress=False)
    assert any(not torch.equal(v, plain.state_dict()[k]) for k, v in a.state_dict().items())  # the attacker counted


def test_cli_robust_and_its_refusal(tmp_path):
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["unlearn", "--seed", str(SEED), "--out", str(out), "--iters", "2", "--robust",
                                  "--reference-loop"])
    assert r.exit_code == 2 and "--robust with --reference-loop: refused" in r.output and not out.exists()
    r = CliRunner().invoke(main, ["unlearn", "--seed", str(SEED), "--out", str(out), "--iters", "2", "--robust",
                                  "--target-search", "0"])
    assert r.exit_code == 0, r.output
    cfg = json.loads((out / "config.json").read_text())["robust"]
    assert cfg["pool"] == RobustConfig().pool and 0.3 < cfg["margin"] < 0.8  # resolved from dlib's calibration


def test_robust_composes_with_micro_batches(generator, identity, monkeypatch):
    """--micro-batch splits GUIDE's pairs into chunks whose gradients accumulate; the attacker's loss adds its own
    backward. Every Adam step (G_u's and the attacker's) gets the same gradients as in the run in one batch, and
    the first iteration's losses agree. (Weights are not compared: Adam's first steps are lr * sign(g), so
    rounding in near-zero gradients moves whole elements by lr; the second iteration's losses, on those weights,
    agree to 1%: on one CI machine the small global loss moved by 0.1%.)"""
    w_u = generator.latents_for_seeds([SEED])
    w_t = ufo_target(w_u, generator.average_latent(), 10.0)
    cfg = UnlearnConfig(iters=2, alpha_max=5.0, robust=RobustConfig(pool=2, steps=1, margin=0.6, preserve=1,
                                                                        search_every=0))
    steps, adam_step = [], torch.optim.Adam.step

    def recording_step(opt, *args, **kwargs):
        steps[-1].append([p.grad.clone() for group in opt.param_groups for p in group["params"]])
        return adam_step(opt, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    histories = []
    for micro_batch in (0, 2):
        steps.append([])
        split = dataclasses.replace(cfg, micro_batch=micro_batch)
        histories.append(run_unlearning(generator, identity, w_u, w_t, split, progress=False)[1])
    assert len(steps[0]) == len(steps[1]) == 2 * (1 + cfg.robust.steps)  # per iteration: the attacker's, then G_u's
    for it, rel in ((0, 1e-4), (1, 1e-2)):  # the history keeps 6 decimals: abs 2e-6
        for k in ("total", "local", "adj", "glob", "robust", "attack_dist"):
            assert histories[1][it][k] == pytest.approx(histories[0][it][k], rel=rel, abs=2e-6), (it, k)
    for whole, parts in zip(steps[0][:2], steps[1][:2]):  # iteration 0: from the same weights
        for a, b in zip(whole, parts):
            assert a.abs().sum() > 0
            # float32 sums in another order (chunks, threads): 4e-5 of the norm on 2 threads; a chunk lost or
            # scaled wrong is off by a tenth or more
            assert (a - b).norm() <= 1e-3 * a.norm()
