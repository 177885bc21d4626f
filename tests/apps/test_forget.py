"""Forget requests over HTTP (apps/forget.py, apps/worker.py, apps/forget_store.py, engine/audit.py): on the
default models, a photo built from a generator face goes from the 202 through the guard, the worker's unlearn,
verify and hot swap to `deployed`, with its certificate and the audit chain; refusals store nothing; a server
SIGKILLed mid-run finishes the request after its restart, and /v1/generate answers no 5xx through the swap.

The runs are short (60 iterations at lr 5e-4; measured alone, these seeds end 0.88-0.96 from the person under the
judge, line 0.803, with every random face kept); the identities are seeds 7002, 7004 and 7006 (docs/serving.md
measures on others)."""
import json
import os
import stat
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner

pytest.importorskip("fastapi", reason="the `serve` extra is not installed")
from fastapi.testclient import TestClient  # noqa: E402

from guide_engine.apps.cli import main  # noqa: E402
from guide_engine.apps.forget_store import ForgetStore  # noqa: E402
from guide_engine.apps.serve import ServeConfig, create_app  # noqa: E402
from guide_engine.apps.worker import Worker, WorkerConfig  # noqa: E402
from guide_engine.bench.photos import compose, generator_face  # noqa: E402
from guide_engine.bench.serving import free_port  # noqa: E402
from guide_engine.engine.errors import GuideEngineError  # noqa: E402

FAST = ["--iters", "60", "--lr", "5e-4", "--target-search", "8"]
FAST_WORKER = {"unlearn": {"lr": 5e-4, "target_search": 8, "invert_steps": 150, "checkpoint_every": 20}, "iters": 60,
               "n_preserve": 64, "gather_s": 0.0}
