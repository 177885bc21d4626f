"""The 112 x 112 face that the field's recognition networks take (ArcFace-MBF, EdgeFace-S, the SFace judge), cut
from a generator's frame, RGB in [-1, 1], differentiable in the image (losses and attackers descend through it).

| crop         | frames                        | what is cut                                                        |
|--------------|-------------------------------|--------------------------------------------------------------------|
| `full`       | the DCGAN's 64 px faces       | the whole frame resized to 112: the faces are centred and fill it  |
| `five-point` | FFHQ-aligned (StyleGAN, EG3D) | the similarity that puts the face's five landmarks on ArcFace's    |
|              |                               | template (engine/crops.py: arcface_in_ffhq), bilinear, from the    |
|              |                               | frame antialiased to 256 px first (the face spans 196 px of it)    |

The five-point crop is the alignment these networks were trained on; GUIDE's own code cuts FFHQ frames for its
IR-SE50 with a fixed box (resize to 256, [35:223, 32:220]), which engine/models/arcface.py keeps for that network.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ..crops import FFHQCrop, arcface_in_ffhq

INPUT_SIZE = 112
WORK = 256  # an FFHQ frame is brought to this side (antialiased) before the five-point warp samples it
CROPS = ("full", "five-point")


def check_crop(crop: str) -> str:
    """`crop`, or ValueError when it is none of CROPS."""
    if crop not in CROPS:
        raise ValueError(f"crop {crop!r}: one of {CROPS}")
    return crop


def crop_for(face_crop) -> str:
    """The crop for a generator whose faces sit as `face_crop` says (its adapter's, engine/crops.py)."""
    return "five-point" if isinstance(face_crop, FFHQCrop) else "full"


@functools.lru_cache(maxsize=1)
def _five_point_theta() -> tuple[tuple[float, ...], ...]:
    """affine_grid's theta (normalised output => normalised input, align_corners=False) of arcface_in_ffhq:
    an input pixel u (continuous, 0..112) is x_out = 2 u / 112 - 1; the frame's fraction f is x_in = 2 f - 1."""
    B = arcface_in_ffhq(INPUT_SIZE)
    M, b = B[:, :2] * INPUT_SIZE, B[:, 2]
    t = M.sum(axis=1) + 2 * b - 1
    return tuple(tuple(float(v) for v in (*M[i], t[i])) for i in range(2))


def face_input(images: torch.Tensor, crop: str = "full") -> torch.Tensor:
    """(N, 3, H, W) RGB in [-1, 1] => (N, 3, 112, 112) RGB in [-1, 1]."""
    if check_crop(crop) == "five-point":
        if images.shape[-2:] != (WORK, WORK):
            images = F.interpolate(images, size=(WORK, WORK), mode="bilinear", align_corners=False,
                                   antialias=images.shape[-1] > WORK)
        theta = torch.tensor(_five_point_theta(), dtype=images.dtype, device=images.device)
        grid = F.affine_grid(theta.expand(len(images), 2, 3), [len(images), 3, INPUT_SIZE, INPUT_SIZE],
                             align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if images.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        images = F.interpolate(images, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
    return images
