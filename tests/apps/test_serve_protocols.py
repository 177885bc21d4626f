"""Serving to operators' conventions, on a live loopback server: the typed OpenAPI, the KServe v2 protocol
driven by tritonclient.http (the client written for Triton Inference Server), Prometheus metrics,
backpressure (429 + Retry-After, then 200s), the body limit on a chunked upload, graceful SIGTERM, and a
bounded schemathesis fuzz of the whole API (no 5xx; every response as documented)."""
import http.client
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the `serve` extra is not installed")
pytest.importorskip("prometheus_client", reason="the `serve` extra is not installed")

from guide_engine.apps.serve import ServeConfig, create_app  # noqa: E402
from guide_engine.bench.serving import free_port, rss_mb, start_server  # noqa: E402


class LiveServer:
    """uvicorn in a thread of this process, on a free loopback port."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline, "server did not start"
            time.sleep(0.05)
        self.url = f"127.0.0.1:{self.port}"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def run_dir(tiny_run_factory):
    return tiny_run_factory(0)


@pytest.fixture(scope="module")
def live(run_dir):
    app = create_app(run_dir, ServeConfig(allow_unverified=True, max_per_request=8))
    server = LiveServer(app)
    yield server, app, run_dir.name
    server.stop()


def test_openapi_documents_bodies_and_responses(live):
    import httpx

    server, _, _ = live
    spec = httpx.get(f"http://{server.url}/openapi.json").json()
    gen = spec["paths"]["/v1/generate"]["post"]
    body = gen["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["properties"]) == {"seeds", "latents"} and body["additionalProperties"] is False
    assert {"image/png", "application/json"} <= set(gen["responses"]["200"]["content"])
    assert {"400", "408", "413", "429", "451"} <= set(gen["responses"])
    assert not [s for s in gen["responses"] if s.startswith("5")]  # overload and timeouts are 4xx, never 5xx
    infer = spec["paths"]["/v2/models/{model_name}/infer"]["post"]
    ref = infer["requestBody"]["content"]["application/json"]["schema"]["properties"]["inputs"]["items"]["$ref"]
    assert ref.rsplit("/", 1)[1] in spec["components"]["schemas"]  # nested models resolvable


def test_tritonclient_infer_matches_sample(live, run_dir, tmp_path):
    """The client code written for Triton Inference Server, unchanged, against guide-engine serve."""
    import tritonclient.http as triton
    from click.testing import CliRunner

    from guide_engine.apps.cli import main
    from guide_engine.engine.sampling import load_generator_source

    server, _, name = live
    client = triton.InferenceServerClient(url=server.url)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(name)
    meta = client.get_model_metadata(name)
    assert meta["inputs"][0]["name"] == "w" and meta["outputs"][0]["shape"] == [-1, 3, 64, 64]

    seeds = [5, 11, 12]
    assert CliRunner().invoke(main, ["sample", str(run_dir), "--seeds", "5,11,12", "--out",
                                     str(tmp_path / "s.npy")]).exit_code == 0
    expected = np.load(tmp_path / "s.npy")
    w = load_generator_source(run_dir).latents_for_seeds(seeds).numpy().astype(np.float32)
    for binary in (True, False):  # the binary tensor extension (tritonclient's default) and plain JSON
        inp = triton.InferInput("w", list(w.shape), "FP32")
        inp.set_data_from_numpy(w, binary_data=binary)
        out = triton.InferRequestedOutput("image", binary_data=binary)
        image = client.infer(name, [inp], outputs=[out]).as_numpy("image")
        assert image.shape == expected.shape and np.abs(image - expected).max() <= 1e-5
    with pytest.raises(Exception, match="unknown model"):
        client.infer("other-model", [inp])


def test_metrics_count_what_was_sent(live):
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    server, _, _ = live
    url = f"http://{server.url}"

    def count():
        text = httpx.get(f"{url}/metrics").text
        fams = {f.name: f for f in text_string_to_metric_families(text)}  # parses as Prometheus text
        return {(s.labels["route"], s.labels["status"]): s.value for s in fams["guide_engine_requests"].samples
                if s.name.endswith("_total")}, fams

    before, _ = count()
    for _ in range(3):
        assert httpx.post(f"{url}/v1/generate", json={"seeds": [1, 2]}).status_code == 200
    assert httpx.post(f"{url}/v1/generate", json={"seeds": [-1]}).status_code == 400
    after, fams = count()
    assert after[("/v1/generate", "200")] - before.get(("/v1/generate", "200"), 0) == 3
    assert after[("/v1/generate", "400")] - before.get(("/v1/generate", "400"), 0) == 1
    assert {"guide_engine_request_seconds", "guide_engine_batch_size", "guide_engine_queue_depth",
            "guide_engine_inference_seconds", "guide_engine_withheld_images"} <= set(fams)


def test_burst_beyond_the_queue_gets_429_then_200(run_dir):
    import httpx

    # a long batching window holds the first requests in the queue while the burst arrives
    app = create_app(run_dir, ServeConfig(allow_unverified=True, max_per_request=4, max_queue=8, max_batch=64,
                                          max_wait_ms=1500))
    server = LiveServer(app)
    try:
        url = f"http://{server.url}/v1/generate"
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda i: httpx.post(url, json={"seeds": [i, i + 1]}, timeout=30), range(16)))
        codes = [a.status_code for a in answers]
        assert codes.count(200) == 4 and codes.count(429) == 12, codes  # 8 latents fit: 4 requests of 2
        full = next(a for a in answers if a.status_code == 429)
        assert full.headers["retry-after"] == "1" and "queue is full" in full.json()["error"]
        assert httpx.post(url, json={"seeds": [1]}, timeout=30).status_code == 200  # drained: served again
    finally:
        server.stop()


def test_generation_past_the_timeout_is_a_408_not_a_5xx(run_dir):
    import httpx

    # the batching window (3 s) outlasts the request's timeout (0.5 s): the wait for the batch is what runs out
    app = create_app(run_dir, ServeConfig(allow_unverified=True, max_batch=64, max_wait_ms=3000, timeout_s=0.5))
    server = LiveServer(app)
    try:
        answer = httpx.post(f"http://{server.url}/v1/generate", json={"seeds": [3]}, timeout=30)
        assert answer.status_code == 408, answer.text
        assert "longer than its timeout (0.5 s)" in answer.json()["error"]
    finally:
        server.stop()


@pytest.fixture
def server_process(run_dir):
    proc, port = start_server(str(run_dir), ("--allow-unverified", "--max-wait-ms", "1500"))
    yield proc, port
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads RSS from /proc")
def test_chunked_body_over_the_limit_is_cut_off(server_process):
    proc, port = server_process
    rss0 = rss_mb(proc.pid)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    chunk = b"1," * 32768  # 64 KiB

    def body():  # 50 MB, chunked (no Content-Length); the server may stop reading early
        for _ in range(50 * 16):
            yield chunk

    try:
        conn.request("POST", "/v1/generate", body=body(), headers={"Content-Type": "application/json"},
                     encode_chunked=True)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed while we were still sending: read its answer
    r = conn.getresponse()
    assert r.status == 413 and b"over the limit" in r.read()
    assert rss_mb(proc.pid) - rss0 < 20


def test_sigterm_finishes_what_is_in_flight(server_process):
    import httpx

    proc, port = server_process
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(httpx.post, f"http://127.0.0.1:{port}/v1/generate", json={"seeds": [3]}, timeout=60)
        time.sleep(0.5)  # the request sits in the 1.5 s batching window
        proc.send_signal(signal.SIGTERM)
        r = pending.result()
    assert r.status_code == 200 and r.content[:4] == b"\x89PNG"
    # exits by itself once drained; uvicorn re-raises the signal after its graceful shutdown, so the status
    # is "terminated by SIGTERM", as process supervisors expect
    assert proc.wait(30) in (0, -signal.SIGTERM)


def test_schemathesis_fuzz(live):
    """The app against its own OpenAPI: a bounded number of generated requests per operation; no 5xx, every
    status code documented, every response body matching its schema."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings

    _, app, _ = live
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    for op in schema.get_all_operations():
        operation = op.ok()
        # a v2 infer body that fits the schema can still name another tensor or send too few numbers for its
        # shape (JSON Schema cannot say so): there a 400 is right, so that one check is left out
        excluded = [schemathesis.checks.positive_data_acceptance] if operation.path.endswith("/infer") else []

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            case.call_and_validate(excluded_checks=excluded)

        check()


