"""The loop: reproducible bit for bit, resumable, batched == reference structure; the CLI end to end."""
import json

import pytest
import torch
from click.testing import CliRunner

from guide_engine.apps.cli import main
from guide_engine.guide.config import UnlearnConfig
from guide_engine.guide.target import ufo_target
from guide_engine.guide.unlearn import run_unlearning


def _setup(generator):
    w_u = generator.latents_for_seeds([0])
    return w_u, ufo_target(w_u, generator.average_latent(), 10.0)


def _cfg(**kw):
    return UnlearnConfig(**{"iters": 6, "alpha_max": 5.0, "checkpoint_every": 3, **kw})


def test_reproducible_and_resume(generator, identity, tmp_path):
    w_u, w_t = _setup(generator)
    a, hist = run_unlearning(generator, identity, w_u, w_t, _cfg(), progress=False)
    b, _ = run_unlearning(generator, identity, w_u, w_t, _cfg(), progress=False)
    ck = tmp_path / "ck.pt"
    run_unlearning(generator, identity, w_u, w_t, _cfg(), checkpoint=ck, progress=False, stop_after=3)
    c, _ = run_unlearning(generator, identity, w_u, w_t, _cfg(), checkpoint=ck, resume=True, progress=False)
    base = generator.state_dict()
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
        assert torch.equal(v, c.state_dict()[k]), k
    assert any(not torch.equal(v, base[k]) for k, v in a.state_dict().items())  # it did train
    # BatchNorm statistics frozen, only convolutions trained
    for k, v in a.state_dict().items():
        if "running" in k or ".1." in k:
            assert torch.equal(v, base[k]), k
    assert hist[-1]["local"] < hist[0]["local"]


def test_fused_adam_trains_the_same_weights_as_torch_default_adam(generator, identity):
    """The speed lever changes only how Adam's update is rounded. Adam turns rounding in near-zero gradients
    into whole steps of lr, so runs drift apart from any rounding change; after 6 iterations fused vs
    default differ by 0.2-0.5% of how far the weights moved (norms per layer), a tenth of what running the
    same default loop on 1 thread instead of 2 gives (3-13% here)."""
    w_u, w_t = _setup(generator)
    fused, h_fused = run_unlearning(generator, identity, w_u, w_t, _cfg(fused_adam=True), progress=False)
    plain, h_plain = run_unlearning(generator, identity, w_u, w_t, _cfg(fused_adam=False), progress=False)
    base, plain = generator.state_dict(), plain.state_dict()
    for k, v in fused.state_dict().items():  # BatchNorm's statistics do not move, and must not differ
        moved = (plain[k] - base[k]).double().norm()
        assert (v - plain[k]).double().norm() <= 0.02 * moved, k
    assert h_fused[-1]["total"] == pytest.approx(h_plain[-1]["total"], rel=1e-3)


@pytest.mark.parametrize("n_identities", [1, 3])
def test_batched_equals_reference_loop_and_micro_batches(generator, identity, n_identities):
    """One batched generator call per side computes the same losses and gradients as the official
    one-call-per-latent structure, and as micro-batches of 2 with their gradients accumulated; with one
    identity and with 3 (of which each iteration trains 2)."""
    import copy
    import dataclasses

    from guide_engine.guide.unlearn import backward_micro_batched, iteration_latents, step_batched, step_reference

    w_u = generator.latents_for_seeds(range(n_identities))
    w_t = torch.cat([ufo_target(w_u[i:i + 1], generator.average_latent(), 10.0) for i in range(n_identities)])
    cfg = _cfg(identities_per_iter=2)
    batch = iteration_latents(generator, w_u, w_t, cfg, it=0)
    assert batch.view is None  # no camera
    b = min(n_identities, 2)
    assert batch.lat_u.shape == (b * 3 + 2, 100) and batch.n_identities == b

    def with_backward(step):
        def run(g, cfg):
            losses = step(g, generator, identity, batch, cfg)
            losses["total"].backward()
            return losses
        return run

    micro = lambda g, cfg: backward_micro_batched(g, generator, identity, batch,  # noqa: E731
                                                  dataclasses.replace(cfg, micro_batch=2))
    grads, losses = [], []
    for run in (with_backward(step_batched), with_backward(step_reference), micro):
        g = copy.deepcopy(generator)
        for p in g.trainable_parameters():
            p.requires_grad_(True)
        losses.append({k: v.item() for k, v in run(g, cfg).items()})
        grads.append([p.grad for p in g.trainable_parameters()])
    for other in losses[1:]:
        assert other == pytest.approx(losses[0], rel=1e-5)
    for other in grads[1:]:
        for a, b in zip(grads[0], other):
            assert a is not None and a.abs().sum() > 0
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_push_past_is_zero_past_the_margin_and_pushes_the_face_away(generator, identity):
    from guide_engine.guide.losses import push_past

    with torch.no_grad():
        src = identity.descriptors(generator.synthesize(generator.latents_for_seeds([0, 1])))
        w = generator.latents_for_seeds([2, 3])
    d0 = identity.distance(identity.descriptors(generator.synthesize(w)), src)
    assert torch.equal(push_past(identity, identity.descriptors(generator.synthesize(w)), src, 0.1), torch.zeros(2))
    w = w.clone().requires_grad_(True)
    hinge = push_past(identity, identity.descriptors(generator.synthesize(w)), src, 2.0)
    torch.testing.assert_close(hinge.detach(), 2.0 - d0)
    (g,) = torch.autograd.grad(hinge.sum(), [w])
    with torch.no_grad():  # a small step down the hinge moves each face away from its person
        d1 = identity.distance(identity.descriptors(generator.synthesize(w - 0.05 * g / g.norm(dim=1, keepdim=True))),
                               src)
    assert (d1 > d0).all()


