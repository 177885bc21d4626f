"""Bring your own models: NVlabs pickles (StyleGAN, EG3D) through the real loading path, ArcFace IR-SE50."""
import json
import math
import pickle
import shutil
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from guide_engine.apps.cli import main
from guide_engine.engine.errors import GuideEngineError
from guide_engine.engine.models import nvlabs

FAKE = Path(__file__).with_name("fake_nvlabs_networks.py")


@pytest.fixture(scope="module")
def nvlabs_code(tmp_path_factory):
    """A stand-in NVlabs checkout: training/fake_networks.py. Modules built from it and pickled can only
    be unpickled with this folder importable, as with real NVlabs pickles."""
    code = tmp_path_factory.mktemp("nvlabs_code")
    (code / "training").mkdir()
    (code / "training" / "__init__.py").write_text("")
    shutil.copy(FAKE, code / "training" / "fake_networks.py")
    sys.path.insert(0, str(code))
    try:
        import training.fake_networks as fake

        torch.manual_seed(0)
        pkls = {}
        for kind, G in (("stylegan", fake.StyleGANLike()), ("eg3d", fake.EG3DLike())):
            pkls[kind] = code.parent / f"{code.name}-{kind}.pkl"
            with open(pkls[kind], "wb") as f:
                pickle.dump({"G": G, "D": None, "G_ema": G.eval()}, f)
    finally:  # forget the code again: loading must go through --nvlabs-code
        sys.path.remove(str(code))
        for m in [m for m in sys.modules if m == "training" or m.startswith("training.")]:
            del sys.modules[m]
    yield code, pkls
    nvlabs.configure(trust_pickle=False, nvlabs_code=None)


def _load(pkl, code, trust=True):
    nvlabs.configure(trust_pickle=trust, nvlabs_code=str(code) if code else None)
    return nvlabs.load_generator(f"nvlabs:{pkl}")


def test_refusals_one_line(nvlabs_code, tmp_path):
    code, pkls = nvlabs_code
    cases = [([], "--trust-pickle"), (["--trust-pickle"], "--nvlabs-code"),
             (["--trust-pickle", "--nvlabs-code", str(tmp_path)], "needs module 'training'"),
             (["--trust-pickle", "--nvlabs-code", str(tmp_path / "nope")], "no such directory")]
    for extra, msg in cases:
        r = CliRunner().invoke(main, ["sample", "--generator", f"nvlabs:{pkls['eg3d']}", "--seeds", "0",
                                      "--out", str(tmp_path / "x.png"), *extra])
        assert r.exit_code == 2 and msg in r.output and "Traceback" not in r.output, (extra, r.output)
        assert len(r.output.strip().splitlines()) == 1
    (tmp_path / "junk.pkl").write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(GuideEngineError, match="not a readable NVlabs pickle"):
        _load(tmp_path / "junk.pkl", code)


def test_stylegan_adapter(nvlabs_code):
    code, pkls = nvlabs_code
    G = _load(pkls["stylegan"], code)
    assert isinstance(G, nvlabs.StyleGANGenerator)
    assert G.latent_shape == (4, 8) and G.resolution == 64
    w = G.latents_for_seeds([0, 1])
    assert w.shape == (2, 4, 8)
    torch.testing.assert_close(G.latents_for_seeds([1]), w[1:])  # a latent depends on its seed only
    torch.testing.assert_close(G.average_latent(), G.G.mapping.w_avg.expand(1, 4, 8))
    x, rep = G.synthesize_with_representation(w)
    assert x.shape == (2, 3, 64, 64) and rep is x
    torch.testing.assert_close(G.synthesize(w), x)  # noise_mode="const": deterministic
    names = {n for n, p in G.G.named_parameters() if any(p is q for q in G.trainable_parameters())}
    assert names == {n for n, _ in G.G.named_parameters() if n.startswith("synthesis.")}