def test_slow_upload_gets_408_within_the_timeout_and_a_disconnect_is_one_line(run_dir, tmp_path):
    """Before: a 44-byte body sent at a byte a second was answered 200 after 43 s (the timeout did not cover the
    body), and a client that went away mid-body left a 61-line traceback in the log."""
    import socket

    log = open(tmp_path / "server.log", "w")
    proc, port = start_server(str(run_dir), ("--allow-unverified", "--timeout", "2"), stderr=log)
    try:
        body = b'{"seeds": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}  '
        head = (f"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.sendall(head)
        answer, sent = b"", 0
        s.settimeout(0.5)
        for b in body:  # a byte every half second: 22 s for the body, the server gives up after 2
            try:
                s.sendall(bytes([b]))
                sent += 1
                answer += s.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                break
            if answer:
                break
        s.settimeout(10)
        while b"\r\n\r\n" not in answer:
            more = s.recv(4096)
            if not more:
                break
            answer += more
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert sent < len(body)  # cut off while the body still trickled in (no wall-clock bound: CI may be loaded)
        s.close()
        s = socket.create_connection(("127.0.0.1", port), timeout=30)  # half a body, then gone
        s.sendall(head + body[:10])
        time.sleep(0.3)
        s.close()
        time.sleep(1.0)
        import httpx

        assert httpx.post(f"http://127.0.0.1:{port}/v1/generate", json={"seeds": [1]}, timeout=30).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()
    text = (tmp_path / "server.log").read_text()
    assert "Traceback" not in text, text[-3000:]
    assert text.count("went away while sending its body") == 1, text[-3000:]


def test_slow_headers_are_cut_off(run_dir, tmp_path):
    """uvicorn bounds no request's headers (its keep-alive timer restarts at every byte): a client sending a header
    byte at a time held its connection open (16 such stayed past 37 s). With --header-timeout 2 they are closed."""
    import socket

    log = open(tmp_path / "server.log", "w")
    proc, port = start_server(str(run_dir), ("--allow-unverified", "--header-timeout", "2"), stderr=log)
    try:
        conns = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(4)]
        for c in conns:
            c.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\n")
        t0, closed = time.time(), set()
        while len(closed) < len(conns) and time.time() - t0 < 20:
            for i, c in enumerate(conns):
                if i in closed:
                    continue
                try:
                    c.settimeout(0.05)
                    c.sendall(b"X")  # one more header byte
                    if c.recv(4096) == b"":
                        closed.add(i)
                except socket.timeout:
                    pass
                except OSError:
                    closed.add(i)
            time.sleep(0.4)
        # each closed while it still sent a header byte every 0.4 s (without the timeout none is, ever); the loop's
        # own 20 s bound is the only clock here: a loaded machine may take longer than 2 s to close them
        assert len(closed) == len(conns), (closed, time.time() - t0)
        import httpx

        r = httpx.post(f"http://127.0.0.1:{port}/v1/generate", json={"seeds": [1]}, timeout=30)
        assert r.status_code == 200  # a request that sends its headers at once is served as before
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()
    text = (tmp_path / "server.log").read_text()
    assert "Traceback" not in text and text.count("sent no complete request headers") == 4, text[-3000:]
