"""verify: metrics on constructed cases, exit codes, JSON output, the report on a tiny run."""
import json

import pytest
import torch
from click.testing import CliRunner

from guide_engine.engine.cli import main
from guide_engine.guide import metrics
from guide_engine.guide.job import state_sha256


@pytest.fixture(scope="module")
def calib(generator, identity):
    return metrics.calibrate(generator, identity, state_sha256(generator))


def test_calibration_is_sane(calib):
    assert 0 < calib["strangers_dist_p5"] < calib["strangers_dist_median"]
    assert calib["pairs"] == 200 * 200 and calib["network_threshold"] == 0.6


def test_calibration_uses_the_networks_own_distance(generator, identity, tmp_path, monkeypatch):
    """An identity net whose distance is 1 - cos (ArcFace's) is calibrated in 1 - cos, not euclidean."""
    import torch.nn.functional as F

    monkeypatch.setenv("GUIDE_ENGINE_HOME", str(tmp_path))

    class CosineNet:
        name, threshold = "cosine-dlib", None
        descriptors = staticmethod(identity.descriptors)

        @staticmethod
        def distance(a, b):
            return 1 - F.cosine_similarity(a, b, dim=1)

    c = metrics.calibrate(generator, CosineNet(), "0" * 64)
    assert c["strangers_dist_median"] == pytest.approx(1 - c["strangers_cos_mean"], abs=0.03)  # cos-like scale
    assert c["strangers_dist_median"] < 0.3 and c["strangers_frac_under_network_threshold"] is None


def test_identical_generator_is_not_forgotten(generator, identity, calib):
    w_u = generator.latents_for_seeds([4])
    report, _ = metrics.evaluate(generator, generator.synthesize, identity, w_u, calib, 10.0, n_preserve=32)
    assert report["identity"]["id_sim"] == pytest.approx(1.0, abs=1e-5)
    assert report["preservation"]["fd_embedding"] == pytest.approx(0.0, abs=1e-6)
    assert report["preservation"]["same_person_frac"] == 1.0
    assert not report["identity"]["forgotten"] and not report["passed"]


def test_swapped_identity_is_flagged_forgotten(generator, identity, calib):
    w_u = generator.latents_for_seeds([4])
    cands = generator.latents_for_seeds(range(5, 40))
    with torch.no_grad():  # another identity: the stranger farthest from w_u
        d = identity.descriptors(generator.synthesize(torch.cat([w_u, cands])))
    other = cands[(d[1:] - d[:1]).norm(dim=1).argmax()][None]

    def infer(w):  # replaces exactly w_u's image with another identity's, keeps the rest
        out = generator.synthesize(w)
        hit = (w - w_u).flatten(1).norm(dim=1) < 1e-6
        out[hit] = generator.synthesize(other)
        return out

    report, _ = metrics.evaluate(generator, infer, identity, w_u, calib, 10.0, n_preserve=32)
    assert report["identity"]["forgotten"] and report["identity"]["id_dist"] > calib["strangers_dist_median"]
    assert report["preservation"]["same_person_frac"] == 1.0 and report["passed"]


def test_frechet_distance():
    a = torch.randn(500, 4, dtype=torch.float64)
    assert metrics.frechet_distance(a, a) == pytest.approx(0, abs=1e-9)
    assert metrics.frechet_distance(a, a + 2.0) == pytest.approx(16.0, rel=1e-6)  # |mu shift|^2 = 4 * 2^2


@pytest.fixture(scope="module")
def tiny_run(tiny_run_factory):
    return tiny_run_factory(2)


def test_verify_tiny_run_fails_with_exit_1_and_json(tiny_run):
    # 2 iterations cannot forget anyone: verify must say so with exit code 1
    r = CliRunner().invoke(main, ["verify", str(tiny_run), "--n-preserve", "16", "--no-reinversion", "--json"])
    assert r.exit_code == 1, r.output
    report = json.loads(r.output[: r.output.rindex("}") + 1])
    assert report["passed"] is False and report["identity"]["forgotten"] is False
    assert (tiny_run / "report.json").is_file() and (tiny_run / "report.png").is_file()


def test_verify_usage_errors(tmp_path):
    r = CliRunner().invoke(main, ["verify", str(tmp_path)])
    assert r.exit_code == 2 and "not an unlearn run directory" in r.output
    r = CliRunner().invoke(main, ["verify", str(tmp_path), "--backend", "onnxruntime"])
    assert r.exit_code == 2 and "export" in r.output
