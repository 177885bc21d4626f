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

ATTACKERS = ("identity", "pixel")  # every verify runs both (docs/verification.md)
ATTACK_BATCH = 64  # rows (identities x starts) descended together; more go in further batches


def check_attackers(attackers: tuple[str, ...]) -> tuple[str, ...]:
    """One or both of ATTACKERS, each once (a GuideEngineError otherwise) => attackers."""
    if not attackers or set(attackers) - set(ATTACKERS) or len(set(attackers)) != len(attackers):
        from ..engine.errors import GuideEngineError

        raise GuideEngineError(f"--attackers {','.join(attackers)}: one or both of {','.join(ATTACKERS)}")
    return attackers


def parse_attackers(text: str) -> tuple[str, ...]:
    """'identity, pixel' => ('identity', 'pixel'), checked by check_attackers."""
    return check_attackers(tuple(a.strip() for a in text.split(",") if a.strip()))


@dataclass(frozen=True)
class AttackConfig:
    starts: int = 32  # latents drawn from the prior per identity, all identities' descended in batches
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
    return reinvert_all(generator, identity_net, photo, cfg, progress, label)[0]


def reinvert_all(generator, identity_net, photos: torch.Tensor, cfg: AttackConfig = AttackConfig(),
                 progress: bool = False, label: str = "attack") -> torch.Tensor:
    """photos (N, 3, H, W), one per person => (N, starts, *S): every person attacked from the same starts, all
    rows descended together in batches of ATTACK_BATCH (each row follows the path it would follow alone)."""
    photos = photos.to(generator.average_latent().device)
    starts = generator.sample_latents(cfg.starts, torch.Generator().manual_seed(cfg.seed)).to(photos)
    n, s = len(photos), len(starts)
    rows_w = starts.repeat(n, *[1] * (starts.dim() - 1))  # person-major: person i's starts are rows i*s..i*s+s-1
    rows_x = photos.repeat_interleave(s, dim=0)
    ends = [descend(generator, identity_net, rows_x[i:i + ATTACK_BATCH], rows_w[i:i + ATTACK_BATCH], cfg.steps,
                    cfg.lr, progress, label, cfg.precision, identity_term=cfg.loss == "identity")
            for i in range(0, n * s, ATTACK_BATCH)]
    return torch.cat(ends).view(n, s, *starts.shape[1:])