def test_eg3d_cameras_follow_eg3d_conventions():
    pose = nvlabs.look_at_pose(math.pi / 2, math.pi / 2, torch.zeros(3), radius=1.0)
    torch.testing.assert_close(pose[0, :3, 3], torch.tensor([0.0, 0.0, 1.0]), atol=1e-6, rtol=0)  # EG3D's doc example
    torch.testing.assert_close(pose[0, :3, 2], torch.tensor([0.0, 0.0, -1.0]), atol=1e-6, rtol=0)  # looks at the origin
    torch.testing.assert_close(pose[0, :3, :3].T @ pose[0, :3, :3], torch.eye(3), atol=1e-6, rtol=0)
    k = nvlabs.intrinsics()
    assert k[0, 0].item() == pytest.approx(4.26339, abs=1e-4) and k[0, 2].item() == 0.5  # FOV_to_intrinsics(18.837)


def test_nvlabs_custom_ops_import_after_build(monkeypatch):
    """NVlabs' custom_ops imports what cpp_extension.load built by its name: the wrapped load registers it."""
    import importlib
    import types

    from torch.utils import cpp_extension

    built = types.ModuleType("fake_bias_act_plugin")
    monkeypatch.setattr(cpp_extension, "load", lambda name, *a, **k: built)
    monkeypatch.delitem(sys.modules, "fake_bias_act_plugin", raising=False)
    with pytest.raises(ModuleNotFoundError):  # what EG3D hit on torch 2.11 (H100, bench/eg3d.py)
        cpp_extension.load("fake_bias_act_plugin", sources=[])
        importlib.import_module("fake_bias_act_plugin")
    nvlabs.register_built_extensions()
    nvlabs.register_built_extensions()  # once: not wrapped twice
    assert cpp_extension.load("fake_bias_act_plugin", sources=[]) is built
    assert importlib.import_module("fake_bias_act_plugin") is built
    monkeypatch.delitem(sys.modules, "fake_bias_act_plugin")


def test_eg3d_adapter_views_planes_and_trained_subset(nvlabs_code):
    from guide_engine.guide.config import UnlearnConfig
    from guide_engine.guide.unlearn import iteration_latents

    code, pkls = nvlabs_code
    G = _load(pkls["eg3d"], code)
    assert isinstance(G, nvlabs.EG3DGenerator) and G.latent_shape == (5, 8)
    assert G.cam["pivot"].tolist() == pytest.approx([0, 0, 0.2]) and G.cam["radius"] == 2.7  # train.py's keys
    w = G.latents_for_seeds([0, 1])
    x, planes = G.synthesize_with_representation(w)
    assert x.shape == (2, 3, 64, 64) and planes.shape == (2, 96, 16, 16)
    assert G.G.last_call["nrr"] == 32 and G.G.last_call["noise_mode"] == "const"  # the pickle's rendering resolution
    torch.testing.assert_close(G.G.last_call["c"][0], G.c_front[0])
    assert G.G._last_planes is None  # the adapter does not keep the planes alive
    # one camera per iteration: yaw within +-pi/12 of the front, pitch fixed (offset -0.2), radius 2.7
    cfg = UnlearnConfig(alpha_max=1.0)
    yaws = []
    for it in range(12):
        view = iteration_latents(G, w[:1], w[1:], cfg, it).view
        origin = view[0, :16].view(4, 4)[:3, 3]
        assert origin.norm().item() == pytest.approx(2.7, rel=1e-5)
        assert origin[1].item() == pytest.approx(2.7 * math.cos(math.acos(1 - 2 * (math.pi / 2 - 0.2) / math.pi)),
                                                 rel=1e-5)
        yaws.append(math.atan2(origin[0].item(), origin[2].item()))
    assert max(abs(y) for y in yaws) <= math.pi / 12 + 1e-6 and len(set(round(y, 6) for y in yaws)) == 12
    trained = {n for n, p in G.G.named_parameters() if any(p is q for q in G.trainable_parameters())}
    assert trained and all(n.startswith("backbone.synthesis.") for n in trained)
    assert {n for n, _ in G.G.named_parameters() if n.startswith("backbone.synthesis.")} == trained


