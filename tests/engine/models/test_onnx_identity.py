"""The field's face networks (ArcFace MobileFaceNet, EdgeFace-S) through our differentiable ONNX interpreter:
held against ONNX Runtime on real generator faces, batched as one by one, gradients to the image; the
interpreter's operators against ONNX Runtime on a small graph of its own; ensembles in their own units."""
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from guide_engine.engine.errors import GuideEngineError
from guide_engine.engine.models import zoo
from guide_engine.engine.models.ensemble import EnsembleIdentity
from guide_engine.engine.models.onnx_graph import OnnxGraph
from guide_engine.engine.models.onnx_identity import SPECS

NETS = tuple(SPECS)


@pytest.fixture(scope="module")
def faces(generator):
    with torch.no_grad():
        return generator.synthesize(generator.latents_for_seeds(range(5000, 5006)))


@pytest.mark.weights
@pytest.mark.parametrize("name", NETS)
def test_matches_onnxruntime_on_generator_faces(name, faces):
    import onnxruntime as ort

    net = zoo.load_identity(name)
    with torch.no_grad():
        ours = net.descriptors(faces)
    session = ort.InferenceSession(str(zoo.require(name)), providers=["CPUExecutionProvider"])
    x = net.to_input(faces).numpy()
    theirs = np.concatenate([session.run(None, {session.get_inputs()[0].name: x[i:i + 1]})[0] for i in range(len(x))])
    assert ours.shape == (len(faces), 512)
    np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-4, rtol=0)
    assert torch.nn.functional.cosine_similarity(ours, torch.from_numpy(theirs)).min() > 0.99999


