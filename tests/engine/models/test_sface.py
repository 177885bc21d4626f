"""The judge (SFace on ONNX Runtime): our loader against plain ONNX Runtime, batched against one by one,
its preprocessing, that it separates the generator's identities, and that it can never train."""
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from guide_engine.apps.cli import main
from guide_engine.engine.models import zoo
from guide_engine.engine.models.sface import SFaceJudge, judge_input
from guide_engine.guide.target import latents_around


@pytest.fixture(scope="module")
def judge():
    return zoo.load_judge("sface-2021dec")


@pytest.fixture(scope="module")
def faces(generator):
    with torch.no_grad():
        return generator.synthesize(generator.latents_for_seeds(range(5)))


def test_loader_matches_plain_onnxruntime(judge, faces):
    """The repaired graph computes what the file computes: plain ONNX Runtime on the untouched file,
    fed one image at a time (and zeros for the inputs no node reads, which it insists on)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    plain = ort.InferenceSession(str(zoo.require("sface-2021dec")), opts, providers=["CPUExecutionProvider"])
    x = judge.to_input(faces)
    rows = []
    for i in range(len(x)):
        feed = {inp.name: np.zeros([d if isinstance(d, int) else 1 for d in inp.shape], np.float32)
                for inp in plain.get_inputs()}
        feed["data"] = x[i:i + 1]
        rows.append(plain.run(None, feed)[0])
    assert len(plain.get_inputs()) == 30  # data + the 29 unused weights the repair drops
    np.testing.assert_allclose(judge.descriptors(faces).numpy(), np.concatenate(rows), atol=1e-4, rtol=1e-4)


def test_fixed_batch_graph_gives_the_same_rows(judge, faces):
    assert judge.batched  # this graph allows a dynamic batch (measured faster, see sface.py)
    one_by_one = SFaceJudge(zoo.require("sface-2021dec"), dynamic_batch=False)
    assert not one_by_one.batched and one_by_one.session.get_inputs()[0].shape[0] == 1
    np.testing.assert_allclose(one_by_one.descriptors(faces).numpy(), judge.descriptors(faces).numpy(), atol=1e-4)


def test_preprocessing_is_bgr_0_255_at_112():
    red = torch.full((1, 3, 64, 64), -1.0)
    red[:, 0] = 1.0
    x = judge_input(red)
    assert x.shape == (1, 3, 112, 112) and x.dtype == np.float32
    # R is the last channel, on the 0-255 scale (to within the resize's rounding: with one CPU thread, bilinear
    # weights on a constant -1 give -0.99999994, 8e-6 on this scale)
    np.testing.assert_allclose(x[0, 2], 255.0, atol=1e-3)
    np.testing.assert_allclose(x[0, :2], 0.0, atol=1e-3)


def test_judge_separates_the_generators_identities(generator, judge):
    """Latents 0.1 r apart are the same person to the judge (closer than strangers' 5th percentile,
    0.634 on this generator); random pairs mostly are not."""
    seeds = range(40, 48)
    w = generator.latents_for_seeds(seeds)
    near = torch.cat([latents_around(w[i:i + 1], 2, 1.0, torch.Generator().manual_seed(i)) for i in range(len(w))])
    with torch.no_grad():
        d, dn = judge.descriptors(generator.synthesize(w)), judge.descriptors(generator.synthesize(near))
    p5 = 0.634
    assert (judge.distance(d.repeat_interleave(2, 0), dn) < p5).all()
    i, j = torch.triu_indices(len(w), len(w), 1)
    assert (judge.distance(d[i], d[j]) < p5).float().mean() < 0.2


def test_judge_never_trains(tmp_path):
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["unlearn", "--seed", "0", "--out", str(out), "--identity", "sface-2021dec"])
    assert r.exit_code == 2 and "is the judge" in r.output and len(r.output.strip().splitlines()) == 1
    assert not out.exists() and not out.with_name("run.partial").exists()
    with pytest.raises(Exception, match="unknown judge"):
        zoo.load_judge("nope")
