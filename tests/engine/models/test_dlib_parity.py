"""The PyTorch port of dlib's face descriptor matches dlib itself (dlib-bin, a test-only dependency)."""
import numpy as np
import pytest
import torch

from guide_engine.engine.images import to_uint8
from guide_engine.engine.models import zoo

dlib = pytest.importorskip("dlib", reason="dlib-bin (the `dev` extra) is needed for the parity test")

N = 24


@pytest.fixture(scope="module")
def chips(generator):
    """N generator faces as dlib sees them: 150x150 uint8 RGB chips (N, 150, 150, 3)."""
    with torch.no_grad():
        x = generator.synthesize(generator.latents_for_seeds(range(N)))
        x = torch.nn.functional.interpolate(x, size=150, mode="bilinear", align_corners=False)
    return to_uint8(x)


def test_descriptors_match_dlib(chips, identity):
    dat = str(zoo.require("dlib-resnet-v1"))
    rec = dlib.face_recognition_model_v1(dat)
    ref = np.array([np.array(rec.compute_face_descriptor(np.ascontiguousarray(c))) for c in chips])
    with torch.no_grad():
        ours = identity.net(torch.from_numpy(chips).permute(0, 3, 1, 2).float()).numpy()
    err = np.abs(ours - ref).max()
    print(f"dlib parity on {N} generator images: max |diff| = {err:.3e}")
    assert err < 1e-4
    d_ref = np.linalg.norm(ref[:, None] - ref[None], axis=2)
    d_ours = np.linalg.norm(ours[:, None] - ours[None], axis=2)
    assert ((d_ref < 0.6) == (d_ours < 0.6)).all(), "same/different decisions at 0.6 differ"
    assert 1.0 < np.linalg.norm(ref, axis=1).min()  # raw dlib descriptors are not unit-norm


def test_embed_is_unit_norm(identity, generator):
    with torch.no_grad():
        e = identity.embed(generator.synthesize(generator.latents_for_seeds([0, 1, 2])))
    assert e.shape == (3, 128)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(3))
