"""The embedded default generator: a DCGAN (Radford et al. 2016) trained on DigiFace-1M.

Weights: `netG_state_dict` of `gan_face_generate/weights.tar` (PyPI `gan-face-generate==1.1.1`).
Our own module definition with the same parameter names (`main.<i>.*`), so the state dict loads as is.
Latent space: z ~ N(0, I_100), so w_avg = 0 and the typical radius is about sqrt(100) = 10.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from ..crops import TemplateCrop

Z_DIM = 100
NGF = 64
# Where its faces have their five landmarks (eyes, nose tip, mouth corners; 64 px frame): the mean over 512
# samples (seeds 3,000,000-3,000,511; 500 with a face found) of what engine/faces.py's own detection finds,
# `measure_template`. A photo's face is aligned onto these points (engine/crops.py).
FACE_TEMPLATE = ((23.18, 29.71), (41.13, 29.69), (32.06, 41.41), (24.66, 50.68), (39.79, 50.70))


class DCGANGenerator(nn.Module):
    """z (N, 100) => image (N, 3, 64, 64) in [-1, 1]. Implements `protocols.Generator`."""

    latent_shape = (Z_DIM,)
    resolution = 64
    face_crop = TemplateCrop(points=FACE_TEMPLATE, size=64)

    def __init__(self, name: str = "digiface-dcgan64", nz: int = Z_DIM, ngf: int = NGF, nc: int = 3):
        super().__init__()
        self.name = name
        self.latent_shape = (nz,)

        def up(cin: int, cout: int, first: bool = False) -> list[nn.Module]:
            stride, pad = (1, 0) if first else (2, 1)
            return [nn.ConvTranspose2d(cin, cout, 4, stride, pad, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]

        # Sequential indices match the checkpoint's keys (main.0.weight, main.1.running_mean, ...).
        self.main = nn.Sequential(
            *up(nz, ngf * 8, first=True),  # (N, 512, 4, 4)
            *up(ngf * 8, ngf * 4),  # (N, 256, 8, 8)
            *up(ngf * 4, ngf * 2),  # (N, 128, 16, 16)
            *up(ngf * 2, ngf),  # (N, 64, 32, 32)
            nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False),  # (N, 3, 64, 64)
            nn.Tanh(),
        )
        self.eval()

    # -- protocols.Generator ------------------------------------------------------------------
    def sample_latents(self, n: int, generator: torch.Generator) -> torch.Tensor:
        z = torch.randn(n, *self.latent_shape, generator=generator, device=generator.device)
        return z.to(self.device)

    def latents_for_seeds(self, seeds: Iterable[int]) -> torch.Tensor:
        """One latent per seed, independent of batching: seed s => the first draw of torch.Generator(s)."""
        return torch.cat([self.sample_latents(1, torch.Generator().manual_seed(int(s))) for s in seeds])

    def average_latent(self) -> torch.Tensor:
        return torch.zeros(1, *self.latent_shape, device=self.device)

    def synthesize(self, w: torch.Tensor, view=None) -> torch.Tensor:
        return self.main(w.reshape(w.shape[0], -1, 1, 1))

    def synthesize_with_representation(self, w: torch.Tensor, view=None) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.synthesize(w)
        return x, x  # a 2D generator: the MSE term compares the images themselves

    def sample_view(self, generator: torch.Generator) -> None:
        return None  # no camera

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.synthesize(w)

    def trainable_parameters(self) -> list[nn.Parameter]:
        # GUIDE-SPEC section 3: the DCGAN trains its convolutions; BatchNorm stays frozen.
        return [m.weight for m in self.main if isinstance(m, nn.ConvTranspose2d)]

    def train_mode(self) -> None:
        self.eval()  # BatchNorm running statistics frozen: eval mode even while fine-tuning

    @property
    def device(self) -> torch.device:
        return self.main[0].weight.device

    @classmethod
    def from_checkpoint(cls, path: str, name: str = "digiface-dcgan64") -> "DCGANGenerator":
        """Load `weights.tar` (a torch pickle holding `netG_state_dict`), tensors only."""
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        state = ckpt["netG_state_dict"] if "netG_state_dict" in ckpt else ckpt
        g = cls(name=name)
        g.load_state_dict(state)
        return g.eval()
