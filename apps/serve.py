"""`guide-engine serve`: an HTTP service for an unlearned generator (FastAPI + uvicorn, the `serve` extra).

POST /v1/generate  {"seeds": [...]} or {"latents": [[...], ...]}  => one image: image/png;
                   several: JSON {"images": [base64 PNG | null], "withheld": [indices]}
GET  /healthz, /readyz, /v1/model (manifest: unlearned identities as hashes, the verification levels)
KServe v2 / Open Inference Protocol (what Triton Inference Server speaks; apps/serve_api.py):
GET  /v2, /v2/health/live, /v2/health/ready, /v2/models/{name}, /v2/models/{name}/ready
POST /v2/models/{name}/infer   input `w` FP32 [N, *latent_shape] => output `image` FP32 [N, 3, H, W]
GET  /metrics (Prometheus text), /openapi.json and /docs (the typed API)

Concurrent requests are grouped by a micro-batcher (up to the max batch, or `max_wait_ms`) behind a
bounded queue: when `max_queue` latents are already waiting, a request is answered 429 with Retry-After
at once. Bodies are limited while they are read (chunked ones too). Bad input gets a 4xx with a one-line
`error` and never reaches the model. By default an artifact that did not pass the level its `verify`
required is refused. `guard=True` embeds every image with the judge network (the one `verify` grades
with) and withholds any that it puts closer to an unlearned identity than the strangers' 1st
percentile, the same line `verify` uses for "the attack found the person". SIGTERM: uvicorn stops
accepting and finishes what is in flight (up to the request timeout).
"""

import asyncio  # no `from __future__ import annotations`: FastAPI must see the real Request class
import base64
import dataclasses
import io
import math
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path

import torch

from ..engine import reports
from ..engine.errors import GuideEngineError, IntegrityError
from ..engine.images import SEED_MAX
from ..engine.models import zoo
from ..engine.settings import flag
from . import forget
from .batcher import MicroBatcher, QueueFull
from .forget_store import PENDING
from .serve_metrics import Metrics, MetricsMiddleware
from .worker import WorkerConfig, source_of


@dataclass(frozen=True)
class ServeConfig:
    """Every setting of `serve`, declared once (engine/settings.py): the CLI's options are built from it."""

    backend: str = flag("auto", "auto: for an export directory, its fastest measured runtime per batch size; "
                        "otherwise torch.", choices=("auto", "torch", "onnxruntime", "tensorrt"))
    max_batch: int = flag(32, "Micro-batch size limit.")
    max_wait_ms: float = flag(5.0, "Micro-batch collection window, milliseconds.")
    max_per_request: int = flag(16, "Seeds or latents one request may ask for.")
    max_body_bytes: int = flag(1 << 20, "Request body limit (413 beyond).")
    max_queue: int = flag(256, "Latents accepted and not yet answered; beyond it a request gets 429 + Retry-After "
                          "at once.")
    timeout_s: float = flag(30.0, "Per-request timeout, seconds: the body, the queue and generation (408 past "
                            "it).", name="--timeout")
    header_timeout_s: float = flag(10.0, "A request's line and headers must arrive within this many seconds, else "
                                   "the connection is closed.", name="--header-timeout")
    allow_unverified: bool = flag(False, "Serve an artifact whose verification has not passed or does not match its "
                                  "files (said in /v1/model and the log).", is_flag=True)
    guard: bool = flag(False, "Withhold images that match an unlearned identity.", is_flag=True)
    # forget requests over HTTP (apps/forget.py): on with both of these
    admin_token_file: str | None = flag(None, "File holding the bearer token of /v1/forget (mode 600); with "
                                        "--state-dir, turns the forget endpoints on.")
    state_dir: str | None = flag(None, "Where forget requests, their runs and audit.jsonl live (owner-only).")
    forget_require: str = flag("forgotten", "The verify level a batch of forget requests must pass to be deployed.",
                               choices=("forgotten", "robust"))
    forget_iters: int | None = flag(None, "Unlearn iterations per batch of forget requests.",
                                    shown="the unlearn default for the ledger's size")
    forget_max_bytes: int = flag(16 << 20, "Body limit of POST /v1/forget (a photo).")
    triton_repo: str | None = flag(None, "A model's folder in a Triton model repository: each deployment also "
                                   "writes its ONNX there as the next version.")
    worker_threads: int | None = flag(None, "Threads of the forget worker (a child process at nice 10).",
                                      shown="CPU count - 1")
    no_worker: bool = flag(False, "Do not start the forget worker (run `guide-engine worker DIR` elsewhere).",
                           is_flag=True)

    def __post_init__(self):
        if min(self.max_batch, self.max_per_request) < 1 or self.max_queue < self.max_per_request:
            raise GuideEngineError("serve: --max-batch and --max-per-request at least 1, --max-queue at least "
                                   "--max-per-request")
        if self.max_body_bytes < 1024 or self.max_wait_ms < 0 or not (self.timeout_s > 0 and self.header_timeout_s > 0):
            raise GuideEngineError("serve: --max-body-bytes at least 1024, --timeout and --header-timeout above 0, "
                                   "--max-wait-ms at least 0")
        if (self.admin_token_file is None) != (self.state_dir is None):
            raise GuideEngineError("serve: forget requests need both --admin-token-file and --state-dir")
        if (self.forget_iters is not None and self.forget_iters < 1) or self.forget_max_bytes < 1024 or \
                (self.worker_threads is not None and self.worker_threads < 1):
            raise GuideEngineError("serve: --forget-iters and --worker-threads at least 1, --forget-max-bytes at "
                                   "least 1024")


