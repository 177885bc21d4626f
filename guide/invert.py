"""Optimisation-based inversion (GUIDE-SPEC section 1): Adam on w, minimising
pixel MSE + perceptual distance + identity distance to the photo.

Start: the spec starts at w_avg. On the DCGAN default w_avg = 0 lies where the first layer's ReLUs
are all dead (the gradient w.r.t. z there is exactly zero), so the start is the best, by the same
loss, of w_avg and `n_starts - 1` latents drawn from the prior; w_avg wins wherever it is best.
"""
from __future__ import annotations

import torch

from ..engine.progress import bar
from ..kernels import identity_distance
from .losses import feature_distance


def look_distance(x, feats, image, feats_x) -> tuple[torch.Tensor, torch.Tensor]:
    """Faces x (N, 3, H, W) with the network's features `feats` against one photo (or one each) and its features
    => (pixel MSE + perceptual distance (N,), pixel MSE (N,)): how close each face looks, the identity left out."""
    mse = (x - image).pow(2).flatten(1).mean(dim=1)
    return mse + feature_distance(feats, [f.expand(len(x), *f.shape[1:]) for f in feats_x]), mse


def inversion_loss(generator, identity_net, w, image, feats_x, desc_x, identity_term: bool = True):
    """=> (per-sample loss (N,), per-sample pixel MSE (N,)) of latents w against one photo (or one each): pixel MSE +
    perceptual (the network's features) + identity distance (its descriptor; left out with identity_term=False)."""
    x = generator.synthesize(w)
    feats, desc = identity_net.features(x)
    loss, mse = look_distance(x, feats, image, feats_x)
    n = w.shape[0]
    if identity_term:
        loss = loss + identity_distance(desc, desc_x.expand(n, -1), reduction="none")
    return loss, mse


def at_precision(identity_net, precision: str):
    """The identity network at `precision` (networks without the option run as they are: fp32)."""
    return identity_net.at_precision(precision) if hasattr(identity_net, "at_precision") else identity_net


def descend(generator, identity_net, image: torch.Tensor, start: torch.Tensor, steps: int, lr: float = 0.05,
            progress: bool = True, label: str = "invert", precision: str = "fp32",
            identity_term: bool = True) -> torch.Tensor:
    """Adam on K latents at once, each against the same photo (image (1, 3, H, W)) or against its own (image
    (K, 3, H, W): several people's attacks in one batch): (K, *S) starts => (K, *S) latents.
    The loss is a sum of per-latent losses and Adam is elementwise, so each row follows the path it would
    follow alone (one generator call per step instead of K). Gradients flow to w only: the generator's
    parameters get none, even when they require grad (the unlearning loop's G_u)."""
    identity_net = at_precision(identity_net, precision)
    with torch.no_grad():  # the photo's side: computed once
        feats_x, desc_x = identity_net.features(image)
    w = start.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([w], lr=lr)
    with bar(steps, label, enabled=progress, unit="step") as shown:
        for step in range(steps):
            loss, mse = inversion_loss(generator, identity_net, w, image, feats_x, desc_x, identity_term)
            (w.grad,) = torch.autograd.grad(loss.sum(), [w])
            opt.step()
            shown.update()
            if not shown.disable and (step % 50 == 0 or step == steps - 1):
                shown.set_postfix(loss=f"{loss.mean().item():.4f}", mse=f"{mse.mean().item():.4f}", refresh=False)
    return w.detach()


def invert(generator, identity_net, image: torch.Tensor, steps: int = 300, lr: float = 0.05,
           start: torch.Tensor | None = None, n_starts: int = 64, seed: int = 0,
           progress: bool = True, precision: str = "fp32") -> tuple[torch.Tensor, float]:
    """image (1, 3, H, W) in [-1, 1] at the generator's resolution => (w (1, *S), final pixel MSE)."""
    image = image.to(generator.average_latent().device)
    w_avg = generator.average_latent()
    drawn = None
    if start is None:
        net = at_precision(identity_net, precision)
        with torch.no_grad():
            feats_x, desc_x = net.features(image)
            cands = torch.cat([w_avg, generator.sample_latents(n_starts - 1, torch.Generator().manual_seed(seed))])
            losses = inversion_loss(generator, net, cands, image, feats_x, desc_x)[0]
            start = cands[losses.argmin()][None]
            drawn = cands[1:][losses[1:].argmin()][None]  # the best prior draw, should w_avg be a dead end
    w = descend(generator, identity_net, image, start, steps, lr, progress, precision=precision)
    if drawn is not None and torch.equal(w, w_avg):  # the descent never left w_avg: no gradient there
        w = descend(generator, identity_net, image, drawn, steps, lr, progress, precision=precision)
    with torch.no_grad():
        err = (generator.synthesize(w) - image).pow(2).mean().item()
    return w, err
