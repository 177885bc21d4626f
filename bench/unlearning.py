"""Seconds per unlearning iteration, batched loop vs the official one-call-per-latent structure,
in one process on the same identity. `python -m guide_engine.bench.unlearning ITERS DEVICE` prints JSON."""
from __future__ import annotations

import json
import statistics
import sys

BURN_IN = 3


def measure(iters: int, device: str = "cpu") -> dict:
    from guide_engine.engine.models import zoo
    from guide_engine.guide.target import ufo_target
    from guide_engine.guide.unlearn import UnlearnConfig, run_unlearning

    G = zoo.load_generator(device=device)
    I = zoo.load_identity(device=device)
    w_u = G.latents_for_seeds([0]).to(device)
    w_t = ufo_target(w_u, G.average_latent(), 10.0)
    out = {"iters": iters, "burn_in": BURN_IN, "device": device}
    for name, ref in (("batched", False), ("reference_loop", True)):
        cfg = UnlearnConfig(iters=iters + BURN_IN, alpha_max=5.0, reference_loop=ref, device=device)
        _, history = run_unlearning(G, I, w_u, w_t, cfg, progress=False)
        times = [h["s"] for h in history[BURN_IN:]]
        out[name] = {"s_per_iter": statistics.median(times), "min": min(times), "max": max(times)}
    out["speedup_batched"] = out["reference_loop"]["s_per_iter"] / out["batched"]["s_per_iter"]
    return out


if __name__ == "__main__":
    print(json.dumps(measure(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "cpu")))
