"""The re-inversion attacker: what someone holding the photo and the unlearned generator does to get the
person back. It inverts the photo into the generator it is given, from several starts drawn from the
prior, with the engine's own inversion loss (pixel MSE + perceptual + identity distance to the photo,
`guide/invert.py`) under one identity network: `verify` runs one such attacker per identity network of the zoo
(dlib, ArcFace MobileFaceNet, EdgeFace-S) and the run's own training network, never only the network the run
trained against; the judge never enters an attacker. The pixel attacker (`loss="pixel"`) leaves the identity
term out: it matches pixels and the training network's features only, so it does not chase the descriptor the
unlearning loss pushed against.

`verify` runs it on the unlearned generator and, as the reference, on the pretrained one; the robust
mode (`guide/robust.py`) runs the same inversion inside the training loop.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .invert import descend

PIXEL = "pixel"  # the attacker with no identity term: pixel MSE + the training network's features
TRAIN = "train"  # in --attackers: the run's own training network (also "identity", its older name)
# The identity networks by how well they agree with the judge about strangers on the default generator (Spearman
# rank correlation of distances, stranger pairs: docs/verification.md); the strongest network outside an
# attacker's loss is the first of these it did not descend through.
BY_AGREEMENT = ("arcface-mbf", "edgeface-s", "dlib-resnet-v1")
ATTACK_BATCH = 64  # rows (identities x starts) descended together; more go in further batches


def all_attackers(train_name: str) -> tuple[str, ...]:
    """What verify attacks with by default, and what the level `robust` needs: one identity attacker per identity
    network of the zoo, the run's training network when it is not one of them (a path, an ensemble), and the
    pixel attacker."""
    from ..engine.models import zoo

    nets = list(zoo.identity_names())
    return (*nets, *([train_name] if train_name not in nets else []), PIXEL)


def parse_attackers(text: str, train_name: str) -> tuple[str, ...]:
    """'all', or names joined by commas (identity networks, `train` or `identity` for the run's own, `pixel`) =>
    the attackers, each once, in all_attackers' order; anything else is a one-line GuideEngineError."""
    from ..engine.errors import GuideEngineError

    known = all_attackers(train_name)
    given = [a.strip() for a in text.split(",") if a.strip()]
    if given == ["all"]:
        return known
    names = [train_name if a in (TRAIN, "identity") else a for a in given]
    if not names or set(names) - set(known) or len(set(names)) != len(names):
        raise GuideEngineError(f"--attackers {text}: 'all', or some of {', '.join(known)} (train: the run's own "
                               f"network), each once")
    return tuple(a for a in known if a in names)


def outside_network(attacker: str, train_name: str) -> str | None:
    """The strongest zoo network that the attacker's loss never saw (the pixel attacker sees the training
    network's features), by BY_AGREEMENT; None when it saw them all."""
    from ..engine.models.zoo import ensemble_parts

    seen = set(ensemble_parts(train_name if attacker == PIXEL else attacker))
    return next((n for n in BY_AGREEMENT if n not in seen), None)


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
