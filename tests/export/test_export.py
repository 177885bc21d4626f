"""ONNX export parity (fp32 and fp16 graphs on ONNX Runtime CPU), runner input validation,
one-line errors for damaged artifacts; TensorRT where it exists."""
import json

import pytest
import torch
from click.testing import CliRunner

from guide_engine.apps.cli import main
from guide_engine.engine.backends import OnnxrtRunner, TorchRunner, open_runner
from guide_engine.engine.errors import CheckFailed, GuideEngineError
from guide_engine.export import parity
from guide_engine.export.job import ExportConfig, export_job


@pytest.fixture(scope="module")
def exported(tmp_path_factory, generator):
    out = tmp_path_factory.mktemp("exp") / "fp32"
    manifest = export_job("digiface-dcgan64", out, ExportConfig(max_batch=64))
    return out, manifest


def test_fp32_parity_at_1_7_64(exported, generator):
    out, manifest = exported
    p = manifest["artifacts"]["onnx"]["parity"]
    assert set(p["batches"]) == {"1", "7", "64"} and p["passed"] and p["max_abs"] <= 1e-4
    # independent of the recorded figures: run it again here
    runner = open_runner(out, "onnxruntime")
    w = generator.latents_for_seeds(range(7))
    assert (runner.infer(w) - TorchRunner(generator).infer(w)).abs().max() <= 1e-4
    m = json.loads((out / "export.json").read_text())
    assert m["artifacts"]["onnx"]["sha256"] and m["input"] == "w"
    assert "CPUExecutionProvider" in m["artifacts"]["onnx"]["providers"]
    import onnx

    model = onnx.load(str(out / "generator.onnx"))
    assert model.opset_import[0].version >= 17
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_fp16_graph(tmp_path, generator):
    manifest = export_job("digiface-dcgan64", tmp_path / "fp16", ExportConfig(fp16=True, max_batch=8))
    p = manifest["artifacts"]["onnx"]["parity"]
    assert p["passed"] and p["psnr"] >= 40 and p["max_abs"] > 0  # really fp16: not bit-exact
    import onnx

    model = onnx.load(str(tmp_path / "fp16" / "generator_fp16.onnx"))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # fp32 in/out
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)