BINARY = {"type": "string", "format": "binary"}  # an OpenAPI body of raw bytes


class ServeError(GuideEngineError):
    """A request the server answers with `status` and a one-line `error` (never a traceback)."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers or {}


def _png(image: torch.Tensor) -> bytes:
    from PIL import Image

    from ..engine.images import to_uint8

    buf = io.BytesIO()
    Image.fromarray(to_uint8(image[None])[0]).save(buf, format="PNG")
    return buf.getvalue()


def load_service(source: Path, cfg: ServeConfig):
    """=> (infer, latents_for_seeds, latent_shape, model_info, guard_fn or None). The files are checked
    against their records before they are used (engine/integrity.py), and the report against the files
    (engine/reports.py: check)."""
    from ..engine import integrity, rundir
    from ..engine.sampling import load_generator_source, resolve_backend

    source = Path(source)
    if not source.is_dir():
        raise GuideEngineError(f"{source}: give an unlearn run directory or an export directory")
    report_path = source / reports.REPORT
    report = reports.read(source)
    cfg = dataclasses.replace(cfg, backend=resolve_backend(source, cfg.backend))
    if cfg.backend == "torch":
        from ..engine.backends import TorchRunner

        generator = load_generator_source(source)  # its files checked against the run's manifest
        infer = TorchRunner(generator, cfg.max_batch).infer
        base, verified = generator, generator.verified
    else:
        from ..engine.backends import open_runner

        runner = open_runner(source, cfg.backend)  # its artifact checked against export.json
        infer = runner.infer
        base, verified = zoo.load_generator(runner.manifest["generator"]), runner.verified
    integrity_note = None
    if report is not None:  # the verdict must be about these very bytes, and follow from its own figures
        try:
            reports.check(report, verified, report_path)
            signed = integrity.check_signature(report, report_path)
        except IntegrityError as e:
            if not cfg.allow_unverified:
                raise
            integrity_note, signed = f"serving WITHOUT a valid verification: {e}", False
            print(f"warning: {integrity_note}", file=sys.stderr)
    else:
        signed = False
    if not cfg.allow_unverified and not (report and report.get("passed")):
        why = "has not been verified" if report is None else \
            f"failed verification (required level: {report.get('required', 'forgotten')})"
        raise GuideEngineError(f"{source} {why}; run `guide-engine verify {source}` first, or pass --allow-unverified")
    manifest = rundir.read_manifest(source)
    info = {"source": source.name, "backend": cfg.backend, "generator": manifest.get("generator", getattr(base, "name",
                                                                                                          None)),
            "unlearned_identities": _ledger_hashes(source),
            "result_sha256": manifest.get("result_sha256"),
            "verification": None if report is None else {
                "passed": report.get("passed") and integrity_note is None, "required": report.get("required"),
                "levels": report.get("levels"), "judge": report.get("judge"), "attack": report.get("attack"),
                "thresholds": report.get("thresholds"), "judged": report.get("judged"), "signature_checked": signed},
            "integrity": integrity_note or "weights and ledger match their records",
            "weights_sha256": verified["weights_sha256"],
            "max_batch": cfg.max_batch, "max_per_request": cfg.max_per_request, "guard": cfg.guard}
    guard = None
    if cfg.guard:
        guard = _make_guard(source, base, report)
    return infer, base.latents_for_seeds, tuple(base.latent_shape), info, guard


def _ledger_hashes(source: Path) -> list[str]:
    """The forgotten identities as hashes of their latents (the ledger's), never the latents themselves."""
    from ..guide import ledger

    try:
        return [e["identity_hash"] for e in ledger.read(source)["identities"]]
    except GuideEngineError:
        return []


def _make_guard(source: Path, base, report) -> forget.JudgeGuard:
    """The --guard rule: the judge's distance to any ledger identity's pretrained image below the strangers' 1st
    percentile (calibrated on the base generator, cached)."""
    from ..guide import ledger

    try:
        book = ledger.read(source)
    except GuideEngineError as e:
        raise GuideEngineError(f"--guard needs the unlearned identities: {e}") from None
    guard = forget.JudgeGuard(base.name, ((report or {}).get("judge") or {}).get("name", zoo.DEFAULT_JUDGE))
    with torch.no_grad():
        refs = guard.judge.descriptors(guard.pretrained.synthesize(ledger.latents(book, tuple(base.latent_shape))))
    guard.set(dict(zip((e["identity_hash"] for e in book["identities"]), refs)))
    return guard


async def read_body(request, limit: int, deadline: float) -> bytes:
    """The whole body, refused with 413 as soon as it passes `limit` bytes (declared or while it streams in):
    a chunked request without Content-Length cannot grow the server's memory. It must have arrived by `deadline`
    (time.monotonic()), else 408: a client sending a byte a second holds no connection past the request timeout.
    A client that goes away mid-body is one line in the log."""
    from starlette.requests import ClientDisconnect

    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ServeError(413, f"request body of {declared} bytes is over the limit of {limit}")
    body = bytearray()

    async def read() -> None:
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > limit:
                raise ServeError(413, f"request body is over the limit of {limit} bytes")

    try:
        await asyncio.wait_for(read(), max(0.0, deadline - time.monotonic()))
    except asyncio.TimeoutError:
        raise ServeError(408, f"the request body did not arrive within the request timeout ({len(body)} bytes "
                              f"came)", {"Connection": "close"}) from None
    except ClientDisconnect:
        client = f"{request.client.host}:{request.client.port}" if request.client else "a client"
        print(f"guide-engine serve: {client} went away while sending its body ({len(body)} bytes came)",
              file=sys.stderr)
        raise ServeError(400, "the client went away before its body arrived") from None
    return bytes(body)


def parse_generate(body: bytes, model, latent_shape: tuple[int, ...], latents_for_seeds) -> torch.Tensor:
    """A /v1/generate body => latents (N, *latent_shape); any problem raises ServeError 400."""
    from pydantic import ValidationError

    from .serve_api import one_line

    try:
        req = model.model_validate_json(body)
    except ValidationError as e:
        raise ServeError(400, one_line(e)) from None
    if req.seeds is not None:
        return latents_for_seeds(req.seeds)
    return torch.tensor(req.latents, dtype=torch.float32).reshape(len(req.latents), *latent_shape)


def _openapi_body(model, components: dict, description: str) -> dict:
    """openapi_extra documenting a body that the handler reads itself (bounded) and validates with `model`."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(schema.pop("$defs", {}))
    return {"requestBody": {"required": True, "description": description,
                            "content": {"application/json": {"schema": schema}}}}


def create_app(source: Path, cfg: ServeConfig):
    try:
        from fastapi import FastAPI, Request
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import JSONResponse, Response
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        from starlette.exceptions import HTTPException
    except ImportError:
        raise GuideEngineError("serving needs FastAPI, uvicorn and prometheus-client: "
                               "pip install 'guide-engine[serve]'") from None
    from . import serve_api as api

    source, store = Path(source), None
    served = source
    if cfg.state_dir is not None:  # forget requests: the token first, then what the state directory serves now
        token = forget.read_token(cfg.admin_token_file)
        store, served = forget.open_state(Path(cfg.state_dir), source)
        old = store.read_config() if store.has_config() else {}
        store.write_config({**old, **worker_config(cfg)})
    infer, latents_for_seeds, latent_shape, info, guard = load_service(served, cfg)
    image_shape = tuple(infer(latents_for_seeds([0])).shape[1:])  # warm-up before ready
    metrics = Metrics()
    batcher = MicroBatcher(infer, cfg.max_batch, cfg.max_wait_ms, cfg.max_queue, metrics)
    live = types.SimpleNamespace(info=info, guard=guard)  # what a hot swap replaces (with batcher.infer)
    name = source.name  # the model's name stays when a forget request swaps new weights in
    GenerateRequest = api.generate_request_model(cfg.max_per_request, math.prod(latent_shape))
    components: dict = {}
    app = FastAPI(title="guide-engine", version="1",
                  description="An unlearned face generator: /v1 (this engine's API) and /v2 (KServe v2, as Triton).")
    app.state.batcher, app.state.metrics = batcher, metrics
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    errors = {s: {"model": api.ErrorBody} for s in (400, 404, 408, 413, 429)}

    def error(status: int, msg: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": msg}, status_code=status, headers=headers)

    @app.exception_handler(ServeError)
    async def on_serve_error(request, e: ServeError):
        return error(e.status, str(e), e.headers)

    @app.exception_handler(HTTPException)  # unknown routes, wrong methods: the same one-line body
    async def on_http_error(request, e: HTTPException):
        return error(e.status_code, str(e.detail), getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request, e: RequestValidationError):
        first = e.errors()[0]
        return error(400, f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}")

    async def generate_images(w: torch.Tensor, deadline: float) -> tuple[torch.Tensor, list[bool]]:
        try:
            images = await asyncio.wait_for(batcher.submit(w), max(0.0, deadline - time.monotonic()))
        except QueueFull:
            metrics.queue_full.inc()
            raise ServeError(429, f"the queue is full ({cfg.max_queue} latents waiting); retry shortly",
                             {"Retry-After": "1"}) from None
        except asyncio.TimeoutError:
            raise ServeError(408, f"the request took longer than its timeout ({cfg.timeout_s:g} s)") from None
        except ServeError:
            raise
        except GuideEngineError as e:  # the model refused these latents: the request's fault, said in one line
            raise ServeError(400, str(e)) from None
        withheld = await asyncio.get_running_loop().run_in_executor(None, withheld_of, images)
        metrics.withheld.inc(sum(withheld))
        return images, withheld

    def withheld_of(images: torch.Tensor) -> list[bool]:
        """The --guard rule on the forgotten identities (the ledger's), and on pending forget requests always; the
        images go through the judge once when both guards have the same one."""
        ledger_guard = live.guard
        if ledger_guard is None and (pending is None or not pending.refs):
            return [False] * len(images)
        first = ledger_guard or pending
        d = first.judge.descriptors(images)
        out = ledger_guard.hits(d) if ledger_guard else [False] * len(images)
        if pending is not None and pending.refs:
            same = pending.judge.name == first.judge.name
            for_pending = pending.hits(d) if same else pending(images)
            metrics.withheld_pending.inc(sum(p and not o for p, o in zip(for_pending, out)))
            out = [o or p for o, p in zip(out, for_pending)]
        return out

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        return {"status": "ready", "model": name}

    @app.get("/v1/model")
    async def model():
        return live.info

    @app.post("/v1/generate", response_model=None, openapi_extra=_openapi_body(
                  GenerateRequest, components, "seeds or latents (flat lists), at most "
                  f"{cfg.max_per_request} per request, body at most {cfg.max_body_bytes} bytes"),
              responses={200: {"model": api.ImagesResponse, "description": "one image: image/png; several: JSON",
                               "content": {"image/png": {"schema": BINARY}}},
                         451: {"model": api.ErrorBody,
                               "description": "withheld: the image shows an unlearned identity"},
                         **errors})
    async def generate(request: Request):
        deadline = time.monotonic() + cfg.timeout_s  # the whole request: its body, the queue, generation
        body = await read_body(request, cfg.max_body_bytes, deadline)
        images, withheld = await generate_images(parse_generate(body, GenerateRequest, latent_shape, latents_for_seeds),
                                                 deadline)
        if len(images) == 1 and withheld[0]:
            raise ServeError(451, "image withheld: it matches an unlearned identity")
        pngs = await asyncio.get_running_loop().run_in_executor(  # PNG encoding off the event loop
            None, lambda: [None if h else _png(im) for im, h in zip(images, withheld)])
        if len(images) == 1:
            return Response(pngs[0], media_type="image/png")
        return {"images": [None if p is None else base64.b64encode(p).decode() for p in pngs],
                "withheld": [i for i, h in enumerate(withheld) if h]}

    # ---- KServe v2 / Open Inference Protocol: the client code written for Triton works here ----
    def known(model_name: str) -> None:
        if model_name != name:
            raise ServeError(404, f"unknown model {model_name!r}; this server serves {name!r}")

    @app.get("/v2", response_model=api.ServerMetadata)
    async def v2_server():
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("guide-engine")
        except PackageNotFoundError:
            v = "unknown"
        return {"name": "guide-engine", "version": v, "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live", response_model=api.Live)
    async def v2_live():
        return {"live": True}

    @app.get("/v2/health/ready", response_model=api.Ready)
    async def v2_ready():
        return {"ready": True}

    @app.get("/v2/models/{model_name}", response_model=api.ModelMetadata, responses={404: errors[404]})
    async def v2_model(model_name: str):
        known(model_name)
        return {"name": name, "versions": ["1"], "platform": info["backend"],
                "inputs": [{"name": "w", "datatype": "FP32", "shape": [-1, *latent_shape]}],
                "outputs": [{"name": "image", "datatype": "FP32", "shape": [-1, *image_shape]}]}

    @app.get("/v2/models/{model_name}/ready", response_model=api.ModelReady, responses={404: errors[404]})
    async def v2_model_ready(model_name: str):
        known(model_name)
        return {"name": name, "ready": True}

    @app.post("/v2/models/{model_name}/infer", response_model=None, openapi_extra=_openapi_body(
                  api.InferRequest, components, f"input `w` FP32 [N, {', '.join(map(str, latent_shape))}], N at most "
                  f"{cfg.max_per_request}; or the binary extension (JSON header, then raw little-endian FP32, its "
                  f"length in the {api.INFER_HEADER} header)"),
              responses={200: {"model": api.InferResponse, "description": "JSON, or binary (header + raw FP32)",
                               "content": {"application/octet-stream": {"schema": BINARY}}},
                         451: {"model": api.ErrorBody, "description": "withheld: an image shows an unlearned identity"},
                         **errors})
    async def v2_infer(model_name: str, request: Request):
        known(model_name)
        deadline = time.monotonic() + cfg.timeout_s
        body = await read_body(request, cfg.max_body_bytes, deadline)
        try:
            w, req, binary = api.parse_v2(body, request.headers.get(api.INFER_HEADER), latent_shape,
                                          cfg.max_per_request)
        except GuideEngineError as e:
            raise ServeError(400, str(e)) from None
        images, withheld = await generate_images(torch.from_numpy(w), deadline)
        if any(withheld):
            raise ServeError(451, f"images {[i for i, h in enumerate(withheld) if h]} withheld: they match an "
                                  f"unlearned identity")
        content, headers = api.encode_v2(images.numpy(), name, req, binary)
        return Response(content, headers=headers, media_type=headers["content-type"])

    pending = None
    if store is not None:
        pending = forget.JudgeGuard(info["generator"], ((reports.read(served) or {}).get("judge") or {}).get(
            "name", zoo.DEFAULT_JUDGE))
        pending.set({r["id"]: pending.reference(source_of(r)) for r in store.with_state(*PENDING)
                     if r["kind"] == "seed" or Path(r["photo_file"] or "").is_file()})

        def load(target: Path):
            new = load_service(target, cfg)
            if tuple(new[0](new[1]([0])).shape[1:]) != image_shape:  # warm-up, and the same image shape
                raise GuideEngineError(f"{target}: draws images of another shape; not swapped in")
            return new

        def swap(new) -> None:  # attribute assignments: a batch in flight keeps the infer it started with
            batcher.infer, live.info, live.guard = new[0], new[3], new[4]
            metrics.swaps.inc()
            print(f"guide-engine serve: now serving {new[3]['source']} (weights {new[3]['weights_sha256'][:16]}...)",
                  file=sys.stderr)

        app.state.swapper = forget.Swapper(Path(cfg.state_dir), load, swap, pending)
        app.state.swapper.start()
        app.state.store = store
        add_forget_routes(app, cfg, store, token, pending, error_models=errors)

    @app.get("/metrics", response_class=Response,
             responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}}})
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    default_openapi = app.openapi

    def openapi():  # the request bodies' nested models go where their $refs point
        if app.openapi_schema is None:
            schema = default_openapi()
            schema.setdefault("components", {}).setdefault("schemas", {}).update(components)
        return app.openapi_schema

    app.openapi = openapi
    return app


def worker_config(cfg: ServeConfig) -> dict:
    """The forget worker's settings that serve's flags own (STATE_DIR/config.json; the file's other settings, an
    operator's, are kept: apps/worker.py: WorkerConfig)."""
    return {"require": cfg.forget_require, "iters": cfg.forget_iters,
            "triton_repo": str(Path(cfg.triton_repo).resolve()) if cfg.triton_repo else None,
            "threads": cfg.worker_threads or WorkerConfig.threads}


def add_forget_routes(app, cfg: ServeConfig, store, token: str, pending, error_models: dict) -> None:
    """POST /v1/forget, GET /v1/forget, /v1/forget/{id}, /v1/forget/{id}/certificate (apps/forget.py)."""
    from fastapi import Request
    from fastapi.responses import JSONResponse

    def admin(request) -> None:
        if not forget.authorized(request.headers.get("authorization"), token):
            raise ServeError(401, "give the admin token: Authorization: Bearer <token>", {"WWW-Authenticate": "Bearer"})

    def known(request_id: str) -> dict:
        row = store.get(request_id)
        if row is None:
            raise ServeError(404, f"no forget request {request_id!r}")
        return row

    responses = {s: error_models.get(s, {"model": error_models[400]["model"]}) for s in (400, 401, 404, 408, 413)}

    @app.post("/v1/forget", status_code=202, responses={**responses, 415: responses[400], 422: responses[400]},
              openapi_extra={"requestBody": {"required": True, "content": {
                  "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
                      "image": BINARY, "face": {"type": "integer", "minimum": 0}}}},
                  "application/json": {"schema": {"type": "object", "required": ["seed"], "properties": {
                      "seed": {"type": "integer", "minimum": 0, "maximum": SEED_MAX}}}}}}})
    async def forget_post(request: Request):
        admin(request)  # before the body: an unauthorised request stores nothing
        deadline = time.monotonic() + cfg.timeout_s
        body = await read_body(request, cfg.forget_max_bytes, deadline)
        ctype = request.headers.get("content-type", "application/json")
        loop = asyncio.get_running_loop()
        try:
            if ctype.startswith("multipart/form-data"):
                fields = forget.parse_multipart(body, ctype)
                if "image" not in fields:
                    raise ServeError(400, 'multipart/form-data: give the photo in the field "image"')
                face = fields.get("face", (b"", None))[0].decode("latin-1").strip() or None
                if face is not None and not face.isdigit():
                    raise ServeError(400, f"face {face!r}: 0 is the largest face, 1 the next, ...")
                data, filename = fields["image"]
                work = lambda: forget.prepare_photo(pending, store.photos, data, filename,  # noqa: E731
                                                    None if face is None else int(face))
                kind = "photo"
            elif ctype.startswith("application/json"):
                seed = forget.parse_seed(body)
                work = lambda: forget.prepare_seed(pending, seed)  # noqa: E731
                kind = "seed"
            else:
                raise ServeError(415, f"content-type {ctype.split(';')[0]!r}: give multipart/form-data (a photo) or "
                                      f"application/json ({{\"seed\": N}})")
        except GuideEngineError as e:
            raise ServeError(400, str(e)) from None
        try:
            prepared = await asyncio.wait_for(loop.run_in_executor(None, work), max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            raise ServeError(408, f"the photo could not be checked within the request timeout ({cfg.timeout_s:g} s)"
                             ) from None
        except GuideEngineError as e:  # no face, not an image, too small: nothing kept
            raise ServeError(422 if kind == "photo" else 400, str(e)) from None
        except Exception as e:  # a photo the decoder or the detector cannot take: the request's fault, one line
            raise ServeError(422, f"the photo could not be read ({type(e).__name__})") from None
        row = forget.accept(store, pending, prepared)  # on the event loop: one writer of the server's connection
        return JSONResponse({"id": row["id"], "state": row["state"], "status_url": f"/v1/forget/{row['id']}"},
                            status_code=202)

    @app.get("/v1/forget", responses=responses)
    async def forget_list(request: Request):
        admin(request)
        return {"requests": [forget.status(r) for r in store.all()], "audit_head": store.audit_head()}

    @app.get("/v1/forget/{request_id}", responses=responses)
    async def forget_get(request_id: str, request: Request):
        admin(request)
        return forget.status(known(request_id))

    @app.get("/v1/forget/{request_id}/certificate", responses={**responses, 409: responses[400]})
    async def forget_certificate(request_id: str, request: Request):
        admin(request)
        row = known(request_id)
        if row["state"] != "deployed":
            raise ServeError(409, f"forget request {request_id} is {row['state']}: a certificate comes when it is "
                                  f"deployed")
        return forget.certificate(row, store.audit_head())


def header_deadline_protocol(seconds: float):
    """uvicorn's h11 protocol with a deadline for each request's line and headers. uvicorn bounds neither (its
    keep-alive timer is reset by every byte received), so a client trickling a header a byte at a time held a
    connection for as long as it liked. The deadline runs from the connection (or the previous response) until the
    request's headers are complete; then the request timeout takes over (read_body). On expiry the connection is
    closed and one line is logged."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadlineProtocol(H11Protocol):
        _header_timer = None

        def connection_made(self, transport):
            super().connection_made(transport)
            self._arm()

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(seconds, self._too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _too_slow(self) -> None:
            self._header_timer = None
            if self.cycle is not None and not self.cycle.response_complete:
                return  # a request is being answered (pipelined): its own timeout applies
            if not self.transport.is_closing():
                client = "%s:%d" % self.client if self.client else "a client"
                print(f"guide-engine serve: {client} sent no complete request headers within {seconds:g} s; closed",
                      file=sys.stderr)
                self.transport.close()

        def handle_events(self) -> None:
            before = self.cycle
            super().handle_events()
            if self.cycle is not before:  # a request's headers arrived
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():  # keep-alive: the next request's headers are due in time too
                self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderDeadlineProtocol


def start_worker(state_dir: Path):
    """The forget worker as a child process (apps/worker.py: nice 10, fewer threads, dies with the server)."""
    import subprocess

    return subprocess.Popen([sys.executable, "-m", "guide_engine.apps.cli", "worker", str(state_dir), "--child"])


def serve(source: Path, cfg: ServeConfig, host: str = "127.0.0.1", port: int = 8000) -> None:
    app = create_app(source, cfg)
    import uvicorn

    worker = start_worker(Path(cfg.state_dir)) if cfg.state_dir and not cfg.no_worker else None

    # SIGTERM / Ctrl-C: stop accepting, finish the requests in flight (at most the request timeout), exit
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=math.ceil(cfg.timeout_s),
                    http=header_deadline_protocol(cfg.header_timeout_s))
    finally:
        if worker is not None:  # its run resumes from its checkpoint when the server starts again
            worker.terminate()
            try:
                worker.wait(timeout=30)
            except Exception:
                worker.kill()
