"""ONNX export of the synthesis path: input `w` (N, *latent_shape) float32 => output `image`
(N, 3, H, W) float32 in [-1, 1], dynamic batch axis, opset 17, weights inside the file.

--fp16 puts the precision in the graph (fp16 weights and compute, fp32 input and output through
Cast nodes): strongly typed TensorRT (10.12+ and 11, which have no FP16 builder flag) wants it so.
The DCGAN has no noise inputs; generators with noise buffers must export them as fixed buffers.
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch

OPSET = 17


class _Synthesis(torch.nn.Module):
    def __init__(self, generator, fp16: bool):
        super().__init__()
        self.g = copy.deepcopy(generator).cpu().eval()
        self.fp16 = fp16
        if fp16:
            self.g.half()

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.fp16:
            return self.g.synthesize(w.half()).float()
        return self.g.synthesize(w)


def export_onnx(generator, path: Path, fp16: bool = False) -> None:
    """Write the ONNX file to `path` (the caller renames it into place)."""
    import onnx

    example = generator.latents_for_seeds([0, 1]).cpu()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Synthesis(generator, fp16), (example,), str(path), input_names=["w"], output_names=["image"],
                          dynamic_axes={"w": {0: "batch"}, "image": {0: "batch"}}, opset_version=OPSET, dynamo=False)
    onnx.checker.check_model(str(path))
