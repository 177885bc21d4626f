"""Every verdict bound to the bytes it judged: swapped weights, a swapped ONNX file, an edited report, an
edited ledger are refused by serve and sample with one line and exit 2; an untouched run still serves;
the hashes are checked once per load, not per request; the optional HMAC signature."""
import json
import shutil

import pytest
from click.testing import CliRunner

from guide_engine.apps.cli import main
from guide_engine.engine import integrity
from guide_engine.engine.errors import IntegrityError

pytest.importorskip("fastapi", reason="the `serve` extra is not installed")
from fastapi.testclient import TestClient  # noqa: E402

from guide_engine.apps.serve import ServeConfig, create_app  # noqa: E402


@pytest.fixture(scope="module")
def verified_run(tiny_run_factory, tmp_path_factory):
    """A tiny run with a real (failed) report, copied fresh for each test that edits it."""
    run = tiny_run_factory(81)
    r = CliRunner().invoke(main, ["verify", str(run), "--n-preserve", "8", "--no-reinversion"])
    assert r.exit_code == 1, r.output  # 2 iterations forget no one: a real, failed verdict
    return run


@pytest.fixture
def run(verified_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(verified_run, copy)
    return copy


def _refused(args, msg):
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2, r.output
    assert msg in r.output and len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output, r.output


def _serve_refused(source, msg, **kw):
    with pytest.raises(IntegrityError, match=msg):
        create_app(source, ServeConfig(allow_unverified=True, **kw))


def test_untouched_run_serves_and_records_what_it_judged(run):
    report = json.loads((run / "report.json").read_text())
    j = report["judged"]
    assert j["weights_sha256"] == integrity.sha256_file(run / "generator.safetensors")
    assert j["ledger_sha256"] == integrity.sha256_file(run / "identities.json")
    assert j["networks"]["judge"]["name"] == "sface-2021dec" and len(j["networks"]["train"]["sha256"]) == 64
    assert len(j["base_sha256"]) == 64 and j["engine_version"]
    info = TestClient(create_app(run, ServeConfig(allow_unverified=True))).get("/v1/model").json()
    assert info["integrity"] == "weights and ledger match their records"
    assert info["weights_sha256"] == j["weights_sha256"]
    assert CliRunner().invoke(main, ["sample", str(run), "--seeds", "0", "--out", str(run / "s.png")]).exit_code == 0


def test_swapped_weights_are_refused(run, tiny_run_factory):
    other = tiny_run_factory(82)
    shutil.copy(other / "generator.safetensors", run / "generator.safetensors")  # e.g. the pretrained weights
    _serve_refused(run, "recorded in")
    _refused(["sample", str(run), "--seeds", "0", "--out", str(run / "s.png")], "is not the")
    _refused(["verify", str(run), "--no-reinversion"], "is not the")


def test_edited_ledger_is_refused(run):
    book = json.loads((run / "identities.json").read_text())
    book["identities"] = []  # an emptied guard
    (run / "identities.json").write_text(json.dumps(book))
    _serve_refused(run, "identities.json")
    _refused(["sample", str(run), "--seeds", "0", "--out", str(run / "s.png")], "identities.json")


def test_edited_config_is_refused(run):
    """config.json names the base generator the weights load into: the manifest covers it like the weights."""
    config = json.loads((run / "config.json").read_text())
    assert "config.json" in json.loads((run / "manifest.json").read_text())["files"]
    (run / "config.json").write_text(json.dumps({**config, "generator": "nvlabs:elsewhere.pkl"}))
    _refused(["sample", str(run), "--seeds", "0", "--out", str(run / "s.png")], "config.json")
    _serve_refused(run, "config.json")


def test_edited_report_is_refused(run):
    report = json.loads((run / "report.json").read_text())
    assert report["passed"] is False
    report["passed"] = True  # a failed run made to look verified
    (run / "report.json").write_text(json.dumps(report))
    with pytest.raises(IntegrityError, match="does not follow from its own figures"):
        create_app(run, ServeConfig())
    app = create_app(run, ServeConfig(allow_unverified=True))  # served only with the mismatch said out loud
    info = TestClient(app).get("/v1/model").json()
    assert info["verification"]["passed"] is False and "WITHOUT a valid verification" in info["integrity"]
    _refused(["sample", str(run), "--seeds", "0", "--out", str(run / "s.png")], "does not follow from its own figures")


def test_report_moved_onto_other_weights_is_refused(run, tiny_run_factory):
    other = tiny_run_factory(83)
    shutil.copy(run / "report.json", other / "report.json")
    with pytest.raises(IntegrityError, match="made for other weights"):
        create_app(other, ServeConfig())


def test_swapped_onnx_is_refused(run, tmp_path):
    from guide_engine.export.job import ExportConfig, export_job

    a, b = tmp_path / "a", tmp_path / "b"
    export_job(str(run), a, ExportConfig(max_batch=4))
    export_job("digiface-dcgan64", b, ExportConfig(max_batch=4))  # the pretrained generator's ONNX
    shutil.copy(b / "generator.onnx", a / "generator.onnx")
    for backend in ("onnxruntime", "auto"):
        _serve_refused(a, "generator.onnx", backend=backend)
        _refused(["sample", str(a), "--backend", backend, "--seeds", "0", "--out", str(tmp_path / "s.png")],
                 "generator.onnx")


def test_hashes_are_checked_once_per_load(run, monkeypatch):
    calls = []
    real = integrity.sha256_file
    monkeypatch.setattr(integrity, "sha256_file", lambda p: calls.append(p) or real(p))
    client = TestClient(create_app(run, ServeConfig(allow_unverified=True)))
    at_load = len(calls)
    assert at_load >= 2  # the weights and the ledger
    for seed in range(5):
        assert client.post("/v1/generate", json={"seeds": [seed]}).status_code == 200
    assert len(calls) == at_load


def test_signed_reports(run, monkeypatch):
    monkeypatch.setenv(integrity.KEY_ENV, "operator-secret")
    r = CliRunner().invoke(main, ["verify", str(run), "--n-preserve", "8", "--no-reinversion"])
    assert r.exit_code == 1
    report = json.loads((run / "report.json").read_text())
    assert report["signature"]["alg"] == "HMAC-SHA256"
    info = TestClient(create_app(run, ServeConfig(allow_unverified=True))).get("/v1/model").json()
    assert info["verification"]["signature_checked"] is True
    report["preservation"]["pixel_l1"] = 0.0  # a figure edited consistently with the verdict: only the key sees it
    (run / "report.json").write_text(json.dumps(report))
    with pytest.raises(IntegrityError, match="wrong signature"):
        create_app(run, ServeConfig())
    monkeypatch.setenv(integrity.KEY_ENV, "another-key")
    with pytest.raises(IntegrityError, match="signature"):
        create_app(run, ServeConfig())
