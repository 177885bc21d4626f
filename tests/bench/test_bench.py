"""`bench --quick` on a tiny configuration writes all three files with real figures."""
import json

import pytest
import torch
from click.testing import CliRunner
from torch.utils.flop_counter import FlopCounterMode

from guide_engine.apps.cli import main
from guide_engine.bench.sampling import dcgan_flops
from guide_engine.engine.models import zoo


def test_bench_tiny(tmp_path, generator, identity):
    out = tmp_path / "b"
    r = CliRunner().invoke(main, ["bench", "--quick", "--backends", "torch,onnxruntime,tensorrt", "--batch", "1,2",
                                  "--unlearn-iters", "1", "--out", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads((out / "bench.json").read_text())
    assert {s["backend"] for s in res["sampling"]} == {"torch", "onnxruntime"}
    for s in res["sampling"]:
        assert [row["batch"] for row in s["rows"]] == [1, 2]
        assert all(row["images_per_s"] > 0 and 0 < row["frac_of_peak"] < 1 for row in s["rows"])  # a bound
    assert res["measured_matmul_flops"] <= res["peak_flops"] <= res["peak_flops_bf16"]
    assert "tensorrt" in res["skipped"] or any(s["backend"] == "tensorrt" for s in res["sampling"])
    u = res["unlearning"]
    arcface = zoo.is_cached(zoo.get_spec("arcface-mbf"))  # its row only where its weights are fetched
    assert set(u["levers"]) == {"reference_loop_fp32", "batched_fp32", "batched_fp32_cached_targets",
                                "batched_fp32_fused_adam", "batched_bf16", "default", "robust_default",
                                *(["robust_arcface_mbf"] if arcface else [])}
    assert {r["identity"] for r in u["levers"].values()} == {"dlib-resnet-v1", *(["arcface-mbf"] if arcface else [])}
    assert u["levers"]["default"]["fused_adam"] and not u["levers"]["reference_loop_fp32"]["fused_adam"]
    assert u["levers"]["robust_default"]["robust"] and not u["levers"]["default"]["robust"]
    assert "--robust:" in (out / "bench.md").read_text()
    assert all(r["s_per_iter"] > 0 for r in u["levers"].values()) and u["batched"] == u["levers"]["default"]
    assert all(0 < r["frac_of_peak"] < 1 for r in u["levers"].values())  # a bound
    flop = {k: r["flop_per_iter"] for k, r in u["levers"].items()}
    # the same mathematics whatever the loop's structure; the cached target side saves what it says:
    # the local pair's target image and the identity network's forward pass on it
    assert flop["reference_loop_fp32"] == flop["batched_fp32"] == flop["batched_fp32_fused_adam"] > 0
    with FlopCounterMode(display=False) as once, torch.no_grad():
        identity.features(generator.synthesize(generator.latents_for_seeds([0])))
    assert flop["batched_fp32"] - flop["batched_fp32_cached_targets"] == once.get_total_flops()
    assert flop["robust_default"] > flop["default"]
    if arcface:  # the same loop, another network's passes in the pool, hinge and preservation rows
        assert flop["robust_arcface_mbf"] > flop["default"] and flop["robust_arcface_mbf"] != flop["robust_default"]
        assert "--robust --identity arcface-mbf:" in (out / "bench.md").read_text()
    assert "| torch | 1 |" in (out / "bench.md").read_text()
    assert (out / "bench.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_backend(tmp_path):
    r = CliRunner().invoke(main, ["bench", "--backends", "cuda-magic", "--out", str(tmp_path / "b")])
    assert r.exit_code == 2 and "choose from" in r.output


def test_theoretical_peak_reads_the_machine(monkeypatch):
    from guide_engine.bench import peak

    cpu = peak.cpu_theoretical()
    assert cpu["fp32"] > 0 and cpu["bf16"] >= cpu["fp32"] and "cores" in cpu["how"]
    monkeypatch.setattr(peak, "_cpu_flags", lambda: {"avx2", "fma"})
    monkeypatch.setattr(peak, "_cpu_clock_hz", lambda: 3.0e9)
    monkeypatch.setattr(peak.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert peak.cpu_theoretical()["fp32"] == 4 * 8 * 2 * 2 * 3.0e9 == peak.cpu_theoretical()["bf16"]
    assert peak.gpu_datasheet("NVIDIA H100 80GB HBM3")["bf16"] == 989.5e12
    assert peak.gpu_datasheet("NVIDIA H100 PCIe")["fp32"] == 51.2e12 and peak.gpu_datasheet("Some GPU")["fp32"] is None


def test_the_bound_is_never_under_the_measurement():
    from guide_engine.bench.peak import at_least_measured

    peaks = {"fp32": 100.0, "bf16": 200.0, "how": "4 cores"}
    assert at_least_measured(peaks, "fp32", 90.0) is peaks  # under the bound: unchanged
    raised = at_least_measured(peaks, "fp32", 125.0)  # a VM's nominal clock under the boost clock
    assert raised["fp32"] == 125.0 and raised["bf16"] == 250.0 and "x1.25" in raised["how"]
    bound, measured = 220154.0, 230485.78173334745  # bound * (measured / bound) is an ulp under measured
    assert bound * (measured / bound) < measured
    assert at_least_measured({"fp32": bound, "bf16": 2 * bound, "how": ""}, "fp32", measured)["fp32"] == measured


def test_flop_count(generator):
    # 4x4 transposed convs: 100->512 @1x1, 512->256 @4x4, 256->128 @8x8, 128->64 @16x16, 64->3 @32x32 inputs
    macs = 16 * (100 * 512 * 1 + 512 * 256 * 16 + 256 * 128 * 64 + 128 * 64 * 256 + 64 * 3 * 1024)
    assert dcgan_flops(generator) == 2 * macs


def test_kernel_bench_quick_on_cpu(tmp_path, monkeypatch):
    from guide_engine.bench import kernels

    monkeypatch.chdir(tmp_path)
    rows = kernels.main(quick=True, device="cpu")
    assert len(rows) == 12 and all(r["ref_eager_us"] > 0 for r in rows)
    assert (tmp_path / "kernels.json").is_file()
    # no fake Triton timings on the CPU
    assert all(r["triton_us"] is None and r["kernel_queued_us"] is None for r in rows)


def test_target_study_grades_the_picks_with_the_judge():
    """bench/targets.py on 2 identities x 8 candidates: every rule picks one target per identity, and the
    judge's own pick (the ceiling) is at least as far as any rule that chooses from the same candidates."""
    from guide_engine.bench.targets import study

    out = study([300, 301], n=8, angle=30.0)
    assert out["n_seeds"] == 2 and 0 < out["judge_forgotten_line"] < 2
    rules = out["rules"]
    ceiling = next(v for k, v in rules.items() if k.startswith("ceiling"))
    for name in ("formula", "a random candidate", "training network's farthest, <= 30 deg, 1 r"):
        r = next(v for k, v in rules.items() if k.startswith(name))
        assert 0 <= r["far_enough"] <= 2
        assert ceiling["judge_dist_mean"] >= r["judge_dist_mean"] - 1e-6


def test_the_forget_bench_counts_withheld_persons_apart_from_strangers():
    import asyncio

    httpx = pytest.importorskip("httpx")
    from guide_engine.bench.forget import _load

    asked = []

    def answer(request):  # the guard's stand-in: the person (seed 5) and one stranger's seed are withheld
        seed = json.loads(request.content)["seeds"][0]
        asked.append(seed)
        return httpx.Response(451 if seed in (5, 20_003) else 200)

    out = asyncio.run(_load("http://bench/v1/generate", 2, 1e6, lambda: len(asked) >= 40, [5], lambda: True,
                            transport=httpx.MockTransport(answer)))
    persons, strangers = asked.count(5), asked.count(20_003)
    assert persons >= 4 and strangers == 1
    assert out["asked"] == {"persons": persons, "strangers": len(asked) - persons}
    assert out["withheld_451"] == {"persons": persons, "strangers": 1}
    assert out["codes"] == {"200": len(asked) - persons - 1, "451": persons + 1}
