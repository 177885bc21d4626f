"""The engine on a CUDA GPU: `unlearn --device cuda`, `verify --device cuda` and the TorchRunner, each
against the same work on the CPU. Skipped without a GPU (conftest). cuDNN runs fp32 convolutions on TF32
tensor cores by default, so GPU and CPU agree to about 1e-3, not bit for bit."""
import json

import pytest
import torch
from click.testing import CliRunner

from guide_engine.apps.cli import main

pytestmark = [pytest.mark.gpu, pytest.mark.weights]


@pytest.fixture(scope="module")
def cuda_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cuda") / "run"
    r = CliRunner().invoke(main, ["unlearn", "--seed", "3", "--iters", "3", "--device", "cuda", "--out", str(out),
                                  "--quiet"])
    assert r.exit_code == 0, r.output
    return out


def test_unlearn_on_cuda(cuda_run):
    manifest = json.loads((cuda_run / "manifest.json").read_text())
    config = json.loads((cuda_run / "config.json").read_text())
    assert config["device"] == "cuda" and manifest["peak_cuda_memory_mib"] > 0
    history = (cuda_run / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 3  # header + one row per iteration
    losses = manifest["final_losses"]
    assert all(torch.isfinite(torch.tensor(v)) for k, v in losses.items() if k != "s")


def test_verify_on_cuda_matches_cpu(cuda_run):
    args = ["verify", str(cuda_run), "--attack-starts", "2", "--attack-steps", "5", "--n-preserve", "32", "--json",
            "--quiet"]
    reports = {}
    for device in ("cuda", "cpu"):
        r = CliRunner().invoke(main, [*args, "--device", device])
        assert r.exit_code in (0, 1), r.output  # 1: not forgotten after 3 iterations, a verdict all the same
        reports[device] = json.loads((cuda_run / "report.json").read_text())
    gpu, cpu = reports["cuda"], reports["cpu"]
    for key in ("id_dist", "judge_id_dist"):
        assert abs(gpu["identity"][key] - cpu["identity"][key]) < 0.02, key
    assert abs(gpu["preservation"]["pixel_l1"] - cpu["preservation"]["pixel_l1"]) < 0.005
    assert gpu["levels"]["forgotten"] == cpu["levels"]["forgotten"]
    assert gpu["attack"]["steps"] == 5 and gpu["attack"]["train_best"] > 0


def test_torch_runner_on_cuda():
    from guide_engine.engine.backends import TorchRunner
    from guide_engine.engine.models import zoo

    w = zoo.load_generator("digiface-dcgan64").latents_for_seeds(range(7))
    gpu = TorchRunner(zoo.load_generator("digiface-dcgan64", device="cuda")).infer(w)
    cpu = TorchRunner(zoo.load_generator("digiface-dcgan64", device="cpu")).infer(w)
    assert gpu.device.type == "cpu" and gpu.dtype == torch.float32  # the runners' contract
    torch.testing.assert_close(gpu, cpu, atol=1e-2, rtol=0)
