"""Random streams: every random draw of a run is a function of (seed, step, stream), so a resumed run
needs no RNG state and draws what an uninterrupted one would have drawn."""
from __future__ import annotations

import contextlib

import torch

STEP_STRIDE = 1_000_003  # a prime larger than any iteration count (guide/unlearn.py: MAX_ITERS = 200,000)


def stream_seed(seed: int, step: int = 0, offset: int = 0) -> int:
    """The seed of one stream at one step of a run seeded with `seed`: seed * STEP_STRIDE + step + offset.
    Streams are offsets far apart (guide/unlearn.py, guide/robust.py name theirs)."""
    return seed * STEP_STRIDE + step + offset


def stream(seed: int, step: int = 0, offset: int = 0) -> torch.Generator:
    """A CPU torch.Generator seeded with stream_seed(seed, step, offset)."""
    return torch.Generator().manual_seed(stream_seed(seed, step, offset))


@contextlib.contextmanager
def seeded_rng(seed: int, device: torch.device | str):
    """The global RNG seeded for a block, and restored after it. Generators that draw random numbers inside
    (EG3D's stratified ray samples) draw them from the global RNG: seeded, they draw the same ones in every
    run and after a resume."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield
