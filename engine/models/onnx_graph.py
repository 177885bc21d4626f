"""A small differentiable ONNX interpreter: an ONNX face-recognition graph run node by node as PyTorch ops.

Why our own: ONNX Runtime gives no gradients, and onnx2torch imports torchvision (whose PyPI wheel does not
load beside the CPU torch this project pins). The two embedded ONNX identity networks (ArcFace
MobileFaceNet, EdgeFace-S; engine/models/onnx_identity.py) use 25 operators between them, each a line or two
of torch here, with ONNX opset-11 semantics. A graph with any other operator is refused at load, in one
line.

The initializers become frozen parameters (moved by `.to(device)`, no gradients of their own); small integer
initializers (shapes, axes, slice bounds) stay Python lists. `forward_features` also returns the tensors named
in `taps`, the feature maps of the LPIPS-style perceptual distance (guide/losses.py).

Repairs, each one named by the adapter that needs it (the file stays as verified):
- `batch_in_reshape`: a graph exported at batch 1 carries that 1 as the first entry of its Reshape targets;
  it is read as "the input's batch" so any N runs.
- Clip without a max (an empty input name) clamps from below only; Expand broadcasts both ways (ONNX's
  rule), so a target shape with batch 1 expands an N-batch; both are ONNX semantics, not repairs.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import GuideEngineError, first_line

SMALL_INT = 16  # integer initializers up to this many entries are constants (shapes, axes), not tensors


def _attrs(node) -> dict:
    import onnx

    out = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def _axes(axes, rank: int) -> list[int]:
    return [a % rank for a in axes]


def _flatten2(x: torch.Tensor, axis: int) -> torch.Tensor:
    lead = math.prod(x.shape[:axis])
    return x.reshape(lead, -1)


class OnnxGraph(nn.Module):
    """An ONNX graph with one image input and one output => a frozen nn.Module, differentiable in its input."""

    OPS = ("Add", "BatchNormalization", "Clip", "Concat", "Conv", "Div", "Erf", "Expand", "Flatten", "Gemm",
           "GlobalAveragePool", "MatMul", "Mul", "Pow", "PRelu", "ReduceL2", "ReduceMean", "Reshape", "Slice",
           "Softmax", "Split", "Sqrt", "Squeeze", "Sub", "Transpose")

    def __init__(self, path: str | Path, taps: tuple[str, ...] = (), batch_in_reshape: bool = False):
        super().__init__()
        import onnx
        from onnx import numpy_helper

        try:
            model = onnx.load(str(path))
        except Exception as e:
            raise GuideEngineError(f"{path}: not an ONNX model ({first_line(e)[:200]})") from None
        g = model.graph
        unknown = sorted({n.op_type for n in g.node} - set(self.OPS))
        if unknown:
            raise GuideEngineError(f"{path}: operators {', '.join(unknown)} are not among the {len(self.OPS)} this "
                                   f"interpreter runs (engine/models/onnx_graph.py)")
        self.batch_in_reshape = batch_in_reshape
        self.consts: dict[str, list] = {}
        self._param_of: dict[str, str] = {}
        for i, init in enumerate(g.initializer):
            a = numpy_helper.to_array(init)
            if a.dtype.kind in "iu" and a.size <= SMALL_INT:
                self.consts[init.name] = a.reshape(-1).tolist()
            else:
                key = f"w{i}"
                self.register_parameter(key, nn.Parameter(torch.from_numpy(np.array(a, dtype=np.float32)),
                                                          requires_grad=False))
                self._param_of[init.name] = key
        inits = {i.name for i in g.initializer}
        inputs = [i.name for i in g.input if i.name not in inits]
        if len(inputs) != 1 or len(g.output) != 1:
            raise GuideEngineError(f"{path}: expected one image input and one output, found {len(inputs)} and "
                                   f"{len(g.output)}")
        self.input_name, self.output_name = inputs[0], g.output[0].name
        self.nodes = [(n.op_type, list(n.input), list(n.output), {**_attrs(n), "n_outputs": len(n.output)})
                      for n in g.node]
        produced = {o for _, _, outs, _ in self.nodes for o in outs}
        missing = [t for t in taps if t not in produced]
        if missing:
            raise GuideEngineError(f"{path}: feature taps {missing} are not tensors of this graph")
        self.taps = tuple(taps)
        self.requires_grad_(False)

    def _value(self, env: dict, name: str):
        if name == "":
            return None
        if name in env:
            return env[name]
        if name in self._param_of:
            return getattr(self, self._param_of[name])
        return self.consts[name]

    def forward_features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        env = {self.input_name: x}
        for op, ins, outs, at in self.nodes:
            args = [self._value(env, n) for n in ins]
            res = getattr(self, f"_op_{op}")(args, at)
            for name, value in zip(outs, res if isinstance(res, (list, tuple)) else (res,)):
                env[name] = value
        return [env[t] for t in self.taps], env[self.output_name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[1]

    # -- the operators (ONNX opset 11) ---------------------------------------------------------------
    @staticmethod
    def _t(v, like: torch.Tensor):
        """A constant list (a scalar initializer that stayed a list) as a tensor beside `like`."""
        return v if isinstance(v, torch.Tensor) else torch.tensor(v, dtype=like.dtype, device=like.device)

    def _op_Add(self, a, at):
        return a[0] + a[1]

    def _op_Sub(self, a, at):
        return a[0] - a[1]

    def _op_Mul(self, a, at):
        return a[0] * a[1]

    def _op_Div(self, a, at):
        return a[0] / a[1]

    def _op_Pow(self, a, at):
        e = a[1]
        return a[0].pow(e.item() if isinstance(e, torch.Tensor) and e.numel() == 1 else e)

    def _op_Sqrt(self, a, at):
        return a[0].sqrt()

    def _op_Erf(self, a, at):
        return torch.erf(a[0])

    def _op_PRelu(self, a, at):
        x, slope = a
        if x.dim() >= 2 and slope.numel() == x.shape[1] and slope.dim() == x.dim() - 1:  # one slope per channel
            return F.prelu(x, slope.reshape(-1).to(x.dtype))
        return torch.where(x >= 0, x, x * slope)

    def _op_Conv(self, a, at):
        x, w, b = a[0], a[1], a[2] if len(a) > 2 else None
        pads = at.get("pads", [0] * (2 * (w.dim() - 2)))
        half = len(pads) // 2
        if pads[:half] != pads[half:]:  # asymmetric: pad explicitly (F.pad's order is last dim first)
            x = F.pad(x, [p for i in reversed(range(half)) for p in (pads[i], pads[i + half])])
            pads = [0] * len(pads)
        return F.conv2d(x, w.to(x.dtype), None if b is None else b.to(x.dtype), stride=at.get("strides", 1),
                        padding=pads[:half], dilation=at.get("dilations", 1), groups=at.get("group", 1))

    def _op_BatchNormalization(self, a, at):
        x, scale, bias, mean, var = a
        return F.batch_norm(x, mean, var, scale, bias, training=False, eps=at.get("epsilon", 1e-5))

    def _op_Gemm(self, a, at):
        x, w = a[0], a[1]
        x = x.transpose(-1, -2) if at.get("transA", 0) else x
        w = w.transpose(-1, -2) if at.get("transB", 0) else w
        y = at.get("alpha", 1.0) * (x @ w.to(x.dtype))
        return y + at.get("beta", 1.0) * a[2].to(y.dtype) if len(a) > 2 and a[2] is not None else y

    def _op_MatMul(self, a, at):
        return torch.matmul(a[0], a[1].to(a[0].dtype))

    def _op_Transpose(self, a, at):
        x = a[0]
        return x.permute(*at.get("perm", list(reversed(range(x.dim())))))

    def _op_ReduceMean(self, a, at):
        x = a[0]
        return x.mean(dim=_axes(at.get("axes", range(x.dim())), x.dim()), keepdim=bool(at.get("keepdims", 1)))

    def _op_ReduceL2(self, a, at):
        x = a[0]
        return torch.linalg.vector_norm(x, dim=_axes(at.get("axes", range(x.dim())), x.dim()),
                                        keepdim=bool(at.get("keepdims", 1)))

    def _op_Clip(self, a, at):
        x = a[0]
        lo = a[1] if len(a) > 1 else at.get("min")
        hi = a[2] if len(a) > 2 else at.get("max")

        def scalar(v):
            return None if v is None else float(v.item() if isinstance(v, torch.Tensor) else np.ravel(v)[0])
        return x.clamp(min=scalar(lo), max=scalar(hi))

    def _op_Reshape(self, a, at):
        x, shape = a[0], list(a[1])
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]  # 0: copy the input's dimension
        if self.batch_in_reshape and shape and shape[0] == 1:
            shape[0] = x.shape[0]
        return x.reshape(shape)

    def _op_Expand(self, a, at):
        x = a[0]
        return x.expand(torch.broadcast_shapes(x.shape, tuple(a[1])))

    def _op_Flatten(self, a, at):
        x = a[0]
        return _flatten2(x, at.get("axis", 1) % max(x.dim(), 1))

    def _op_GlobalAveragePool(self, a, at):
        x = a[0]
        return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)

    def _op_Concat(self, a, at):
        return torch.cat(a, dim=at["axis"])

    def _op_Split(self, a, at):
        x, axis = a[0], at.get("axis", 0)
        split = at.get("split") or [x.shape[axis] // at["n_outputs"]] * at["n_outputs"]  # no sizes: equal parts
        return list(torch.split(x, list(split), dim=axis))

    def _op_Squeeze(self, a, at):
        x = a[0]
        axes = _axes(at.get("axes", [i for i, s in enumerate(x.shape) if s == 1]), x.dim())
        for axis in sorted(axes, reverse=True):
            x = x.squeeze(axis)
        return x

    def _op_Slice(self, a, at):
        x, starts, ends = a[0], list(a[1]), list(a[2])
        axes = list(a[3]) if len(a) > 3 and a[3] is not None else list(range(len(starts)))
        steps = list(a[4]) if len(a) > 4 and a[4] is not None else [1] * len(starts)
        index = [slice(None)] * x.dim()
        for s, e, axis, step in zip(starts, ends, axes, steps):
            if step != 1:
                raise GuideEngineError("Slice with a step other than 1 is not supported")
            n = x.shape[axis]
            index[axis % x.dim()] = slice(max(min(s, n), -n), max(min(e, n), -n - 1))
        return x[tuple(index)]

    def _op_Softmax(self, a, at):
        x = a[0]
        axis = at.get("axis", 1) % x.dim()
        if axis == x.dim() - 1:
            return x.softmax(dim=-1)
        return _flatten2(x, axis).softmax(dim=1).reshape(x.shape)  # opset 11: over all dimensions from `axis`