SERVED_SEED, PHOTO_SEED, KILL_SEED = 7004, 7002, 7006


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A verified run that forgot seed 7001: what the server serves before any forget request."""
    run = tmp_path_factory.mktemp("served") / "run"
    r = CliRunner().invoke(main, ["unlearn", "--seed", str(SERVED_SEED), "--out", str(run), *FAST])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["verify", str(run), "--no-reinversion", "--n-preserve", "64"])
    assert r.exit_code == 0, r.output
    return run


def token_file(tmp_path, mode=0o600):
    path = tmp_path / "token"
    path.write_text("s3cret-token-of-the-operator\n")
    os.chmod(path, mode)
    return path


AUTH = {"Authorization": "Bearer s3cret-token-of-the-operator"}


def owner_only(folder) -> list[str]:
    """The paths under `folder` that someone other than the owner may read."""
    return [str(p) for p in [folder, *folder.rglob("*")] if os.stat(p).st_mode & (stat.S_IRWXG | stat.S_IRWXO)]


def judge_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    from guide_engine.engine.models import zoo

    judge = zoo.load_judge()
    return judge.distance(judge.descriptors(a), judge.descriptors(b)).item()


def png_tensor(data: bytes) -> torch.Tensor:
    import io

    from PIL import Image

    x = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32)
    return torch.from_numpy(x).permute(2, 0, 1)[None] / 127.5 - 1


def test_token_file_and_flags_are_checked(served, tmp_path):
    with pytest.raises(GuideEngineError, match="both --admin-token-file and --state-dir"):
        ServeConfig(state_dir=str(tmp_path / "state"))
    loose = token_file(tmp_path, 0o644)
    with pytest.raises(GuideEngineError, match=r"readable by others \(mode 0644\); chmod 600"):
        create_app(served, ServeConfig(admin_token_file=str(loose), state_dir=str(tmp_path / "state")))
    r = CliRunner().invoke(main, ["serve", str(served), "--admin-token-file", str(loose), "--state-dir",
                                  str(tmp_path / "state")])
    assert r.exit_code == 2 and "readable by others" in r.output and "Traceback" not in r.output


def test_the_guards_of_one_server_share_one_judge_and_one_pretrained_generator():
    from guide_engine.apps.forget import JudgeGuard
    from guide_engine.engine.models import zoo

    names = (zoo.DEFAULT_GENERATOR, zoo.DEFAULT_JUDGE)
    ledger, pending = JudgeGuard(*names), JudgeGuard(*names)
    assert ledger.judge is pending.judge and ledger.pretrained is pending.pretrained and ledger.line == pending.line
    ledger.set({"a": torch.zeros(128)})
    assert pending.refs == {}  # the references are each guard's own


def test_a_photo_is_guarded_unlearned_swapped_in_and_certified(served, generator, tmp_path):
    state = tmp_path / "state"
    app = create_app(served, ServeConfig(admin_token_file=str(token_file(tmp_path)), state_dir=str(state)))
    client = TestClient(app)
    store = ForgetStore(state)
    store.write_config({**store.read_config(), **FAST_WORKER})
    face = generator_face(generator, PHOTO_SEED)
    photo = compose([face], tmp_path / "person.jpg", face_px=(160,), at=((0.55, 0.45),), seed=3)
    files = {"image": ("person.jpg", photo.read_bytes(), "image/jpeg")}

    # refusals store nothing: no token, a wrong one, a picture with no face
    assert client.post("/v1/forget", files=files).status_code == 401
    assert client.post("/v1/forget", files=files, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/v1/forget").status_code == 401
    noise = tmp_path / "noise.png"
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(noise)
    r = client.post("/v1/forget", files={"image": ("noise.png", noise.read_bytes(), "image/png")}, headers=AUTH)
    assert r.status_code == 422 and "no face found" in r.json()["error"] and str(state) not in r.json()["error"]
    assert client.post("/v1/forget", json={"seed": -1}, headers=AUTH).status_code == 400
    assert store.all() == [] and list((state / "photos").iterdir()) == []

    before = client.get("/v1/model").json()
    assert client.post("/v1/generate", json={"seeds": [PHOTO_SEED]}).status_code == 200  # not yet asked
    r = client.post("/v1/forget", files=files, headers=AUTH)
    assert r.status_code == 202, r.text
    rid = r.json()["id"]
    assert r.json() == {"id": rid, "state": "queued", "status_url": f"/v1/forget/{rid}"}
    # guarded at once: the person's face at their seed is withheld while the request is pending
    assert client.post("/v1/generate", json={"seeds": [PHOTO_SEED]}).status_code == 451
    assert client.post("/v1/generate", json={"seeds": [1, 2]}).json()["withheld"] == []  # strangers are not
    assert "guide_engine_withheld_pending_images_total 1.0" in client.get("/metrics").text
    assert client.get(f"/v1/forget/{rid}", headers=AUTH).json()["state"] == "queued"
    assert client.get(f"/v1/forget/{rid}/certificate", headers=AUTH).status_code == 409

    worker = Worker(ForgetStore(state), WorkerConfig(**store.read_config()), log=lambda m: None)
    assert worker.step()  # unlearn on top of the served run, verify, export-free: ready for the swap
    deadline = time.monotonic() + 60
    while client.get(f"/v1/forget/{rid}", headers=AUTH).json()["state"] != "deployed":
        assert time.monotonic() < deadline, client.get(f"/v1/forget/{rid}", headers=AUTH).json()
        time.sleep(0.2)
    status = client.get(f"/v1/forget/{rid}", headers=AUTH).json()
    after = client.get("/v1/model").json()
    cert = client.get(status["certificate_url"], headers=AUTH).json()
    assert cert["weights_sha256_before"] == before["weights_sha256"] != after["weights_sha256"]
    assert cert["weights_sha256_after"] == after["weights_sha256"] == cert["report"]["judged"]["weights_sha256"]
    assert cert["report"]["passed"] and status["identity_hash"] in after["unlearned_identities"]
    assert set(before["unlearned_identities"]) < set(after["unlearned_identities"])
    assert not (state / "photos").exists() or list((state / "photos").iterdir()) == []  # gone when it ended

    # the identity is gone at its seed: the judge puts the served face past the strangers' median
    r = client.post("/v1/generate", json={"seeds": [PHOTO_SEED]})
    assert r.status_code == 200  # no longer pending; forgotten (no --guard)
    with torch.no_grad():
        pretrained = generator.synthesize(generator.latents_for_seeds([PHOTO_SEED]))
    line = cert["report"]["thresholds"]["judge_forgotten_if_id_dist_at_least"]
    assert judge_distance(png_tensor(r.content), pretrained) >= line - 0.02  # PNG rounding of the served image

    # the audit trail: intact, no personal data, and a tampered line is named
    assert owner_only(state) == []
    text = (state / "audit.jsonl").read_text()
    assert str(tmp_path) not in text and "w_u" not in text
    assert [json.loads(line)["state"] for line in text.splitlines()] == ["queued", "running", "running", "deployed"]
    r = CliRunner().invoke(main, ["audit", str(state)])
    assert r.exit_code == 0 and "4 lines, chain intact" in r.output
    lines = text.splitlines()
    lines[1] = lines[1].replace('"running"', '"refused"', 1)
    (state / "audit.jsonl").write_text("\n".join(lines) + "\n")
    r = CliRunner().invoke(main, ["audit", str(state)])
    assert r.exit_code == 1 and "line 2 of 4" in r.output
    app.state.swapper.stopped.set()


def start_server(served, state, token, port, log):
    proc = subprocess.Popen([sys.executable, "-m", "guide_engine.apps.cli", "serve", str(served), "--port", str(port),
                             "--state-dir", str(state), "--admin-token-file", str(token), "--worker-threads", "1",
                             "--forget-iters", "60"],
                            stdout=log, stderr=subprocess.STDOUT)
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the server exited"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise AssertionError("the server did not become ready")


@pytest.mark.slow
def test_sigkill_mid_run_then_finished_after_restart_with_no_5xx_through_the_swap(served, tmp_path):
    import httpx

    state, token = tmp_path / "state", token_file(tmp_path)
    ForgetStore(state).write_config(FAST_WORKER)  # serve sets the settings its flags own; the others stay
    port, log = free_port(), open(tmp_path / "server.log", "wb")
    url = f"http://127.0.0.1:{port}"
    proc = start_server(served, state, token, port, log)
    statuses, stop = [], threading.Event()
    try:
        assert json.loads((state / "config.json").read_text())["unlearn"] == FAST_WORKER["unlearn"]
        r = httpx.post(f"{url}/v1/forget", json={"seed": KILL_SEED}, headers=AUTH, timeout=30)
        assert r.status_code == 202, r.text
        rid = r.json()["id"]
        deadline = time.monotonic() + 120
        while not (state / "runs" / "batch-0001.partial" / "checkpoint.pt").is_file():  # 20 of 60 iterations done
            assert time.monotonic() < deadline
            time.sleep(0.1)
        proc.kill()  # SIGKILL: the worker dies with it (PR_SET_PDEATHSIG)
        proc.wait()
        assert ForgetStore(state).get(rid)["state"] == "running"

        proc = start_server(served, state, token, port, log)

        def hammer():  # /v1/generate through the swap
            with httpx.Client(timeout=60) as c:
                while not stop.is_set():  # a steady load, not a saturating one: the worker runs at nice 10
                    try:
                        statuses.append(c.post(f"{url}/v1/generate", json={"seeds": [11, 12]}).status_code)
                    except httpx.HTTPError as e:
                        statuses.append(type(e).__name__)
                    time.sleep(0.25)  # (each image pending is also judged: SFace on the CPU)

        deadline = time.monotonic() + 600
        while not (state / "runs" / "batch-0001").is_dir():  # resumed and finished: verify, then the swap, follow
            assert time.monotonic() < deadline and ForgetStore(state).get(rid)["state"] == "running"
            time.sleep(0.2)
        threads = [threading.Thread(target=hammer) for _ in range(2)]  # two clients, about 6 requests/s
        for t in threads:
            t.start()
        while (s := httpx.get(f"{url}/v1/forget/{rid}", headers=AUTH, timeout=30).json())["state"] != "deployed":
            assert s["state"] in ("queued", "running") and time.monotonic() < deadline, s
            time.sleep(0.5)
        time.sleep(1)  # requests after the swap, too
        stop.set()
        for t in threads:
            t.join()
        metrics = httpx.get(f"{url}/metrics", timeout=30).text
        assert "guide_engine_swaps_total 1.0" in metrics
        assert statuses and all(code == 200 for code in statuses), sorted(set(statuses))
        model = httpx.get(f"{url}/v1/model", timeout=30).json()
        cert = httpx.get(f"{url}/v1/forget/{rid}/certificate", headers=AUTH, timeout=30).json()
        assert cert["weights_sha256_after"] == model["weights_sha256"]
        r = CliRunner().invoke(main, ["audit", str(state)])
        assert r.exit_code == 0, r.output
    finally:
        stop.set()
        proc.kill()
        log.close()


def test_a_failed_batch_retries_its_cause_with_push_past_then_refuses_it_and_queues_the_others(tmp_path):
    """verify failed on one person of three, not forgotten: that one goes back to the queue once for a second try
    with --push-past, the two others go back too; when its second try fails it is refused with the reason. A
    person the generator never drew is refused at once; a request failing twice with others fails (MAX_ATTEMPTS);
    nothing is deployed. Every change is in the trail."""
    from guide_engine.guide.identities import Source

    store = ForgetStore(tmp_path / "state")
    rows = [store.add("seed", seed=s) for s in (1, 2, 3)]
    todo = {r["id"]: Source(seed=r["seed"]) for r in rows}
    thresholds = {"judge_forgotten_if_id_dist_at_least": 0.8}
    verdict = {src.key(): {"forgotten": True, "drawn": True, "found": True} for src in todo.values()}
    verdict[Source(seed=2).key()] = {"forgotten": False, "drawn": True, "found": True, "judge_id_dist": 0.41}
    report = {"required": "forgotten", "preservation": {"same_person_frac": 1.0}, "thresholds": thresholds,
              "outcome": "not forgotten"}
    worker = Worker(store, WorkerConfig(), log=lambda m: None)
    store.move(list(todo), "running", batch="batch-0001")
    worker.refuse("batch-0001", todo, verdict, report)
    states = {r["seed"]: (r["state"], r["reason"], r["push_past"]) for r in store.all()}
    assert states[2][0] == "queued" and states[2][2] == 1 and "0.410" in states[2][1] and "--push-past" in states[2][1]
    assert states[1][:2] == states[3][:2] == ("queued", "batch-0001 failed on other requests; queued again")
    assert states[1][2] == states[3][2] == 0 and store.meta("deploy_next") is None
    second = {rid: src for rid, src in todo.items() if src.seed == 2}
    store.move(list(second), "running", batch="batch-0002")
    worker.refuse("batch-0002", second, verdict, report)
    reason = store.get(next(iter(second)))["reason"]
    assert store.get(next(iter(second)))["state"] == "refused" and reason.startswith("not forgotten")
    assert "0.410" in reason and reason.endswith("(with --push-past too)")
    again = {rid: src for rid, src in todo.items() if src.seed != 2}
    store.move(list(again), "running", batch="batch-0003")
    worker.refuse("batch-0003", again, {**verdict, Source(seed=1).key(): {"forgotten": True, "drawn": False,
                                                                          "photo_judge_dist_at_w_u": 0.7,
                                                                          "drawn_line": 0.56}}, report)
    states = {r["seed"]: (r["state"], r["reason"]) for r in store.all()}
    assert states[1][0] == "refused" and states[1][1].startswith("not drawn")
    assert states[3][0] == "failed" and "twice" in states[3][1]
    n, bad, _ = __import__("guide_engine.engine.audit", fromlist=["check"]).check(store.audit_path)
    assert bad is None and n == 3 + 3 + 3 + 1 + 1 + 2 + 2  # accepted, running, outcome, the second try, the rest
    assert '"push_past":1' in store.audit_path.read_text()  # the second try is in the trail


def test_second_tries_run_in_batches_of_their_own_with_push_past(tmp_path, monkeypatch):
    """The worker takes the oldest queued request's kind (first try or second) and only that kind into a batch; a
    batch with a second try in it is unlearned with --push-past, one without it at the worker's settings."""
    import guide_engine.apps.worker as worker_mod

    store = ForgetStore(tmp_path / "state")
    first, second, third = (store.add("seed", seed=s) for s in (11, 12, 13))
    store.move([first["id"]], "queued", "retry", push_past=1)  # the oldest is a second try
    for row, stamp in ((first, "2026-01-01T00:00:00+0000"), (second, "2026-01-01T00:00:01+0000"),
                       (third, "2026-01-01T00:00:02+0000")):
        store.db.execute("UPDATE requests SET created = ? WHERE id = ?", (stamp, row["id"]))
    worker = Worker(store, WorkerConfig(gather_s=0), log=lambda m: None)
    batches = []
    monkeypatch.setattr(worker, "run_batch", lambda batch: batches.append(
        sorted(r["seed"] for r in store.in_batch(batch))))
    assert worker.step() and batches == [[11]]
    store.move([first["id"]], "failed", "done with")
    assert worker.step() and batches[-1] == [12, 13]

    seen = {}
    def fake_unlearn(run, people, cfg, **kw):  # the config the batch's run is made with, then stop there
        seen["push_past"] = cfg.push_past
        raise worker_mod.GuideEngineError("stop here")
    monkeypatch.setattr(worker_mod, "unlearn_job", fake_unlearn)
    monkeypatch.setattr(worker_mod.ledger, "read", lambda run: {"identities": []})
    monkeypatch.setattr(worker, "served", lambda: tmp_path / "served")
    monkeypatch.setattr(worker_mod, "source_run", lambda served: served)
    for push, seed in ((1, 21), (0, 22)):
        row = store.add("seed", seed=seed)
        store.move([row["id"]], "running", batch=f"b{seed}", push_past=push)
        worker_mod.Worker.run_batch(worker, f"b{seed}")
        assert seen.pop("push_past") is bool(push) and store.get(row["id"])["state"] == "failed"


