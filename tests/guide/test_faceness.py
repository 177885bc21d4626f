"""The target has to be a face: a candidate that is no face the generator draws well is never chosen (the dark
smear a real photo's inversion once got), the search widens when none is, and verify says what it sees at w_u."""
import json
import math

import pytest
import torch

from guide_engine.engine.files import state_sha256
from guide_engine.guide.faceness import LookRange, look, look_range
from guide_engine.guide.target import search_ufo_target, typical_radius


def test_only_qualified_candidates_are_chosen_and_the_search_widens(axis_toy):
    toy, w_avg, w_u = axis_toy, torch.zeros(1, 3), torch.tensor([[3.0, 0.0, 0.0]])
    free, _ = search_ufo_target(toy, toy, w_u, w_avg, 2.0, 64, 30.0, torch.Generator().manual_seed(0))
    # qualified: candidates leaning to negative axis 1, the side the unqualified choice did not take
    side = -math.copysign(1.0, free[0, 1].item())
    w_t, info = search_ufo_target(toy, toy, w_u, w_avg, 2.0, 64, 30.0, torch.Generator().manual_seed(0),
                                  qualify=lambda x: {"ok": (x[:, 1] * side > 0).numpy()})
    assert w_t[0, 1].item() * side > 0 and info["face"] is True and not info["widened"]
    assert 0 < info["candidates_face"] < info["candidates"]
    # qualified only beyond 45 degrees from the UFO direction: nothing within 30, so the search widens to 60
    def far(x):
        cos = torch.nn.functional.cosine_similarity(x, -w_u.expand_as(x))
        return {"ok": (cos < math.cos(math.radians(45))).numpy()}

    w_t, info = search_ufo_target(toy, toy, w_u, w_avg, 2.0, 64, 30.0, torch.Generator().manual_seed(0), qualify=far)
    assert info["widened"] and info["max_angle_deg"] == 60.0 and info["face"] is True and info["angle_deg"] > 45
    # nothing qualifies at all: the formula's target, and `face` False says so
    w_t, info = search_ufo_target(toy, toy, w_u, w_avg, 2.0, 8, 30.0, torch.Generator().manual_seed(0),
                                  qualify=lambda x: {"ok": torch.zeros(len(x), dtype=torch.bool).numpy()})
    torch.testing.assert_close(w_t, w_avg - 2.0 * w_u / 3.0)
    assert info["face"] is False and info["max_angle_deg"] == 90.0


@pytest.fixture(scope="module")
def looks(generator):
    return look_range(generator, state_sha256(generator))


@pytest.mark.weights
def test_the_look_range_is_the_generators_own_and_cached(generator, looks, tmp_path, monkeypatch):
    b0, b1 = looks.brightness
    assert 5 < b0 < 60 < b1 < 220 and looks.contrast[0] < looks.contrast[1] and looks.detected_frac > 0.9
    faces = generator.synthesize(generator.latents_for_seeds(range(5000, 5008))).detach()
    seen = looks.check(faces)
    assert seen["ok"].mean() >= 0.75  # the generator's own faces are faces
    smear = torch.full((2, 3, 64, 64), -0.93)  # almost black: brightness 8.9 of 255
    smear[1, :, 20:40, 20:40] = 0.9
    dark = looks.check(smear)
    assert not dark["ok"].any() and not dark["face"].any()
    assert "no face found" in looks.describe(dark) and look(smear)[0][0] == pytest.approx(8.925, abs=0.01)
    monkeypatch.setenv("GUIDE_ENGINE_HOME", str(tmp_path))
    first = look_range(generator, state_sha256(generator))
    path, = (tmp_path / "calibration").glob("look__*.json")
    saved = json.loads(path.read_text())
    saved["brightness"] = [0, 255]  # edited: its content hash no longer matches, so it is measured again
    path.write_text(json.dumps(saved))
    assert look_range(generator, state_sha256(generator)) == first
    assert isinstance(first, LookRange)


@pytest.mark.weights
def test_a_latent_outside_the_shell_whose_far_side_is_dark_gets_a_face(generator, identity, looks):
    """|w_u| = 13 (above the prior's 99th percentile, where real photos' inversions land), opposite the darkest of
    3,000 prior directions (seed 1280's): the farthest candidate by dlib is no face (brightness 8.8); the chosen
    target is one."""
    z = generator.latents_for_seeds([1280])
    w_u = -13.0 * z / z.norm()
    w_avg, r = generator.average_latent(), typical_radius(generator)
    before, _ = search_ufo_target(generator, identity, w_u, w_avg, r, 64, 30.0, torch.Generator().manual_seed(0))
    assert not looks.check(generator.synthesize(before))["ok"][0]  # the old choice: a smear
    w_t, info = search_ufo_target(generator, identity, w_u, w_avg, r, 64, 30.0, torch.Generator().manual_seed(0),
                                  qualify=looks.target_check)
    assert looks.check(generator.synthesize(w_t))["ok"][0] and info["face"] is True
    assert info["candidates_face"] >= 1 and (w_t - w_avg).norm().item() == pytest.approx(r, rel=1e-4)