@pytest.mark.weights
@pytest.mark.parametrize("name", NETS)
def test_batched_rows_are_each_alone_and_gradients_reach_the_image(name, faces):
    """EdgeFace's graph was exported at batch 1 (its Reshape targets carry the 1): the repair must not mix rows."""
    net = zoo.load_identity(name)
    with torch.no_grad():
        together = net.descriptors(faces[:3])
        alone = torch.cat([net.descriptors(faces[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=1e-4)
    x = faces[:2].clone().requires_grad_(True)
    feats, desc = net.features(x)
    assert [tuple(f.shape[:2]) for f in feats][0][0] == 2 and len(feats) == 4
    (desc.sum() + sum(f.mean() for f in feats)).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.parameters())  # frozen: gradients reach the image only


@pytest.mark.weights
def test_a_generator_that_declares_no_crop_is_cut_as_its_photos_are_aligned():
    """crop_of is the one answer: an adapter without `face_crop` gets its photos aligned by FFHQ's recipe
    (engine/faces.py) and its faces cut for the networks by the five-point crop that recipe implies."""
    from types import SimpleNamespace

    from guide_engine.engine.crops import FFHQ, crop_of
    from guide_engine.engine.models.dcgan import DCGANGenerator
    from guide_engine.guide.networks import identity_network

    bare = SimpleNamespace(resolution=64)
    assert crop_of(bare) is FFHQ and crop_of(DCGANGenerator) is DCGANGenerator.face_crop
    assert identity_network("arcface-mbf", bare, base_sha="-").crop == "five-point"
    assert identity_network("arcface-mbf", DCGANGenerator, base_sha="-").crop == "full"


@pytest.mark.weights
def test_the_zoo_crops_ffhq_frames_and_builds_ensembles():
    from guide_engine.engine.crops import FFHQ
    from guide_engine.engine.models.dcgan import DCGANGenerator

    assert zoo.load_identity("arcface-mbf", face_crop=DCGANGenerator.face_crop).crop == "full"
    assert zoo.load_identity("arcface-mbf", face_crop=FFHQ).crop == "five-point"
    assert zoo.load_judge(face_crop=FFHQ).crop == "five-point" and zoo.load_judge().crop == "full"
    ens = zoo.load_identity("dlib-resnet-v1+edgeface-s")
    assert isinstance(ens, EnsembleIdentity) and ens.dim == 128 + 512 and ens.name == "dlib-resnet-v1+edgeface-s"
    for bad in ("dlib-resnet-v1+dlib-resnet-v1", "dlib-resnet-v1+", "sface-2021dec"):
        with pytest.raises(GuideEngineError):
            zoo.load_identity(bad)


class _Toy(torch.nn.Module):
    """An identity network whose descriptor is a fixed linear map of the image (for the ensemble's algebra)."""

    feature_name = "toy"

    def __init__(self, seed: int, name: str):
        super().__init__()
        self.name, self.dim = name, 5
        self.w = torch.nn.Parameter(torch.randn(3 * 4 * 4, 5, generator=torch.Generator().manual_seed(seed)),
                                    requires_grad=False)

    def descriptors(self, x):
        return x.flatten(1) @ self.w

    def features(self, x):
        return [x], self.descriptors(x)


def test_ensemble_distance_is_the_members_mean_in_their_own_units():
    a, b = _Toy(0, "a"), _Toy(1, "b")
    units = [0.2, 0.05]
    ens = EnsembleIdentity([a, b], units)
    x, y = torch.randn(4, 3, 4, 4), torch.randn(4, 3, 4, 4)
    got = ens.distance(ens.descriptors(x), ens.descriptors(y))

    def cos_dist(m):
        return 1 - torch.nn.functional.cosine_similarity(m.descriptors(x), m.descriptors(y))

    want = (cos_dist(a) / units[0] + cos_dist(b) / units[1]) / (1 / units[0] + 1 / units[1])
    torch.testing.assert_close(got, want)
    # each member apart, on its own part of the joined descriptors: its own 1 - cos, whatever its unit
    torch.testing.assert_close(ens.member_distances(ens.descriptors(x), ens.descriptors(y)),
                               torch.stack([cos_dist(a), cos_dist(b)]))
    feats, _ = ens.features(x)
    assert len(feats) == 2
    view = ens.at_precision("bf16")
    assert list(ens.members) == [a, b] and view is not ens  # the view does not change the ensemble it came from
    with pytest.raises(ValueError):
        EnsembleIdentity([a, b], [1.0, 0.0])


# -- the interpreter on a graph of its own --------------------------------------------------------------------------
def _graph(path, batch1_reshape: bool):
    """x (N, 2, 4, 4) => a chain over the operators the face graphs use, EdgeFace-style exported at batch 1."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(v, n) for n, v in [
        ("w", rng.normal(size=(4, 2, 3, 3)).astype(np.float32)), ("b", rng.normal(size=4).astype(np.float32)),
        ("slope", np.full((4, 1, 1), 0.1, np.float32)), ("two", np.array(2.0, np.float32)),
        ("lo", np.array(-0.5, np.float32)), ("shape", np.array([1 if batch1_reshape else -1, 4, 16], np.int64)),
        ("exp", np.array([1, 4, 16], np.int64)), ("s0", np.array([0], np.int64)), ("s1", np.array([8], np.int64)),
        ("ax", np.array([2], np.int64)), ("fc", rng.normal(size=(3, 32)).astype(np.float32)),
        ("fcb", rng.normal(size=3).astype(np.float32))]]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], strides=[1, 1]),
        helper.make_node("PRelu", ["c", "slope"], ["p"]),
        helper.make_node("Pow", ["p", "two"], ["q"]),
        helper.make_node("Clip", ["p", "lo", ""], ["k"]),
        helper.make_node("Add", ["q", "k"], ["a"]),
        helper.make_node("Reshape", ["a", "shape"], ["r"]),
        helper.make_node("ReduceL2", ["r"], ["n"], axes=[-1], keepdims=1),
        helper.make_node("Expand", ["n", "exp"], ["e"]),
        helper.make_node("Div", ["r", "e"], ["d"]),
        helper.make_node("Softmax", ["d"], ["sm"], axis=2),
        helper.make_node("Split", ["sm"], ["h1", "h2"], axis=1, split=[2, 2]),
        helper.make_node("Concat", ["h2", "h1"], ["cc"], axis=1),
        helper.make_node("Slice", ["cc", "s0", "s1", "ax"], ["sl"]),
        helper.make_node("Transpose", ["sl"], ["t"], perm=[0, 2, 1]),
        helper.make_node("ReduceMean", ["t"], ["m"], axes=[1], keepdims=0),
        helper.make_node("Erf", ["m"], ["er"]),
        helper.make_node("Flatten", ["t"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["g"], transB=1),
        helper.make_node("Sqrt", ["g"], ["gs"]),  # NaN where g < 0 in both runtimes alike: compared as is
        helper.make_node("Sub", ["g", "gs"], ["out0"]),
        helper.make_node("ReduceMean", ["er"], ["em"], axes=[1], keepdims=1),
        helper.make_node("Mul", ["out0", "em"], ["out"]),
    ]
    g = helper.make_graph(nodes, "toy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 4, 4])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 11)]), str(path))
    return path


def test_interpreter_matches_onnxruntime_on_its_operators(tmp_path):
    import onnxruntime as ort

    x = np.random.default_rng(1).normal(size=(3, 2, 4, 4)).astype(np.float32)
    path = _graph(tmp_path / "toy.onnx", batch1_reshape=False)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = OnnxGraph(path)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5, equal_nan=True)
    # exported at batch 1: without the repair a batch of 3 cannot run; with it, each row is what it is alone
    path1 = _graph(tmp_path / "toy1.onnx", batch1_reshape=True)
    with pytest.raises(RuntimeError):
        OnnxGraph(path1)(torch.from_numpy(x))
    np.testing.assert_allclose(OnnxGraph(path1, batch_in_reshape=True)(torch.from_numpy(x)).numpy(), want,
                               atol=1e-5, rtol=1e-5, equal_nan=True)


def test_interpreter_refuses_what_it_cannot_run(tmp_path):
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "r",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])])
    onnx.save(helper.make_model(g), str(tmp_path / "relu.onnx"))
    with pytest.raises(GuideEngineError, match="Relu"):
        OnnxGraph(tmp_path / "relu.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(GuideEngineError, match="not an ONNX model"):
        OnnxGraph(tmp_path / "junk.onnx")
    path = _graph(tmp_path / "toy.onnx", batch1_reshape=False)
    with pytest.raises(GuideEngineError, match="feature taps"):
        OnnxGraph(path, taps=("nowhere",))
