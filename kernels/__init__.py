"""Fused loss kernels (Triton) and their plain-torch references.

`impl="auto"` runs Triton on CUDA tensors and the reference elsewhere; `impl="triton"` forces the
kernel (on CPU tensors too under TRITON_INTERPRET=1); GUIDE_ENGINE_KERNELS=torch forces the references.
"""
from .identity_distance import identity_distance, identity_distance_reference
from .latent_adjacency import latent_adjacency, latent_adjacency_reference

__all__ = ["identity_distance", "identity_distance_reference", "latent_adjacency", "latent_adjacency_reference"]
