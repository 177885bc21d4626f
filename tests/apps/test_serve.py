"""The HTTP API with FastAPI's TestClient: valid requests, each bad-input class, limits, refusal of
unverified artifacts, the guard; and the micro-batcher grouping concurrent requests."""
import asyncio
import base64
import json

import pytest
import torch

pytest.importorskip("fastapi", reason="the `serve` extra is not installed")
from fastapi.testclient import TestClient  # noqa: E402

from guide_engine.apps.batcher import MicroBatcher  # noqa: E402
from guide_engine.apps.serve import ServeConfig, create_app  # noqa: E402
from guide_engine.engine.errors import GuideEngineError  # noqa: E402


@pytest.fixture(scope="module")
def run_dir(tiny_run_factory):
    return tiny_run_factory(0)


def _mark_verified(run_dir, passed=True, required="forgotten"):
    """A report consistent with itself and bound to the run's files (as `verify` writes them)."""
    from guide_engine.engine.rundir import verify_files

    forgotten = passed or required == "robust"
    robust = passed and required == "robust"
    report = {"passed": passed, "required": required, "levels": {"forgotten": forgotten, "robust": robust},
              "identities": [{"forgotten": forgotten,
                              "attack": {"robust": robust, "attackers": {"dlib-resnet-v1": {}, "pixel": {}},
                                         "required_attackers": ["dlib-resnet-v1", "pixel"]}}],
              "preservation": {"same_person_frac": 1.0}, "judge": {"name": "sface-2021dec"},
              "judged": verify_files(run_dir)}
    (run_dir / "report.json").write_text(json.dumps(report))


@pytest.fixture(scope="module")
def client(run_dir):
    _mark_verified(run_dir)
    return TestClient(create_app(run_dir, ServeConfig(max_per_request=4, max_body_bytes=20_000)))


def test_refuses_unverified(run_dir):
    (run_dir / "report.json").unlink(missing_ok=True)
    with pytest.raises(GuideEngineError, match="not been verified"):
        create_app(run_dir, ServeConfig())
    _mark_verified(run_dir, passed=False)
    with pytest.raises(GuideEngineError, match="failed verification"):
        create_app(run_dir, ServeConfig())
    _mark_verified(run_dir, passed=False, required="robust")  # forgotten, but the attack found the person
    with pytest.raises(GuideEngineError, match=r"failed verification \(required level: robust\)"):
        create_app(run_dir, ServeConfig())
    create_app(run_dir, ServeConfig(allow_unverified=True))
    _mark_verified(run_dir)


def test_health_model_and_generate(client, generator, run_dir):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["status"] == "ready"
    info = client.get("/v1/model").json()
    assert len(info["unlearned_identities"]) == 1 and info["verification"]["passed"] is True
    assert info["verification"]["levels"] == {"forgotten": True, "robust": False}
    assert info["verification"]["required"] == "forgotten"
    r = client.post("/v1/generate", json={"seeds": [3]})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content[:4] == b"\x89PNG"
    r = client.post("/v1/generate", json={"seeds": [3, 4]})
    assert r.status_code == 200 and len(r.json()["images"]) == 2 and r.json()["withheld"] == []
    single = r.json()["images"][0]
    assert base64.b64decode(single) == client.post("/v1/generate", json={"seeds": [3]}).content  # per-seed image
    w = generator.latents_for_seeds([5]).tolist()
    assert client.post("/v1/generate", json={"latents": w}).status_code == 200


@pytest.mark.parametrize("body,status,msg", [
    (b"{not json", 400, "not valid JSON"),
    (json.dumps({"seeds": [1], "latents": [[0] * 100]}).encode(), 400, "exactly one"),
    (b'{}', 400, "exactly one"),
    (b'[1]', 400, "Input should be an object"),
    (b'{"seeds": [1], "extra": 1}', 400, "extra: Extra inputs are not permitted"),
    (b'{"seeds": []}', 400, "seeds: List should have at least 1 item"),
    (b'{"seeds": [-1]}', 400, "seeds.0: Input should be greater than or equal to 0"),
    (b'{"seeds": [1.5]}', 400, "seeds.0: Input should be a valid integer"),
    (b'{"seeds": [true]}', 400, "seeds.0: Input should be a valid integer"),
    (b'{"seeds": [1, 2, 3, 4, 5]}', 400, "at most 4"),
    (b'{"latents": [[1, 2]]}', 400, "latents.0: List should have at least 100 items"),
    (json.dumps({"latents": [[float("nan")] * 100]}).encode(), 400, "latents.0.0: Input should be a finite number"),
    (json.dumps({"latents": [[1e9] * 100]}).encode(), 400, "less than or equal to 1000"),
    (json.dumps({"latents": [["x"] * 100]}).encode(), 400, "latents.0.0: Input should be a valid number"),
    (b'{"seeds": [' + b"1," * 20000 + b"1]}", 413, "over the limit"),
])
def test_bad_requests(client, body, status, msg):
    r = client.post("/v1/generate", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status and msg in r.json()["error"]
    assert client.get("/healthz").status_code == 200  # the worker survives


def test_guard_withholds_the_unlearned_identity(run_dir):
    # a 2-iteration run has not forgotten seed 0: the guard (the judge, below strangers' p1) must catch it,
    # and let others through
    app = create_app(run_dir, ServeConfig(guard=True))
    c = TestClient(app)
    assert c.post("/v1/generate", json={"seeds": [0]}).status_code == 451
    r = c.post("/v1/generate", json={"seeds": [0, 17]})
    assert r.json()["withheld"] == [0] and r.json()["images"][0] is None and r.json()["images"][1]


def test_batcher_groups_concurrent_requests():
    def infer(w):
        return w * 2

    async def go():
        b = MicroBatcher(infer, max_batch=8, max_wait_ms=50)
        outs = await asyncio.gather(*[b.submit(torch.full((2, 3), float(i))) for i in range(6)])
        return b, outs

    b, outs = asyncio.run(go())
    assert sum(b.calls) == 12 and len(b.calls) <= 3 and max(b.calls) <= 8  # grouped, never over max_batch
    for i, o in enumerate(outs):
        assert torch.equal(o, torch.full((2, 3), 2.0 * i))  # each request gets its own rows back


def test_made_up_methods_share_one_metrics_label(client):
    """300 requests with made-up HTTP methods used to add 300 series to /metrics; they now count as one."""
    def series() -> list[str]:
        return [x for x in client.get("/metrics").text.splitlines() if x.startswith("guide_engine_requests_total{")]

    client.request("BREW", "/v1/generate")
    series()  # its own GET /metrics series exists from here on
    before = series()
    for i in range(30):
        client.request(f"BREW{i}", "/v1/generate")
    after = series()
    assert len(after) == len(before) and not any("BREW" in x for x in after)
    assert any('method="other"' in x for x in after)
