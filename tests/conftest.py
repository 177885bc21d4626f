"""Shared fixtures. The real default models come from the verified cache (`guide-engine models fetch`,
which `make test` runs first); a test that needs them fails loudly if they are missing."""
import os

# The Triton kernels run on CPU tensors through the interpreter; it must be set before triton is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")
# Commands that choose their own device run on the CPU, as in CI, also on a CUDA host; the tests marked
# gpu ask for cuda explicitly.
os.environ.setdefault("GUIDE_ENGINE_DEVICE", "cpu")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


class AxisToy:
    """A toy generator and identity network in one, for the UFO target's search: 'images' are the latents
    themselves (3-d), and the identity net weighs axis 1 ten times the others."""
    resolution = 1  # protocols.Generator: what synthesis_batch sizes its batches by

    def synthesize(self, w):
        return w

    def descriptors(self, x):
        return x * torch.tensor([1.0, 10.0, 1.0])

    def distance(self, a, b):
        return (a - b).norm(dim=1)


@pytest.fixture
def axis_toy():
    return AxisToy()


@pytest.fixture(scope="session")
def generator():
    from guide_engine.engine.models import zoo

    return zoo.load_generator("digiface-dcgan64")


@pytest.fixture(scope="session")
def identity():
    from guide_engine.engine.models import zoo

    return zoo.load_identity("dlib-resnet-v1")


@pytest.fixture(scope="session")
def tiny_run_factory(tmp_path_factory, generator):
    """seed => a fresh 2-iteration run directory made through the CLI (one per caller: callers write into it)."""
    from click.testing import CliRunner

    from guide_engine.apps.cli import main

    def make(seed: int):
        out = tmp_path_factory.mktemp("run") / "run"
        r = CliRunner().invoke(main, ["unlearn", "--seed", str(seed), "--out", str(out), "--iters", "2"])
        assert r.exit_code == 0, r.output
        return out

    return make


@pytest.fixture
def isolated_home(tmp_path, monkeypatch):
    """A fresh, empty GUIDE_ENGINE_HOME."""
    monkeypatch.setenv("GUIDE_ENGINE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def pytest_report_header(config):
    return (f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
            f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')}")


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need a CUDA device: skipped, with that reason, where torch sees none."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch sees none here)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
