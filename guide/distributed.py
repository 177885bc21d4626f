"""Scale-out with torch.distributed: `torchrun --nproc-per-node K -m guide_engine.apps.cli unlearn ...`.

Every rank builds the same iteration (the same Batch, from the same seeds) and trains its share of it:
identity j of the iteration's B (its local pair and adjacency pairs) goes to rank j mod K, global
latent g to rank g mod K. G_u is wrapped in DistributedDataParallel, which averages gradients over
the K ranks; each rank scales its loss by K, so the averaged gradient is the single-process one (up to
the order of float sums). gloo on the CPU, nccl on CUDA. Rank 0 chooses the identities and targets and
broadcasts them, and only rank 0 writes files; a resumed run reads rank 0's checkpoint on every rank.
A user with 8 GPUs and 1000 requests runs one job over all of them: no scheduler of our own.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn

from .losses import ADJ, GLOB, LOCAL


def init_from_env(device: str) -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1); => whether this is a distributed run."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return True


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_writer() -> bool:
    """Only rank 0 writes files."""
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast(obj):
    """Rank 0's Python object, on every rank."""
    if not active():
        return obj
    box = [obj if rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard_rows(role: torch.Tensor, n_identities: int, n_adj: int, k: int, n: int) -> torch.Tensor:
    """An iteration's rows laid out [local (B), adjacency (B n_adj), global] => the indices rank k of n trains."""
    idx = torch.arange(len(role))
    owner = torch.empty(len(role), dtype=torch.long)
    local = role == LOCAL
    owner[local] = torch.arange(int(local.sum())) % n
    adj = role == ADJ
    owner[adj] = (torch.arange(int(adj.sum())) // n_adj) % n  # with the identity they belong to
    glob = role == GLOB
    owner[glob] = torch.arange(int(glob.sum())) % n
    assert local.sum() == n_identities
    return idx[owner == k]


class Synthesis(nn.Module):
    """The generator's forward as one module call, so DistributedDataParallel sees it (and hooks its gradients)."""

    def __init__(self, generator):
        super().__init__()
        self.generator = generator

    def forward(self, w: torch.Tensor, view=None):
        return self.generator.synthesize_with_representation(w, view)


class DDPGenerator:
    """What the loop calls as G_u under torch.distributed: synthesize_with_representation goes through DDP."""

    def __init__(self, generator, device: str):
        ids = [torch.device(device).index or 0] if device.startswith("cuda") else None
        self.generator = generator
        self.ddp = nn.parallel.DistributedDataParallel(Synthesis(generator), device_ids=ids)

    def synthesize_with_representation(self, w: torch.Tensor, view=None):
        return self.ddp(w, view)

    def no_sync(self):
        return self.ddp.no_sync()
