"""Several identity networks as one: `--identity dlib-resnet-v1+arcface-mbf`.

Each member's embedding is unit-normalised and scaled by sqrt(w_k) before the embeddings are concatenated, so
the ensemble's 1 - cos, the identity term of every loss (kernels.identity_distance), is

    1 - cos(ensemble) = sum_k w_k (1 - cos_k) / sum_k w_k

the weighted mean of the members' own cosine distances. With w_k = 1 / (the strangers' mean 1 - cos_k on the
generator) each term counts in its own units: one stranger's distance in every member weighs the same. The
guide layer measures those units on the generator (guide/networks.py) and passes them in; the ensemble itself
knows no generator. The perceptual term takes every member's feature maps.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

SEPARATOR = "+"


class EnsembleIdentity(nn.Module):
    """Members (IdentityNetwork modules) and their units => one `protocols.IdentityNetwork`."""

    threshold = None

    def __init__(self, members: list, units: list[float] | None = None):
        super().__init__()
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two members")
        self.members = nn.ModuleList(members)
        self.units = [1.0] * len(members) if units is None else [float(u) for u in units]
        if len(self.units) != len(members) or not all(u > 0 for u in self.units):
            raise ValueError(f"one positive unit per member, got {self.units}")
        self.name = SEPARATOR.join(m.name for m in members)
        self.dim = sum(m.dim for m in members)
        self.feature_name = SEPARATOR.join(m.feature_name for m in members)
        self.distance_name = ("weighted mean of the members' 1 - cos, each over its strangers' mean: "
                              + ", ".join(f"{m.name} / {u:.3f}" for m, u in zip(members, self.units)))

    def _scale(self, k: int) -> float:
        return (1.0 / self.units[k]) ** 0.5

    def _join(self, descs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([F.normalize(d, dim=1) * self._scale(k) for k, d in enumerate(descs)], dim=1)

    def descriptors(self, images: torch.Tensor) -> torch.Tensor:
        return self._join([m.descriptors(images) for m in self.members])

    def features(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        feats, descs = [], []
        for m in self.members:
            f, d = m.features(images)
            feats += f
            descs.append(d)
        return feats, self._join(descs)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.descriptors(images), dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed(images)

    def distance(self, desc_a: torch.Tensor, desc_b: torch.Tensor) -> torch.Tensor:
        return 1 - F.cosine_similarity(desc_a, desc_b, dim=1)

    def member_distances(self, desc_a: torch.Tensor, desc_b: torch.Tensor) -> torch.Tensor:
        """(M, dim) joined descriptors, twice => (K, M): each member's 1 - cos, on its own part of them (the scale
        of a part does not change its cosine), so a caller can hold each member to a line of its own."""
        bounds = torch.tensor([0] + [m.dim for m in self.members]).cumsum(0).tolist()
        return torch.stack([1 - F.cosine_similarity(desc_a[:, lo:hi], desc_b[:, lo:hi], dim=1)
                            for lo, hi in zip(bounds[:-1], bounds[1:])])

    def at_precision(self, precision: str) -> "EnsembleIdentity":
        view = copy.copy(self)
        view._modules = dict(self._modules)  # the copy's own module table: the original keeps its members
        view.members = nn.ModuleList([m.at_precision(precision) if hasattr(m, "at_precision") else m
                                      for m in self.members])
        return view

    def train(self, mode: bool = True) -> "EnsembleIdentity":
        return super().train(False)