def test_sampling_an_eg3d_pickle_repeats(nvlabs_code):
    """`sample` renders EG3D's random ray samples under a seeded RNG: the same seeds give the same images."""
    from guide_engine.engine.sampling import image_source

    code, pkls = nvlabs_code
    _load(pkls["eg3d"], code)  # trust the pickle and its code
    render, _ = image_source(f"nvlabs:{pkls['eg3d']}", "torch", "cpu")
    torch.manual_seed(1)
    first = render([4, 5])
    torch.manual_seed(2)  # a different global state: must not matter
    assert torch.equal(first, render([4, 5]))


def test_eg3d_runs_repeat_despite_random_rendering(nvlabs_code, identity):
    """EG3D draws ray samples from the global RNG; the loop seeds it per iteration, so two runs (and a
    run in micro-batches of 1 against the same run's iteration-wise seeding) repeat."""
    from guide_engine.guide.config import UnlearnConfig
    from guide_engine.guide.unlearn import run_unlearning

    code, pkls = nvlabs_code
    G = _load(pkls["eg3d"], code)
    w = G.latents_for_seeds([0, 1])
    cfg = UnlearnConfig(iters=2, alpha_max=0.5)
    runs = []
    for _ in range(2):
        torch.manual_seed(len(runs))  # a different global state before each run: must not matter
        G_u, history = run_unlearning(G, identity, w[:1], w[1:], cfg, progress=False)
        runs.append((G_u.state_dict(), history[-1]["total"]))
    assert runs[0][1] == runs[1][1]
    for k in runs[0][0]:
        assert torch.equal(runs[0][0][k], runs[1][0][k]), k


def test_unlearn_and_verify_an_nvlabs_pickle(nvlabs_code, tmp_path):
    """The CLI end to end on the EG3D-like pickle; the result loads back in the user's NVlabs format."""
    code, pkls = nvlabs_code
    access = ["--trust-pickle", "--nvlabs-code", str(code)]
    run = tmp_path / "run"
    r = CliRunner().invoke(main, ["unlearn", "--generator", f"nvlabs:{pkls['eg3d']}", *access, "--seed", "3",
                                  "--iters", "2", "--target-search", "4", "--out", str(run)])
    assert r.exit_code == 0, r.output
    # the detector finds no face in the toy's drawings: the face check of targets is not made, and the user told
    assert "targets are chosen without the face check" in r.output
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["generator"] == f"nvlabs:{pkls['eg3d']}" and cfg["target_search"] == 4
    sys.path.insert(0, str(code))
    try:
        with open(run / "generator.pkl", "rb") as f:
            data = pickle.load(f)
    finally:
        sys.path.remove(str(code))
    G_u = data["G_ema"]
    assert set(data) == {"G", "D", "G_ema"} and data["G"] is G_u  # the user's format; G no longer knows the person
    base = _load(pkls["eg3d"], code).G
    changed = {n for n, p in G_u.named_parameters() if not torch.equal(p, base.get_parameter(n))}
    assert changed and all(n.startswith("backbone.synthesis.") for n in changed)
    from safetensors.torch import load_file

    st = load_file(str(run / "generator.safetensors"))
    torch.testing.assert_close(st["G.backbone.synthesis.fc.weight"], G_u.backbone.synthesis.fc.weight)

    r = CliRunner().invoke(main, ["verify", str(run), *access, "--no-reinversion", "--n-preserve", "16", "--json"])
    assert r.exit_code in (0, 1), r.output
    report = json.loads((run / "report.json").read_text())
    assert report["preservation"]["n"] == 16 and 0 <= report["preservation"]["same_person_frac"] <= 1
    assert report["identity"]["id_views"] == 11  # EG3D: the identity is judged over 11 yaw views
    assert report["identity"]["unlearned_face"]["is_face"] is None  # not checked, and no smear warning
    assert "not checked" in report["identity"]["unlearned_face"]["what"]
    r = CliRunner().invoke(main, ["verify", str(run), *access, "--no-reinversion", "--n-preserve", "16", "--json"])
    assert r.exit_code in (0, 1), r.output
    again = json.loads((run / "report.json").read_text())  # EG3D's random ray samples: seeded, the same figures
    assert (again["identities"], again["preservation"]) == (report["identities"], report["preservation"])
    r = CliRunner().invoke(main, ["verify", str(run), "--no-reinversion"])  # without trust: refused, one line
    assert r.exit_code == 2 and "--trust-pickle" in r.output


