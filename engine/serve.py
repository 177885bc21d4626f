"""`guide-engine serve`: an HTTP service for an unlearned generator (FastAPI + uvicorn, the `serve` extra).

POST /v1/generate  {"seeds": [...]} or {"latents": [[...], ...]}  => one image: image/png;
                   several: JSON {"images": [base64 PNG | null], "withheld": [indices]}
GET  /healthz, /readyz, /v1/model (manifest: unlearned identities as hashes, the verification levels)

Concurrent requests are grouped by a micro-batcher (up to the max batch, or `max_wait_ms`). Bad input
gets a 4xx with a one-line message and never reaches the model. By default an artifact that did not
pass the level its `verify` required is refused. `guard=True` embeds every image with the judge
network (the one `verify` grades with) and withholds any that it puts closer to an unlearned identity
than the strangers' 1st percentile, the same line `verify` uses for "the attack found the person".
"""

import asyncio  # no `from __future__ import annotations`: FastAPI must see the real Request class
import base64
import io
import json
import math
import sys
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from guide_engine.engine.errors import GuideEngineError, IntegrityError

SEED_MAX = 2**31 - 1
LATENT_ABS_MAX = 1e3


@dataclass(frozen=True)
class ServeConfig:
    backend: str = "auto"  # auto: an export's fastest measured runtime for each micro-batch's size
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_per_request: int = 16
    max_body_bytes: int = 1 << 20
    timeout_s: float = 30.0
    allow_unverified: bool = False
    guard: bool = False


class MicroBatcher:
    """Groups concurrent requests' latents into one `infer` call (up to max_batch latents, or max_wait_ms)."""

    def __init__(self, infer, max_batch: int, max_wait_ms: float):
        self.infer, self.max_batch, self.max_wait = infer, max_batch, max_wait_ms / 1000
        self.queue: asyncio.Queue | None = None
        self.loop = None
        self.calls: list[int] = []  # batch size of each infer call (for tests and metrics)

    async def submit(self, w: torch.Tensor) -> torch.Tensor:
        if self.loop is not asyncio.get_running_loop():  # first call, or a new event loop: (re)start the worker
            self.loop = asyncio.get_running_loop()
            self.queue = asyncio.Queue()
            self.loop.create_task(self._worker())
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((w, fut))
        return await fut

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            n = len(items[0][0])
            deadline = loop.time() + self.max_wait
            while n < self.max_batch:
                try:
                    item = await asyncio.wait_for(self.queue.get(), max(0.0, deadline - loop.time()))
                except asyncio.TimeoutError:
                    break
                if n + len(item[0]) > self.max_batch:
                    await self._run(items)
                    items, n = [], 0
                items.append(item)
                n += len(item[0])
            await self._run(items)

    async def _run(self, items) -> None:
        if not items:
            return
        w = torch.cat([w for w, _ in items])
        self.calls.append(len(w))
        try:
            images = await asyncio.get_running_loop().run_in_executor(None, self.infer, w)
        except Exception as e:  # the worker must survive any failure
            for _, fut in items:
                if not fut.done():
                    fut.set_exception(e)
            return
        i = 0
        for w_i, fut in items:
            if not fut.done():
                fut.set_result(images[i:i + len(w_i)])
            i += len(w_i)


def _png(image: torch.Tensor) -> bytes:
    from PIL import Image

    from guide_engine.engine.images import to_uint8

    buf = io.BytesIO()
    Image.fromarray(to_uint8(image[None])[0]).save(buf, format="PNG")
    return buf.getvalue()