def test_failed_parity_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(parity, "FP32_MAX_ABS", 0.0)  # no real export is bit-exact: parity must fail
    with pytest.raises(CheckFailed, match="parity failed"):
        export_job("digiface-dcgan64", tmp_path / "x", ExportConfig(max_batch=2))
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_damaged_onnx_one_line_error(exported, tmp_path, damage):
    data = (exported[0] / "generator.onnx").read_bytes()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(data[: len(data) // 3] if damage == "truncate" else b"not onnx at all")
    with pytest.raises(GuideEngineError, match="not a loadable ONNX model") as e:
        OnnxrtRunner(bad, (100,))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("w,msg", [
    (torch.full((1, 100), float("nan")), "NaN"),
    (torch.zeros(2, 99), "shape"),
    (torch.zeros(2, 100, dtype=torch.float64), "float32"),
    (torch.zeros(0, 100), "batch"),
    ([[0.0] * 100], "tensor or array"),
])
def test_runner_validation(exported, w, msg):
    runner = open_runner(exported[0], "onnxruntime")
    with pytest.raises(GuideEngineError, match=msg):
        runner.infer(w)


def test_cli_export_errors(tmp_path):
    r = CliRunner().invoke(main, ["export", "digiface-dcgan64", "--onnx"])
    assert r.exit_code == 2 and "--out" in r.output
    r = CliRunner().invoke(main, ["export", str(tmp_path / "nothing"), "--onnx", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "neither a directory nor a known model" in r.output


def test_trt_missing_explains_itself(tmp_path):
    try:
        import tensorrt  # noqa: F401

        if torch.cuda.is_available():
            pytest.skip("TensorRT and CUDA are present: covered by test_trt_parity")
    except ImportError:
        pass
    r = CliRunner().invoke(main, ["export", "digiface-dcgan64", "--trt", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and ("pip install tensorrt" in r.output or "CUDA" in r.output)
    assert not (tmp_path / "o").exists()


@pytest.mark.trt
def test_trt_parity(tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (not installable on this CPU machine)")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT needs a CUDA GPU")
    manifest = export_job("digiface-dcgan64", tmp_path / "t", ExportConfig(trt=True, max_batch=16))
    assert manifest["artifacts"]["tensorrt"]["parity"]["passed"]


def test_triton_repository_config_parses(tmp_path):
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                           reason="tritonclient[grpc] (dev extra)")
    from google.protobuf import text_format

    run = tmp_path / "myrun"
    r = CliRunner().invoke(main, ["export", "digiface-dcgan64", "--onnx", "--max-batch", "8", "--out",
                                  str(run / "export"),
                                  "--triton-repo", str(tmp_path / "repo")])
    assert r.exit_code == 0, r.output
    model = tmp_path / "repo" / "guide_myrun"
    assert (model / "1" / "model.onnx").is_file()
    cfg = text_format.Parse((model / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert cfg.name == "guide_myrun" and cfg.backend == "onnxruntime" and cfg.max_batch_size == 8
    assert list(cfg.input[0].dims) == [100] and cfg.input[0].name == "w"
    assert list(cfg.output[0].dims) == [3, 64, 64] and cfg.output[0].data_type == model_config_pb2.TYPE_FP32
    assert list(cfg.dynamic_batching.preferred_batch_size) == [2, 8]
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU


def test_fastest_runner_routes_by_batch_size():
    from guide_engine.engine.backends import FastestRunner

    class Fixed(TorchRunner):
        def __init__(self, value):
            self.latent_shape, self.max_batch, self.value = (2,), 64, value

        def infer_impl(self, w):
            return torch.full((len(w), 1), self.value)

    table = {"onnxruntime": {"1": 400.0, "7": 480.0, "64": 500.0}, "torch": {"1": 150.0, "7": 450.0, "64": 530.0}}
    r = FastestRunner({"onnxruntime": Fixed(1.0), "torch": Fixed(2.0)}, table, (2,), 64)
    assert [r.choose(n) for n in (1, 2, 7, 8, 64, 100)] == ["onnxruntime"] * 3 + ["torch"] * 3
    assert r.infer(torch.zeros(1, 2)).item() == 1.0 and r.infer(torch.zeros(9, 2))[0].item() == 2.0
    assert FastestRunner({"onnxruntime": Fixed(1.0)}, table, (2,), 64).choose(64) == "onnxruntime"  # torch absent


def test_export_ships_a_throughput_table_and_auto_uses_it(tiny_run_factory, tmp_path, generator):
    run = tiny_run_factory(9)
    out = tmp_path / "exp"
    manifest = export_job(str(run), out, ExportConfig(max_batch=8))
    t = manifest["throughput"]
    assert set(t) == {"onnxruntime", "torch"}
    assert all(set(r) == {"1", "7", "8"} and min(r.values()) > 0 for r in t.values())
    auto = open_runner(out, "auto")
    assert set(auto.runners) == {"onnxruntime", "torch"}
    w = generator.latents_for_seeds(range(3))
    torch.testing.assert_close(auto.infer(w), open_runner(out, "onnxruntime").infer(w), atol=1e-4, rtol=0)
    r = CliRunner().invoke(main, ["sample", "--generator", str(out), "--seeds", "0-2", "--out",
                                  str(tmp_path / "a.npy")])
    assert r.exit_code == 0, r.output
    (run / "generator.safetensors").write_bytes(b"changed")  # the source moved on: torch must not compete
    assert set(open_runner(out, "auto").runners) == {"onnxruntime"}


def test_export_record_that_is_not_json_is_one_line(exported, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(exported[0], copy)
    (copy / "export.json").write_text("{not json")
    r = CliRunner().invoke(main, ["sample", str(copy), "--backend", "onnxruntime", "--seeds", "0", "--out",
                                  str(tmp_path / "x.png")])
    assert r.exit_code == 2 and "not a readable export record" in r.output and "Traceback" not in r.output, r.output


def test_triton_names_are_per_export_and_a_taken_name_is_refused_first(tmp_path):
    """Two exports of one run used to get one Triton model name, and the second export failed after writing a
    complete export directory."""
    from guide_engine.export.triton_repo import model_name

    run, repo = tmp_path / "myrun", tmp_path / "repo"
    assert model_name(run / "export") == "guide_myrun" and model_name(run / "export16") == "guide_myrun_export16"
    (repo / "guide_myrun").mkdir(parents=True)
    r = CliRunner().invoke(main, ["export", "digiface-dcgan64", "--onnx", "--max-batch", "2", "--out",
                                  str(run / "export"),
                                  "--triton-repo", str(repo)])
    assert r.exit_code == 2 and "already exists" in r.output and not (run / "export").exists(), r.output
    assert not (run / "export.partial").exists()


def test_sample_does_not_overwrite_the_runs_own_files(tmp_path, tiny_run_factory):
    run = tiny_run_factory(57)
    before = (run / "before_after.png").read_bytes()
    r = CliRunner().invoke(main, ["sample", str(run), "--seeds", "0", "--out", str(run / "before_after.png")])
    assert r.exit_code == 2 and "is a file of" in r.output, r.output
    assert (run / "before_after.png").read_bytes() == before
    r = CliRunner().invoke(main, ["sample", str(run), "--seeds", "0", "--out", str(run / "grid.png")])
    assert r.exit_code == 0, r.output  # a new file beside them is fine


def test_the_export_directory_has_one_writer_and_leaves_nothing_when_it_fails(tmp_path):
    """engine/exportdir.py: OUT.partial/ is locked while an export writes it (a second export into the same --out is
    refused, not allowed to wipe the first one's work), published by a rename, and removed when the export fails;
    what a crashed export left in OUT.partial/ is cleared by the next one."""
    from guide_engine.engine import exportdir
    from guide_engine.engine.errors import GuideEngineError

    out = tmp_path / "exp"
    with exportdir.owned(out) as work:
        (work / "a.onnx").write_text("x")
        with pytest.raises(GuideEngineError, match="another `export` is writing it"):
            with exportdir.owned(out):
                pass
        assert (work / "a.onnx").is_file()
    assert (out / "a.onnx").is_file() and not exportdir.partial(out).exists()
    with pytest.raises(GuideEngineError, match="already exists"):
        with exportdir.owned(out):
            pass
    other = tmp_path / "other"
    exportdir.partial(other).mkdir()
    (exportdir.partial(other) / "stale.onnx").write_text("from a crash")
    with pytest.raises(RuntimeError):
        with exportdir.owned(other) as work:
            assert not (work / "stale.onnx").exists()
            raise RuntimeError("parity failed")
    assert not other.exists() and not exportdir.partial(other).exists()
