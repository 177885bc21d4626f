"""Reader for dlib's DNN serialisation, specialised to `dlib_face_recognition_resnet_model_v1.dat`.

Written from dlib's source (serialize.h, float_details.h, cuda/tensor.h, dnn/core.h, dnn/layers.h,
dnn/input.h, dnn/loss.h). The facts it relies on:

Encoding primitives
  * integer: one control byte (low 4 bits = number of bytes, bit 0x80 = negative), then the
    magnitude, little-endian;
  * bool: ASCII '1' or '0';
  * float/double: an integer mantissa then an integer exponent, value = mantissa * 2**exponent
    (exponent 32000 / 32001 / 32002 = +inf / -inf / NaN);
  * string: integer length, then the bytes;
  * tensor with data: int version 2, four integers (n, k, rows, cols), then n*k*rows*cols float32,
    little-endian, NCHW; alias tensor (a view): int version 1 and the four integers, no data.

Nesting
  * the loss layer comes first (`loss_metric_2`: margin 0.04, distance threshold 0.6), then the net;
  * every layer writes its version header and then its sub-network before its own payload, so the
    file holds all headers outermost to innermost, then the input layer, then the layer payloads in
    forward order. Tag and skip layers carry only a header; saved gradients and cached outputs are
    empty tensors.
  * Tag ids are not in the file: the reader encodes the known topology (dlib's `anet_type`) and
    checks every type string, shape, stride and padding against it, and that it consumed the file.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import GuideEngineError


class DlibFormatError(GuideEngineError):
    pass


class _Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def need(self, n: int) -> None:
        if self.pos + n > len(self.data):
            raise DlibFormatError(f"dlib file ends early (needed {n} bytes at offset {self.pos}): truncated download?")

    def byte(self) -> int:
        self.need(1)
        self.pos += 1
        return self.data[self.pos - 1]

    def int(self) -> int:
        ctrl = self.byte()
        size = ctrl & 0x0F
        if size == 0 or size > 8:
            raise DlibFormatError(f"bad integer control byte 0x{ctrl:02x} at offset {self.pos - 1}")
        self.need(size)
        v = int.from_bytes(self.data[self.pos:self.pos + size], "little")
        self.pos += size
        return -v if ctrl & 0x80 else v

    def bool(self) -> bool:
        c = self.byte()
        if c not in (ord("0"), ord("1")):
            raise DlibFormatError(f"bad bool byte {c!r} at offset {self.pos - 1}")
        return c == ord("1")

    def float(self) -> float:
        mantissa, exponent = self.int(), self.int()
        special = {32000: math.inf, 32001: -math.inf, 32002: math.nan}
        return special.get(exponent, math.ldexp(float(mantissa), exponent))

    def string(self) -> str:
        n = self.int()
        self.need(n)
        s = self.data[self.pos:self.pos + n].decode("latin-1")
        self.pos += n
        return s

    def expect_string(self, *allowed: str) -> str:
        s = self.string()
        if s not in allowed:
            raise DlibFormatError(f"expected layer type {' or '.join(allowed)} at offset {self.pos}, found {s!r}")
        return s

    def tensor(self) -> np.ndarray:
        if (ver := self.int()) != 2:
            raise DlibFormatError(f"tensor version {ver}, expected 2")
        shape = tuple(self.int() for _ in range(4))
        count = int(np.prod(shape))
        self.need(4 * count)
        arr = np.frombuffer(self.data, dtype="<f4", count=count, offset=self.pos).astype(np.float32)
        self.pos += 4 * count
        return arr.reshape(shape)

    def alias_tensor(self) -> tuple[int, ...]:
        if (ver := self.int()) != 1:
            raise DlibFormatError(f"alias tensor version {ver}, expected 1")
        return tuple(self.int() for _ in range(4))


# ---------------------------------------------------------------------------------------------
# anet_type (dlib/examples/dnn_face_recognition_ex.cpp), as a stack of layer specs, outermost first.

def _block(n: int, stride: int, sub: list) -> list:
    # block = BN<con<N,3,3,1,1, relu<BN<con<N,3,3,stride,stride, SUBNET>>>>>
    return [("affine",), ("con", n, 3, 3, 1, 1), ("relu",), ("affine",), ("con", n, 3, 3, stride, stride)] + sub


def _ares(n: int, sub: list) -> list:  # relu<add_prev1<block<N,1,tag1<SUBNET>>>>
    return [("relu",), ("add_prev", 1)] + _block(n, 1, [("tag", 1)] + sub)


def _ares_down(n: int, sub: list) -> list:  # relu<add_prev2<avg_pool<2,2,2,2,skip1<tag2<block<N,2,tag1<..>>>>>>>
    return [("relu",), ("add_prev", 2), ("avg_pool", 2, 2, 2, 2), ("skip", 1), ("tag", 2)] + _block(
        n, 2, [("tag", 1)] + sub)


def anet_type_stack() -> list:
    s = [("max_pool", 3, 3, 2, 2), ("relu",), ("affine",), ("con", 32, 7, 7, 2, 2), ("input_rgb_image_sized", 150)]
    for _ in range(3):
        s = _ares(32, s)  # level 4
    s = _ares_down(64, s)
    for _ in range(3):
        s = _ares(64, s)  # level 3
    s = _ares_down(128, s)
    for _ in range(2):
        s = _ares(128, s)  # level 2
    s = _ares_down(256, s)
    for _ in range(2):
        s = _ares(256, s)  # level 1
    s = _ares_down(256, s)  # level 0
    return [("fc_no_bias", 128), ("avg_pool", 0, 0, 1, 1)] + s


# ---------------------------------------------------------------------------------------------

@dataclass
class DlibNet:
    """What the file holds: the loss settings, the input layer, and the parametric layers in forward order."""

    avg_rgb: tuple[float, float, float]
    input_size: int
    margin: float
    distance_threshold: float
    layers: list[dict] = field(default_factory=list)  # {"type": ..., arrays ...}; tags/skips included


def _read_layer(r: _Reader, spec: tuple) -> dict:
    kind = spec[0]
    if kind == "con":
        ver = r.expect_string("con_4", "con_5", "con_6")
        params = r.tensor().reshape(-1)
        num_filters = r.int()
        nr, nc, sy, sx, py, px = (r.int() for _ in range(6))
        filt, bias = r.alias_tensor(), r.alias_tensor()
        for _ in range(4):
            r.float()  # learning-rate and weight-decay multipliers
        use_bias = r.bool() if ver in ("con_5", "con_6") else True
        use_relu = r.bool() if ver == "con_6" else False
        if (num_filters, nr, nc, sy, sx) != spec[1:] or not use_bias or use_relu:
            raise DlibFormatError(f"conv layer {(num_filters, nr, nc, sy, sx)} does not match anet_type {spec[1:]}")
        nw = int(np.prod(filt))
        if params.size != nw + int(np.prod(bias)):
            raise DlibFormatError("conv parameter count does not match its filter and bias shapes")
        # (O, I, kh, kw), PyTorch's layout; dlib convolves as cross-correlation too.
        return {"type": kind, "weight": params[:nw].reshape(filt), "bias": params[nw:].copy(),
                "stride": (sy, sx), "padding": (py, px)}
    if kind == "affine":  # BatchNorm folded: y = gamma[c] * x + beta[c]
        ver = r.expect_string("affine_", "affine_2")
        params = r.tensor().reshape(-1)
        g, _b = r.alias_tensor(), r.alias_tensor()
        mode = r.int()
        disabled = r.bool() if ver == "affine_2" else False
        if mode != 0 or disabled:
            raise DlibFormatError("affine layer is not in conv mode")
        ng = int(np.prod(g))
        return {"type": kind, "gamma": params[:ng].copy(), "beta": params[ng:].copy()}
    if kind == "relu":
        if r.expect_string("relu_", "relu_2") == "relu_2":
            r.bool()
        return {"type": kind}
    if kind in ("max_pool", "avg_pool"):
        r.expect_string(kind + "_2")
        nr, nc, sy, sx, py, px = (r.int() for _ in range(6))
        if (nr, nc, sy, sx) != spec[1:] or (py, px) != (0, 0):
            raise DlibFormatError(f"{kind} {(nr, nc, sy, sx, py, px)} does not match anet_type {spec[1:]}")
        return {"type": kind, "kernel": (nr, nc), "stride": (sy, sx)}
    if kind == "add_prev":
        r.expect_string("add_prev_")
        return {"type": kind, "tag": spec[1]}
    if kind == "fc_no_bias":
        ver = r.expect_string("fc_2", "fc_3")
        num_outputs, num_inputs = r.int(), r.int()
        params = r.tensor().reshape(-1)
        r.alias_tensor(), r.alias_tensor()
        bias_mode = r.int()
        for _ in range(4):
            r.float()
        if ver == "fc_3":
            r.bool()
        if bias_mode != 1 or num_outputs != spec[1] or params.size != num_inputs * num_outputs:
            raise DlibFormatError("final fc layer does not match anet_type (256 -> 128, no bias)")
        # stored (in x out); out = x @ W
        return {"type": kind, "weight": params.reshape(num_inputs, num_outputs)}
    raise AssertionError(kind)


def read_dat(path: str) -> DlibNet:
    """Parse the .dat file at `path` into a DlibNet; any deviation from anet_type raises DlibFormatError."""
    with open(path, "rb") as f:
        r = _Reader(f.read())
    if r.int() != 1:
        raise DlibFormatError(f"{path}: not a dlib loss-layer file")
    loss = r.expect_string("loss_metric_2")
    margin, threshold = r.float(), r.float()
    del loss

    stack = anet_type_stack()
    # 1) add_layer version headers, outermost -> innermost (the input layer has none).
    headers = [r.int() for _ in stack[:-1]]
    # 2) the input layer
    r.expect_string("input_rgb_image_sized")
    avg_rgb = tuple(r.float() for _ in range(3))
    nr, nc = r.int(), r.int()
    net = DlibNet(avg_rgb=avg_rgb, input_size=nr, margin=margin, distance_threshold=threshold)
    if (nr, nc) != (150, 150):
        raise DlibFormatError(f"input size {nr}x{nc}, expected 150x150")
    # 3) payloads innermost -> outermost, i.e. in forward order
    for i in range(len(stack) - 2, -1, -1):
        spec = stack[i]
        if spec[0] in ("tag", "skip"):
            net.layers.append({"type": spec[0], "id": spec[1]})
            continue
        net.layers.append(_read_layer(r, spec))
        for _ in range(3):
            r.bool()  # setup_called, gradient_input_is_stale, get_output_and_gradient_input_disabled
        r.tensor(), r.tensor()  # x_grad, cached_output (empty)
        if stack[i + 1][0] == "input_rgb_image_sized":
            r.tensor()  # grad_final
            if headers[i] >= 3:
                r.int()  # sample_expansion_factor
        elif headers[i] == 2:
            r.tensor()  # params_grad
    if r.pos != len(r.data):
        raise DlibFormatError(f"{path}: {len(r.data) - r.pos} unread bytes after the network")
    return net
