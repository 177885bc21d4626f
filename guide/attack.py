"""The re-inversion attacker: what someone holding the photo and the unlearned generator does to get the
person back. It inverts the photo into the generator it is given, from several starts drawn from the
prior, with the engine's own inversion loss (pixel MSE + perceptual + identity distance to the photo,
`guide/invert.py`) under the *training* identity network: the judge never enters an attacker. A second
attacker (`loss="pixel"`) leaves the identity term out: it matches pixels and features only, so it does
not chase the descriptor the unlearning loss pushed against.

`verify` runs it on the unlearned generator and, as the reference, on the pretrained one; the robust
mode (`guide/robust.py`) runs the same inversion inside the training loop.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .invert import descend


@dataclass(frozen=True)
class AttackConfig:
    starts: int = 8  # latents drawn from the prior, all descended as one batch
    steps: int = 300
    lr: float = 0.05  # the inversion's own step size
    seed: int = 100  # the starts are G.sample_latents(starts, torch.Generator().manual_seed(seed))
    precision: str = "fp32"  # of the networks during the descent (engine/precision.py)
    loss: str = "identity"  # identity: the inversion's full loss; pixel: pixel MSE + perceptual, no identity term

    def __post_init__(self):
        if self.loss not in ("identity", "pixel"):
            from ..engine.errors import GuideEngineError

            raise GuideEngineError(f"attack loss {self.loss!r}: identity or pixel")


def reinvert(generator, identity_net, photo: torch.Tensor, cfg: AttackConfig = AttackConfig(),
             progress: bool = False, label: str = "attack") -> torch.Tensor:
    """photo (1, 3, H, W) in [-1, 1] => (starts, *S) the latents the attacker ends at, one per start."""
    photo = photo.to(generator.average_latent().device)
    starts = generator.sample_latents(cfg.starts, torch.Generator().manual_seed(cfg.seed)).to(photo)
    return descend(generator, identity_net, photo, starts, cfg.steps, cfg.lr, progress, label, cfg.precision,
                   identity_term=cfg.loss == "identity")