def _random_ir_se50_state() -> dict:
    """IR-SE50's state dict with random values at sane scales (unit-ish activations through 24 residual units)."""
    from guide_engine.engine.models.arcface import IRSE50

    def rand(k, v):
        if not v.dtype.is_floating_point:
            return v
        if v.dim() > 1:
            return torch.randn_like(v) * (1 / v[0].numel()) ** 0.5
        if k.endswith(("running_var", "weight")):
            return 1 + 0.1 * torch.rand_like(v)
        return 0.1 * torch.randn_like(v)

    return {k: rand(k, v) for k, v in IRSE50().state_dict().items()}


def test_arcface_ir_se50_loads_official_state_dict(tmp_path):
    """A state dict with the official model_ir_se50.pth key names and shapes (random values)."""
    from guide_engine.engine.models import zoo

    state = _random_ir_se50_state()
    # facts of the official file (InsightFace_Pytorch / pSp / GUIDE's arcface.py layout), independent of our module
    assert len(state) == 397
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    assert sum(v.numel() for k, v in state.items() if not k.endswith(buffers)) == 43_797_696
    for k, shape in {"input_layer.0.weight": (64, 3, 3, 3), "body.0.res_layer.5.fc1.weight": (4, 64, 1, 1),
                     "body.3.shortcut_layer.0.weight": (128, 64, 1, 1), "output_layer.3.weight": (512, 25088),
                     "body.23.res_layer.4.weight": (512,), "output_layer.4.running_var": (512,)}.items():
        assert tuple(state[k].shape) == shape, k
    torch.save(state, tmp_path / "model_ir_se50.pth")
    net = zoo.load_identity(f"arcface-ir-se50:{tmp_path / 'model_ir_se50.pth'}")
    x = torch.rand(3, 3, 256, 256) * 2 - 1
    e = net.embed(x)
    assert e.shape == (3, 512)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(3))
    feats, desc = net.features(x)
    assert [f.shape[1] for f in feats] == [64, 128, 256, 512] and desc.shape == (3, 512)
    assert net.distance(desc, desc).abs().max() < 1e-5
    net.train()
    assert not net.net.training  # BatchNorm and dropout stay in inference mode
    (tmp_path / "bad.pth").write_bytes(b"nope")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    for f, msg in (("missing.pth", "no such file"), ("bad.pth", "not a readable"), ("other.pth", "not IR-SE50")):
        with pytest.raises(GuideEngineError, match=msg):
            zoo.load_identity(f"arcface-ir-se50:{tmp_path / f}")


def test_robust_mode_attacks_with_the_training_network_arcface(generator, tmp_path):
    """With ArcFace training, the robust mode's attacker inverts with ArcFace too: the attack distance the loop
    records at iteration 0 is that of an attacker built on ArcFace alone (advanced once through the
    pretrained generator, as the loop does before its first step), in ArcFace's distance."""
    from guide_engine.engine.models import zoo
    from guide_engine.guide.config import UnlearnConfig
    from guide_engine.guide.robust import Attacker, RobustConfig
    from guide_engine.guide.target import ufo_target
    from guide_engine.guide.unlearn import ATTACKER_SEED, pretrained_photos, run_unlearning

    torch.save(_random_ir_se50_state(), tmp_path / "model_ir_se50.pth")
    arcface = zoo.load_identity(f"arcface-ir-se50:{tmp_path / 'model_ir_se50.pth'}")
    w_u = generator.latents_for_seeds([5])
    w_t = ufo_target(w_u, generator.average_latent(), 10.0)
    robust = RobustConfig(pool=2, steps=1, margin=0.5, preserve=0)
    cfg = UnlearnConfig(iters=1, alpha_max=5.0, n_adj=1, n_glob=1, seed=3, robust=robust)
    _, history = run_unlearning(generator, arcface, w_u, w_t, cfg, progress=False)
    alone = Attacker(generator, arcface, pretrained_photos(generator, w_u, cfg.seed), robust,
                     cfg.seed + ATTACKER_SEED * 0)
    alone.advance(generator, 0)
    assert history[0]["attack_dist"] == pytest.approx(alone.loss(generator, generator, 0)["attack_dist"].item(),
                                                      rel=1e-4)