def test_push_past_in_the_loop_batched_cached_and_reference_agree(generator, identity):
    """--push-past adds the same term in the batched loop (sources cached once), the batched loop without the
    cache and the official structure; it counts in the total, and with weight 0 nothing changes."""
    import copy

    from guide_engine.guide.unlearn import TargetCache, iteration_latents, step_batched, step_reference

    w_u = generator.latents_for_seeds([0, 1, 2])
    w_t = torch.cat([ufo_target(w_u[i:i + 1], generator.average_latent(), 10.0) for i in range(3)])
    cfg = _cfg(identities_per_iter=2, push_weight=1.0, push_margin=1.0)
    batch = iteration_latents(generator, w_u, w_t, cfg, it=4)
    g = copy.deepcopy(generator)
    cache = TargetCache(generator, identity, w_t, cfg).with_sources(generator, identity, w_u)
    runs = [step_batched(g, generator, identity, batch, cfg, cache=cache),
            step_batched(g, generator, identity, batch, cfg),
            step_reference(g, generator, identity, batch, cfg)]
    assert runs[0]["push"].item() == pytest.approx(2 * 1.0 / 2, rel=1e-4)  # G_u = G_s: each face is its person
    for other in runs[1:]:
        for k in ("push", "total", "local"):
            assert other[k].item() == pytest.approx(runs[0][k].item(), rel=1e-5), k
    plain = step_batched(g, generator, identity, batch, _cfg(identities_per_iter=2), cache=cache)
    assert "push" not in plain and plain["total"].item() == pytest.approx(runs[0]["total"].item() - 1.0, rel=1e-5)
    with pytest.raises(Exception, match="push past"):
        _cfg(push_weight=1.0).validate()


def test_identity_batch_is_a_function_of_seed_and_iteration():
    from guide_engine.guide.unlearn import identity_batch

    assert identity_batch(3, 4, seed=0, it=7).tolist() == [0, 1, 2]  # fewer than B: all of them
    a = [identity_batch(10, 4, seed=0, it=i).tolist() for i in range(20)]
    assert a == [identity_batch(10, 4, seed=0, it=i).tolist() for i in range(20)]
    assert all(len(set(x)) == 4 and x == sorted(x) for x in a)
    assert len({tuple(x) for x in a}) > 10  # the draw changes with the iteration ...
    assert a != [identity_batch(10, 4, seed=1, it=i).tolist() for i in range(20)]  # ... and with the run seed
    assert set().union(*a) == set(range(10))  # every identity gets trained


def test_cli_tiny_run(tmp_path, generator):
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["unlearn", "--seed", "3", "--out", str(out), "--iters", "3"])
    assert r.exit_code == 0, r.output
    for f in ("generator.safetensors", "config.json", "identities.json", "manifest.json", "before_after.png"):
        assert (out / f).is_file(), f
    cfg = json.loads((out / "config.json").read_text())
    book = json.loads((out / "identities.json").read_text())
    assert len(book["identities"]) == 1 and book["base_generator"] == "digiface-dcgan64"
    ident = book["identities"][0]
    assert ident["key"] == "seed:3" and ident["run"] == "run"
    assert cfg["target_distance"] == pytest.approx(cfg["target_distance_rel"] * cfg["radius"])
    assert ident["latent"] == {"source": "seed", "seed": 3}
    search = ident["target_search"]  # identity-checked UFO: the chosen target is the farthest candidate
    assert search["candidates"] == cfg["target_search"] + 1 == 65
    assert search["target_id_dist"] >= search["formula_target_id_dist"]
    assert ident["norm_w_t"] == pytest.approx(cfg["target_distance"], rel=1e-4)
    man = json.loads((out / "manifest.json").read_text())
    assert man["base_sha256"] != man["result_sha256"]
    assert man["identities"] == [ident["identity_hash"]] and book["base_sha256"] == man["base_sha256"]
    assert not (tmp_path / "run.partial").exists()
    r = CliRunner().invoke(main, ["sample", "--generator", str(out), "--seeds", "0", "--out", str(tmp_path / "s.npy")])
    assert r.exit_code == 0, r.output
    assert cfg["push_weight"] == 0  # --push-past is off by default


