"""The three losses of Latent Target Unlearning (GUIDE-SPEC section 3).

Per pair (source image x_u from G_u, target image x_t from the frozen G_s):
    pair = 0.01 * MSE(rep_u, rep_t) + 1.0 * P(x_u, x_t) + 0.1 * ID(x_u, x_t)
    L_local = pair(w_u, w_t)
    L_adj   = sum_k pair(w_u + delta_k, w_t + delta_k)           k = 1..N_adj
    L_glob  = sum_j P(G_u(w_r_j), G_s(w_r_j))                    j = 1..N_glob
With several identities, an iteration draws B of them: L_local and L_adj are the means over the B
identities of their own terms (B = 1 is the paper's loss), L_glob is unchanged.
P is LPIPS-VGG when its weights are given; the default is "dlib-lpips": an LPIPS-style distance on
the identity network's intermediate features (unit-normalised over channels at each position,
squared difference summed over channels, averaged over space, then averaged over the tapped blocks).
ID = 1 - cos of the identity embeddings (kernels.identity_distance), target side detached.
Push past (`unlearn --push-past`, an engine addition, off by default): the local pairs also take
    W_push * relu(m - dist(x_u, G_s(w_u)))
in the training network's own distance: the unlearned face is pushed past a margin m from the person,
beyond its target, which the judge finds too close for about one identity in five (docs/many.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..kernels import identity_distance

W_MSE, W_P, W_ID = 0.01, 1.0, 0.1


def feature_perceptual_name(identity_net) -> str:
    """How config.json names the default perceptual distance, e.g. "dlib-lpips (...)"."""
    return f"{identity_net.feature_name}-lpips (LPIPS-style distance on {identity_net.feature_name} features)"


def feature_distance(feats_a: list[torch.Tensor], feats_b: list[torch.Tensor]) -> torch.Tensor:
    """LPIPS-style: lists of (N, C_k, H_k, W_k) => (N,)."""
    total = 0
    for a, b in zip(feats_a, feats_b):
        a = a / a.norm(dim=1, keepdim=True).clamp_min(1e-10)
        b = b / b.norm(dim=1, keepdim=True).clamp_min(1e-10)
        total = total + (a - b).pow(2).sum(dim=1).mean(dim=(1, 2))
    return total / len(feats_a)


@dataclass
class Terms:
    """Per-sample loss terms of one side-by-side evaluation (N pairs)."""

    mse: torch.Tensor  # (N,)
    perceptual: torch.Tensor  # (N,)
    identity: torch.Tensor  # (N,)
    desc_u: torch.Tensor | None = None  # (N, D) the identity network's descriptors of x_u (for push_past)

    def pair(self) -> torch.Tensor:
        """(N,) the weighted pair loss 0.01 MSE + P + 0.1 ID."""
        return W_MSE * self.mse + W_P * self.perceptual + W_ID * self.identity


def pair_terms(identity_net, rep_u, rep_t, x_u, x_t, impl: str = "auto", perceptual=None, target=None,
               source=None) -> Terms:
    """Images (N, 3, H, W) from G_u (with grad) and G_s (constant), and their representations => Terms.
    perceptual: None = LPIPS-style on the identity net's features (one shared forward pass), or a
    module (x_u, x_t) => (N,) such as LPIPS-VGG. target, source: the identity net's (features,
    descriptors) of x_t, x_u when the caller has them already (guide/unlearn.py caches the constant
    targets); None computes them."""
    mse = (rep_u - rep_t).pow(2).flatten(1).mean(dim=1)
    if perceptual is None:
        feats_u, desc_u = identity_net.features(x_u) if source is None else source
        if target is None:
            with torch.no_grad():
                target = identity_net.features(x_t)
        feats_t, desc_t = target
        p = feature_distance(feats_u, feats_t)
    else:
        desc_u = identity_net.descriptors(x_u)
        with torch.no_grad():
            desc_t = identity_net.descriptors(x_t)
        p = perceptual(x_u, x_t.detach())
    return Terms(mse, p, identity_distance(desc_u, desc_t, reduction="none", impl=impl), desc_u)


def push_past(identity_net, desc_u: torch.Tensor, desc_source: torch.Tensor, margin: float) -> torch.Tensor:
    """(N, D) descriptors of unlearned faces and of the faces they were => (N,) relu(margin - distance), in the
    training network's own distance: zero once a face is at least `margin` from the person it was."""
    return torch.relu(margin - identity_net.distance(desc_u, desc_source))


LOCAL, ADJ, GLOB = 0, 1, 2  # the role of each sample of an iteration


def roles(n_identities: int, n_adj: int, n_glob: int) -> torch.Tensor:
    """The layout of an iteration's latents: [local (B), adjacency (B * n_adj), global (n_glob)] => (N,) roles."""
    return torch.tensor([LOCAL] * n_identities + [ADJ] * (n_identities * n_adj) + [GLOB] * n_glob)


def guide_loss(terms: Terms, role: torch.Tensor, n_identities: int, losses: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Terms of samples with these roles (a whole iteration, or a micro-batch or a rank's share of one) =>
    the named losses and their total. Pairs (local, adjacency) take all three terms, averaged over the
    iteration's n_identities identities; global samples only the perceptual term."""
    pair = terms.pair()
    role = role.to(pair.device)

    def over(values: torch.Tensor, r: int) -> torch.Tensor:
        """The sum over the rows of role r: masked, not indexed, so no shape depends on the data (a CUDA graph
        can hold it: guide/cuda_graph.py)."""
        return torch.where(role == r, values, 0).sum()

    out = {"local": over(pair, LOCAL) / n_identities, "adj": over(pair, ADJ) / n_identities,
           "glob": over(terms.perceptual, GLOB)}
    out["total"] = sum(out[k] for k in losses)
    return out