def test_robust_mode_on_an_eg3d_pickle_repeats_and_trains(nvlabs_code, identity, tmp_path):
    """The attacker and its search rounds render through EG3D's random ray samples inside the loop's per-iteration
    seeding: two robust runs and a resumed one repeat bit for bit, and differ from GUIDE alone."""
    import dataclasses

    from guide_engine.guide.config import UnlearnConfig
    from guide_engine.guide.robust import RobustConfig
    from guide_engine.guide.unlearn import run_unlearning

    code, pkls = nvlabs_code
    G = _load(pkls["eg3d"], code)
    w = G.latents_for_seeds([0, 1])
    robust = RobustConfig(pool=2, steps=1, margin=0.6, preserve=1, replay=1, search_every=1, search_starts=2,
                          search_steps=1)
    cfg = UnlearnConfig(iters=2, alpha_max=0.5, robust=robust)  # a search round every iteration, rays and all
    runs = []
    for i in range(2):
        torch.manual_seed(i)  # a different global state before each run: must not matter
        G_u, history = run_unlearning(G, identity, w[:1], w[1:], cfg, progress=False)
        runs.append((G_u.state_dict(), history))
    ck = tmp_path / "ck.pt"
    run_unlearning(G, identity, w[:1], w[1:], cfg, checkpoint=ck, progress=False, stop_after=1)
    torch.manual_seed(2)
    resumed = run_unlearning(G, identity, w[:1], w[1:], cfg, checkpoint=ck, resume=True, progress=False)[0].state_dict()
    assert runs[0][1][-1]["total"] == runs[1][1][-1]["total"] and "attack_dist" in runs[0][1][0]
    for k in runs[0][0]:
        assert torch.equal(runs[0][0][k], runs[1][0][k]) and torch.equal(runs[0][0][k], resumed[k]), k
    plain, _ = run_unlearning(G, identity, w[:1], w[1:], dataclasses.replace(cfg, robust=None), progress=False)
    assert any(not torch.equal(v, plain.state_dict()[k]) for k, v in runs[0][0].items())


def _has_lpips() -> bool:
    try:
        import lpips  # noqa: F401
        import torchvision  # noqa: F401
        return True
    except Exception:  # not installed, or torchvision built for another torch
        return False


@pytest.mark.skipif(_has_lpips(), reason="lpips is installed: the refusal does not apply")
def test_lpips_without_the_package_is_a_one_line_error(tmp_path):
    r = CliRunner().invoke(main, ["unlearn", "--seed", "1", "--iters", "1", "--out", str(tmp_path / "run"),
                                  "--lpips-vgg", str(tmp_path / "vgg16.pth")])
    assert r.exit_code == 2 and "pip install lpips" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()


@pytest.mark.skipif(not _has_lpips(), reason="needs the lpips package and a torchvision that imports beside torch")
def test_lpips_vgg_reads_backbone_weights_from_the_path(tmp_path):
    import torchvision

    from guide_engine.engine.models.lpips_vgg import LPIPSVGG

    torch.save(torchvision.models.vgg16(weights=None).state_dict(), tmp_path / "vgg16.pth")
    vgg = torch.load(tmp_path / "vgg16.pth")
    net = LPIPSVGG(tmp_path / "vgg16.pth")
    torch.testing.assert_close(net.lpips.net.slice2.get_submodule("5").weight, vgg["features.5.weight"])
    torch.testing.assert_close(net.lpips.net.slice5.get_submodule("28").weight, vgg["features.28.weight"])
    x, y = torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(2, 3, 64, 64) * 2 - 1
    d = net(x, y)
    assert d.shape == (2,) and (d > 0).all() and net(x, x).abs().max() < 1e-6
    run = tmp_path / "run"
    r = CliRunner().invoke(main, ["unlearn", "--seed", "1", "--iters", "2", "--target-search", "2", "--out", str(run),
                                  "--lpips-vgg", str(tmp_path / "vgg16.pth")])
    assert r.exit_code == 0, r.output
    assert json.loads((run / "config.json").read_text())["perceptual"].startswith("lpips-vgg")