def test_cli_push_past_resolves_its_margin_from_the_calibration(tmp_path, generator, identity):
    from guide_engine.engine.files import state_sha256
    from guide_engine.guide.calibration import calibrate
    from guide_engine.guide.config import PUSH_MARGIN_REL

    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["unlearn", "--seed", "3", "--out", str(out), "--iters", "2", "--push-past"])
    assert r.exit_code == 0, r.output
    cfg = json.loads((out / "config.json").read_text())
    median = calibrate(generator, identity, state_sha256(generator))["strangers_dist_median"]
    assert cfg["push_weight"] > 0 and cfg["push_margin"] == pytest.approx(PUSH_MARGIN_REL * median)
    assert "push" in (out / "history.csv").read_text().splitlines()[0].split(",")


def test_cli_from_image(tmp_path, generator):
    from guide_engine.engine.images import save_png

    with torch.no_grad():
        img = torch.nn.functional.interpolate(generator.synthesize(generator.latents_for_seeds([7])), size=200)
    save_png(img, tmp_path / "face.png")
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["unlearn", "--image", str(tmp_path / "face.png"), "--out", str(out), "--iters", "2",
                                  "--invert-steps", "5"])
    assert r.exit_code == 0, r.output
    entry = json.loads((out / "identities.json").read_text())["identities"][0]
    assert entry["latent"]["source"] == "inversion" and entry["key"] == f"photo:{entry['latent']['photo_sha256']}"
    face = entry["latent"]["face"]  # where the face was: box, landmarks, score, which of how many
    assert face["faces_found"] == 1 and face["face"] == 0 and face["crop"] == "template" and len(face["landmarks"]) == 5
    assert -10 < face["box"][0] < 100 and face["box"][2] > 100 and face["photo_size"] == [200, 200]  # fills the frame
    assert entry["latent"]["aligned"] == "aligned.png" and (out / "aligned.png").is_file()
    assert "inversion came to pixel MSE" in r.output


@pytest.mark.parametrize("args,msg", [
    (["--image", "missing.png"], "no such file"),
    (["--image", "notimage.png"], "not a readable image"),
    (["--image", "tiny.png"], "too small"),
    (["--seed", "1", "--iters", "0"], "--iters"),
    (["--seed", "1", "--generator", "stylegan-nope"], "known generators"),
    (["--seed", "1", "--losses", "local,bogus"], "--losses"),
    (["--seed", "1", "--target-angle", "120"], "--target-angle"),
    ([], "nothing to forget"),
    (["--images", "nodir"], "not a directory"),
])
def test_bad_inputs(tmp_path, monkeypatch, args, msg):
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    (tmp_path / "notimage.png").write_text("hello")
    Image.new("RGB", (20, 40)).save(tmp_path / "tiny.png")
    r = CliRunner().invoke(main, ["unlearn", "--out", "run", *args])
    assert r.exit_code == 2, r.output
    assert msg in r.output and "Traceback" not in r.output
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()


def test_inversion_never_ends_at_the_average_latent(generator, identity):
    """The DCGAN's w_avg = 0 draws a face the loss likes for some photos (here: that very face), but its ReLUs
    are dead there, so a descent that starts at w_avg never moves; w_u = w_avg then has no direction for a UFO
    target and the run failed. The inversion now descends from the best prior draw instead."""
    from guide_engine.guide.invert import invert

    with torch.no_grad():
        photo = generator.synthesize(generator.average_latent())
    w, _ = invert(generator, identity, photo, steps=3, progress=False)
    assert not torch.equal(w, generator.average_latent())


def test_an_inversion_farther_than_the_line_is_warned_about(generator, identity, tmp_path, capsys):
    """The inversion's warning fires when the generator's closest face is past the training network's same-person
    line (here a line of 0: nothing comes within it), and stays silent when the face is within it."""
    from guide_engine.engine.images import save_png
    from guide_engine.guide.identities import Source, find_identity

    with torch.no_grad():
        save_png(generator.synthesize(generator.latents_for_seeds([31])), tmp_path / "p.png")
    src = Source(image=str(tmp_path / "p.png"))
    for line, warned in ((0.0, True), (10.0, False)):
        calib = {"strangers_dist_p1": line, "strangers_dist_median": 0.5}
        _, how, _ = find_identity(generator, identity, src, 2, progress=False, calib=calib)
        err = capsys.readouterr().err
        assert ("warning: " in err and "farther from the photo than the same-person line" in err) == warned, err
        assert how["same_person_line"] == line and how["inversion_id_dist"] > 0