def load_service(source: Path, cfg: ServeConfig):
    """=> (infer, latents_for_seeds, latent_shape, model_info, guard_fn or None). The files are checked
    against their records before they are used, and the report against the files (engine/integrity.py)."""
    from guide_engine.engine import integrity
    from guide_engine.engine.models import zoo
    from guide_engine.engine.sampling import load_generator_source, read_json, resolve_backend

    source = Path(source)
    if not source.is_dir():
        raise GuideEngineError(f"{source}: give an unlearn run directory or an export directory")
    report_path = source / "report.json"
    report = read_json(report_path) if report_path.is_file() else None
    cfg = dataclasses.replace(cfg, backend=resolve_backend(source, cfg.backend))
    if cfg.backend == "torch":
        from guide_engine.engine.backends import TorchRunner

        generator = load_generator_source(source)  # its files checked against the run's manifest
        infer = TorchRunner(generator, cfg.max_batch).infer
        base, verified = generator, generator.verified
    else:
        from guide_engine.engine.backends import open_runner

        runner = open_runner(source, cfg.backend)  # its artifact checked against export.json
        infer = runner.infer
        base, verified = zoo.load_generator(runner.manifest["generator"]), runner.verified
    integrity_note = None
    if report is not None:  # the verdict must be about these very bytes, and follow from its own figures
        try:
            integrity.check_report(report, verified, report_path)
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
    manifest = read_json(source / "manifest.json") if (source / "manifest.json").is_file() else {}
    info = {"source": source.name, "backend": cfg.backend, "generator": manifest.get("generator", getattr(base, "name", None)),
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
    from guide_engine.guide import ledger

    try:
        return [e["identity_hash"] for e in ledger.read(source)["identities"]]
    except GuideEngineError:
        return []


def _make_guard(source: Path, base, report):
    """=> images => [withheld?]: the judge's distance to any ledger identity's pretrained image below the
    strangers' 1st percentile (calibrated on the base generator, cached)."""
    from guide_engine.engine.models import zoo
    from guide_engine.guide import ledger
    from guide_engine.guide.job import state_sha256
    from guide_engine.guide.metrics import calibrate

    try:
        book = ledger.read(source)
    except GuideEngineError as e:
        raise GuideEngineError(f"--guard needs the unlearned identities: {e}") from None
    judge = zoo.load_judge(((report or {}).get("judge") or {}).get("name", zoo.DEFAULT_JUDGE))
    pretrained = zoo.load_generator(base.name)
    thr = calibrate(pretrained, judge, state_sha256(pretrained))["strangers_dist_p1"]
    with torch.no_grad():
        refs = judge.descriptors(pretrained.synthesize(ledger.latents(book, tuple(base.latent_shape))))  # (L, D)

    def guard(images: torch.Tensor) -> list[bool]:
        d = judge.descriptors(images)  # (N, D); all N x L pairs in the judge's own distance
        dist = judge.distance(d.repeat_interleave(len(refs), 0), refs.repeat(len(d), 1)).view(len(d), len(refs))
        return (dist.min(dim=1).values < thr).tolist()

    return guard


def parse_request(body: bytes, cfg: ServeConfig, latent_shape: tuple[int, ...], latents_for_seeds) -> torch.Tensor:
    """Raw JSON body => latents (N, *latent_shape); any problem raises GuideEngineError (=> 400)."""
    if len(body) > cfg.max_body_bytes:
        raise GuideEngineError(f"request body of {len(body)} bytes is over the limit of {cfg.max_body_bytes}")
    try:
        req = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise GuideEngineError("request body is not valid JSON") from None
    if not isinstance(req, dict) or (("seeds" in req) == ("latents" in req)):
        raise GuideEngineError('give exactly one of {"seeds": [...]} or {"latents": [[...]]}')
    items = req.get("seeds", req.get("latents"))
    if not isinstance(items, list) or not items:
        raise GuideEngineError("seeds / latents must be a non-empty list")
    if len(items) > cfg.max_per_request:
        raise GuideEngineError(f"{len(items)} images requested; at most {cfg.max_per_request} per request")
    if "seeds" in req:
        if not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= SEED_MAX for s in items):
            raise GuideEngineError(f"seeds must be integers in [0, {SEED_MAX}]")
        return latents_for_seeds(items)
    size = math.prod(latent_shape)
    if not all(isinstance(v, list) and len(v) == size for v in items):
        raise GuideEngineError(f"each latent must be a flat list of {size} numbers")
    try:
        w = torch.tensor(items, dtype=torch.float32)
    except (TypeError, ValueError):
        raise GuideEngineError("latents must contain numbers only") from None
    if not torch.isfinite(w).all():
        raise GuideEngineError("latents contain NaN or infinity")
    if w.abs().max() > LATENT_ABS_MAX:
        raise GuideEngineError(f"latent values must lie within +-{LATENT_ABS_MAX:g}")
    return w.reshape(len(items), *latent_shape)


def create_app(source: Path, cfg: ServeConfig):
    try:
        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse, Response
    except ImportError:
        raise GuideEngineError("serving needs FastAPI and uvicorn: pip install 'guide-engine[serve]'") from None

    infer, latents_for_seeds, latent_shape, info, guard = load_service(source, cfg)
    infer(latents_for_seeds([0]))  # warm-up before ready
    batcher = MicroBatcher(infer, cfg.max_batch, cfg.max_wait_ms)
    app = FastAPI(title="guide-engine", version="1")
    app.state.batcher = batcher

    def error(status: int, msg: str) -> JSONResponse:
        return JSONResponse({"error": msg}, status_code=status)

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        return {"status": "ready", "model": info["source"]}

    @app.get("/v1/model")
    async def model():
        return info

    @app.post("/v1/generate")
    async def generate(request: Request):
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > cfg.max_body_bytes:
            return error(413, f"request body of {declared} bytes is over the limit of {cfg.max_body_bytes}")
        body = await request.body()
        try:
            w = parse_request(body, cfg, latent_shape, latents_for_seeds)
        except GuideEngineError as e:
            return error(413 if "over the limit" in str(e) else 400, str(e))
        try:
            images = await asyncio.wait_for(batcher.submit(w), cfg.timeout_s)
        except asyncio.TimeoutError:
            return error(504, f"generation took longer than {cfg.timeout_s:g} s")
        except GuideEngineError as e:
            return error(400, str(e))
        withheld = guard(images) if guard else [False] * len(images)
        if len(images) == 1:
            if withheld[0]:
                return error(451, "image withheld: it matches an unlearned identity")
            return Response(_png(images[0]), media_type="image/png")
        return {"images": [None if h else base64.b64encode(_png(im)).decode() for im, h in zip(images, withheld)],
                "withheld": [i for i, h in enumerate(withheld) if h]}

    return app


def serve(source: Path, cfg: ServeConfig, host: str = "127.0.0.1", port: int = 8000) -> None:
    app = create_app(source, cfg)
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning")
