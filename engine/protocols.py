"""The two model protocols every part of the engine is written against.

A *generator* maps latents to images; an *identity network* maps images to identity embeddings.
The embedded defaults (DCGAN 64x64, dlib ResNet) implement them; bring-your-own models
(StyleGAN, EG3D, ArcFace) implement the same methods.
"""
from __future__ import annotations

import copy
from typing import Iterable, Protocol, runtime_checkable

import torch
from torch import nn

from .precision import autocast
from .precision import check as check_precision


@runtime_checkable
class Generator(Protocol):
    """A pretrained image generator G: latent -> image. Implementations are nn.Modules."""

    name: str
    latent_shape: tuple[int, ...]  # one latent, e.g. (100,) for the DCGAN's z, (14, 512) for EG3D's W+
    resolution: int  # output images are (3, resolution, resolution)
    # face_crop (optional): where its faces sit in the frame (engine/crops.py); read it through crops.crop_of,
    # which gives FFHQ's recipe to an adapter that declares none

    def sample_latents(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n, seeded RNG => (n, *latent_shape) float32 on the module's device, drawn from the prior."""

    def average_latent(self) -> torch.Tensor:
        """=> (1, *latent_shape): w_avg, the latent of the 'average face'."""

    def synthesize(self, w: torch.Tensor, view=None) -> torch.Tensor:
        """(N, *latent_shape) => (N, 3, H, W) float32 RGB in [-1, 1]; differentiable.
        `view`: a camera from `sample_view` (3D-aware generators; None = their front view)."""

    def synthesize_with_representation(self, w: torch.Tensor, view=None) -> tuple[torch.Tensor, torch.Tensor]:
        """=> (images, what the MSE term compares) from one forward pass (EG3D: tri-planes; 2D: the image)."""

    def sample_view(self, generator: torch.Generator):
        """One camera for an unlearning iteration (EG3D); None for generators without a camera."""

    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        """The parameters unlearning fine-tunes (GUIDE-SPEC section 3)."""

    def train_mode(self) -> None:
        """Put the module in the mode used while fine-tuning (e.g. DCGAN: BatchNorm stays in eval)."""


@runtime_checkable
class IdentityNetwork(Protocol):
    """A face-identity network e: image -> unit-norm embedding. Outputs are float32 whatever precision
    the network computes in (engine/precision.py)."""

    name: str
    dim: int  # embedding size D
    threshold: float | None  # the network's own same-person threshold on `distance` (dlib: 0.6), if it has one
    feature_name: str  # short name of its features, for the LPIPS-style perceptual distance ("dlib")
    distance_name: str  # what `distance` measures, e.g. "euclidean (raw descriptors)"

    def descriptors(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] => (N, D) the network's raw output (not normalised); differentiable."""

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] => (N, D) L2-normalised; differentiable."""

    def features(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(N, 3, H, W) in [-1, 1] => (intermediate feature maps [(N, C_k, H_k, W_k)], raw descriptors (N, D)),
        in one forward pass: the perceptual distance and the identity term share it."""

    def distance(self, desc_a: torch.Tensor, desc_b: torch.Tensor) -> torch.Tensor:
        """raw descriptors (N, D), (N, D) => (N,) the network's own distance, compared with `threshold`."""


class FrozenIdentityNet(nn.Module):
    """What identity-network adapters share: a frozen backbone `net` (net(x) => raw descriptors,
    net.forward_features(x) => (feature maps, raw descriptors)) behind the model's own `to_input`.
    Subclasses set dim, threshold, distance_name, feature_name and define to_input and distance.
    `precision` (engine/precision.py) is that of the backbone's convolutions; the input's preparation
    and every output stay float32 (`at_precision` gives a view at another precision)."""

    precision = "fp32"

    def __init__(self, net: nn.Module, name: str):
        super().__init__()
        self.name, self.net = name, net.eval().requires_grad_(False)

    def at_precision(self, precision: str) -> "FrozenIdentityNet":
        """The same network (shared weights) running its convolutions at `precision`."""
        view = copy.copy(self)
        view.precision = check_precision(precision)
        return view

    def to_input(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] => what the backbone takes."""
        raise NotImplementedError

    def features(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        with autocast(self.precision, images.device):
            feats, desc = self.net.forward_features(self.to_input(images.float()))
        return [f.float() for f in feats], desc.float()

    def descriptors(self, images: torch.Tensor) -> torch.Tensor:
        with autocast(self.precision, images.device):
            return self.net(self.to_input(images.float())).float()

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.descriptors(images), dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed(images)

    def train(self, mode: bool = True) -> "FrozenIdentityNet":
        return super().train(False)  # BatchNorm statistics and dropout (where there are any) stay in inference mode
