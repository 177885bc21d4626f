"""What `guide-engine serve` speaks, as types: the request and response bodies of `/v1/generate`, and the
KServe v2 / Open Inference Protocol that NVIDIA Triton Inference Server speaks (`/v2/...`), with its
binary-tensor extension (what `tritonclient.http` sends and asks for by default).

The request models carry the server's limits (per-request count, latent size), so they are built per
server (`generate_request_model`); their JSON schema is what `/openapi.json` documents, and they are
what validates every request: the docs cannot drift from the checks. A validation error becomes one line
(`one_line`). Bodies are read by the server itself (bounded while reading), then validated here.
"""
from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from ..engine.errors import GuideEngineError
from ..engine.images import SEED_MAX

LATENT_ABS_MAX = 1e3
INFER_HEADER = "Inference-Header-Content-Length"  # KServe v2 binary extension: JSON header length in bytes


def _whole(v):
    """JSON Schema's integer: 7 and 7.0 alike (not 7.5, "7" or true, which the strict check then refuses)."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


def _exactly_one_of(schema: dict) -> None:
    """The documented schema of GenerateRequest: each field present or absent, never null, exactly one."""
    for prop in schema["properties"].values():
        prop.pop("default", None)
        (kept,) = [s for s in prop.pop("anyOf") if s.get("type") != "null"]
        prop.update(kept)
    schema["oneOf"] = [{"required": ["seeds"]}, {"required": ["latents"]}]
    schema["examples"] = [{"seeds": [7]}, {"seeds": [1, 2, 3]}]


def generate_request_model(max_per_request: int, latent_size: int) -> type[BaseModel]:
    Seed = Annotated[int, Field(ge=0, le=SEED_MAX, strict=True), BeforeValidator(_whole)]
    Value = Annotated[float, Field(ge=-LATENT_ABS_MAX, le=LATENT_ABS_MAX, allow_inf_nan=False, strict=True)]
    Latent = Annotated[list[Value], Field(min_length=latent_size, max_length=latent_size)]

    class GenerateRequest(BaseModel):
        """Exactly one of `seeds` (the generator's own latents) or `latents` (flat lists, one per image)."""
        model_config = ConfigDict(extra="forbid", json_schema_extra=_exactly_one_of)
        seeds: Annotated[list[Seed], Field(min_length=1, max_length=max_per_request)] | None = None
        latents: Annotated[list[Latent], Field(min_length=1, max_length=max_per_request)] | None = None

        @model_validator(mode="after")
        def exactly_one(self):
            if (self.seeds is None) == (self.latents is None):
                raise ValueError('give exactly one of {"seeds": [...]} or {"latents": [[...]]}')
            return self

    return GenerateRequest


class ImagesResponse(BaseModel):
    """Several images: base64 PNGs in request order; null where the guard withheld one."""
    images: list[str | None]
    withheld: list[int] = Field(description="indices of the images the guard withheld")


class ErrorBody(BaseModel):
    error: str = Field(description="one line: what was wrong")


# ---- KServe v2 / Open Inference Protocol ------------------------------------------------------------
class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class RequestInput(BaseModel):
    name: str
    shape: list[Annotated[int, Field(ge=0)]]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class RequestOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    """The JSON form; with the binary extension the JSON header is followed by the raw tensor bytes and
    its length goes in the `Inference-Header-Content-Length` header."""
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: Annotated[list[RequestInput], Field(min_length=1)]
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: Literal["FP32"]
    parameters: dict[str, Any] | None = None
    data: list[float] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[ResponseOutput]


def one_line(e: ValidationError) -> str:
    """The first problem of a validation error, as `where: what`."""
    err = e.errors(include_url=False)[0]
    if err["type"] == "json_invalid":
        return "request body is not valid JSON"
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {err['msg']}" if where else err["msg"].removeprefix("Value error, ")


def parse_v2(body: bytes, header_length: str | None, latent_shape: tuple[int, ...], max_n: int):
    """A KServe v2 infer body => (latents (N, *latent_shape) float32, request, binary_output?).
    Any problem raises GuideEngineError (=> 400)."""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise GuideEngineError(f"{INFER_HEADER} {header_length!r} does not fit a body of {len(body)} bytes")
        head, raw = body[:int(header_length)], body[int(header_length):]
    else:
        head, raw = body, b""
    try:
        req = InferRequest.model_validate_json(head)
    except ValidationError as e:
        raise GuideEngineError(one_line(e)) from None
    if [i.name for i in req.inputs] != ["w"]:
        raise GuideEngineError(f"inputs: give exactly one tensor, `w`, not {[i.name for i in req.inputs]}")
    w = req.inputs[0]
    if w.datatype != "FP32":
        raise GuideEngineError(f"input w: datatype FP32, not {w.datatype}")
    if len(w.shape) != 1 + len(latent_shape) or tuple(w.shape[1:]) != tuple(latent_shape):
        raise GuideEngineError(f"input w: shape [N, {', '.join(map(str, latent_shape))}], not {w.shape}")
    n = w.shape[0]
    if not 1 <= n <= max_n:
        raise GuideEngineError(f"input w: {n} latents; 1 to {max_n} per request")
    count = n * math.prod(latent_shape)
    size = (w.parameters or {}).get("binary_data_size")
    if size is not None:
        if size != 4 * count or len(raw) != size:
            raise GuideEngineError(f"input w: binary_data_size {size} and {len(raw)} bytes sent; "
                                   f"shape {w.shape} FP32 needs {4 * count}")
        x = np.frombuffer(raw, dtype="<f4").copy()
    else:
        if raw:
            raise GuideEngineError(f"{len(raw)} bytes after the JSON header, but no input declares binary_data_size")
        x = _flat_numbers(w.data, count)
    if not np.isfinite(x).all():
        raise GuideEngineError("input w contains NaN or infinity")
    if np.abs(x).max() > LATENT_ABS_MAX:
        raise GuideEngineError(f"input w: values must lie within +-{LATENT_ABS_MAX:g}")
    outputs = req.outputs or [RequestOutput(name="image")]
    if [o.name for o in outputs] != ["image"]:
        raise GuideEngineError(f"outputs: this model has one output, `image`, not {[o.name for o in outputs]}")
    default = (req.parameters or {}).get("binary_data_output", False)
    binary = bool((outputs[0].parameters or {}).get("binary_data", default))
    return x.reshape(n, *latent_shape), req, binary


def _flat_numbers(data, count: int) -> np.ndarray:
    if data is None:
        raise GuideEngineError("input w: no data (give `data`, or binary data with binary_data_size)")
    try:
        x = np.asarray(data, dtype=np.float64).reshape(-1)  # nested (row-major) or flat, as the protocol allows
    except (TypeError, ValueError):
        raise GuideEngineError("input w: data must be numbers only") from None
    if x.size != count:
        raise GuideEngineError(f"input w: {x.size} numbers for {count} in its shape")
    return x.astype(np.float32)


def encode_v2(images: np.ndarray, model: str, req: InferRequest, binary: bool) -> tuple[bytes, dict[str, str]]:
    """(N, 3, H, W) float32 => the response body and its headers (binary extension when asked)."""
    out = {"name": "image", "shape": list(images.shape), "datatype": "FP32"}
    body = {"model_name": model, "model_version": "1", "outputs": [out]}
    if req.id is not None:
        body["id"] = req.id
    if not binary:
        out["data"] = images.reshape(-1).tolist()
        return json.dumps(body).encode(), {"content-type": "application/json"}
    raw = np.ascontiguousarray(images, dtype="<f4").tobytes()
    out["parameters"] = {"binary_data_size": len(raw)}
    head = json.dumps(body).encode()
    return head + raw, {"content-type": "application/octet-stream", INFER_HEADER: str(len(head))}