def test_a_state_directory_from_before_the_second_try_gains_its_column(tmp_path):
    import sqlite3

    from guide_engine.apps import forget_store

    state = tmp_path / "state"
    state.mkdir()
    old = sqlite3.connect(state / forget_store.DB)
    old.executescript(forget_store.SCHEMA.replace(",\n    push_past INTEGER NOT NULL DEFAULT 0", ""))
    old.execute("INSERT INTO requests (id, kind, seed, state, created, updated) VALUES ('a', 'seed', 5, 'queued', "
                "'t', 't')")
    old.commit()
    old.close()
    store = ForgetStore(state)
    assert store.get("a")["push_past"] == 0 and store.add("seed", seed=6)["push_past"] == 0


def test_each_deployment_is_the_next_version_of_a_triton_model_folder(tmp_path):
    """--triton-repo: the export's ONNX lands as MODEL/<n+1>/model.onnx, whole (renamed from a hidden folder), once
    per batch; a folder that is no Triton model is refused in one line."""
    from guide_engine.apps.worker import write_triton_version
    from guide_engine.engine.exportdir import write_manifest

    export = tmp_path / "batch-0001-export"
    export.mkdir()
    (export / "generator.onnx").write_bytes(b"onnx bytes")
    write_manifest(export, {"artifacts": {"onnx": {"file": "generator.onnx", "sha256": "x"}}})
    model = tmp_path / "repo" / "guide_s0"
    (model / "1").mkdir(parents=True)
    store = ForgetStore(tmp_path / "state")
    with pytest.raises(GuideEngineError, match="no config.pbtxt"):
        write_triton_version(export, model, "batch-0001", store)
    (model / "config.pbtxt").write_text('name: "guide_s0"\n')
    assert write_triton_version(export, model, "batch-0001", store) == 2
    assert (model / "2" / "model.onnx").read_bytes() == b"onnx bytes"
    assert write_triton_version(export, model, "batch-0001", store) == 2  # a resumed batch: not a third version
    assert sorted(p.name for p in model.iterdir()) == ["1", "2", "config.pbtxt"]


def test_a_second_store_in_the_process_keeps_the_first_one_seeing_other_processes(tmp_path):
    """The server holds two connections (its own, the swapper's) while the worker, another process, writes. Opening
    the second once closed a descriptor of the database, which drops the process's POSIX locks: the worker then
    deleted the WAL under the server, and the server never saw a batch ready (measured: stuck for 10 minutes)."""
    state = tmp_path / "state"
    first = ForgetStore(state)
    assert first.meta("deploy_next") is None
    second = ForgetStore(state)  # noqa: F841  (the swapper's connection)
    code = (f"from pathlib import Path\nfrom guide_engine.apps.forget_store import ForgetStore\n"
            f"s = ForgetStore(Path({str(state)!r}))\ns.set_meta('deploy_next', 'runs/batch-0001')\ns.close()\n")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert first.meta("deploy_next") == "runs/batch-0001"
    assert (state / "requests.db-wal").exists()  # not deleted under the first connection
