"""Seconds per unlearning iteration on one identity, in one process: the official one-call-per-latent
structure in fp32, then each speed lever on its own and all together (the engine's default), the default
as one CUDA graph (`--cuda-graph`; on CUDA only), and the default with `--robust` (its attacker's inversion
steps and hinge on top), with dlib and, where its weights are cached, with ArcFace-MBF as the training network
(`--robust --identity arcface-mbf`: the defence against the strongest attacker, docs/robust.md); with each,
the FLOPs of one iteration, so a bench can say how close the loop runs to what the machine can do.
`python -m guide_engine.bench.unlearning ITERS DEVICE` prints JSON."""
from __future__ import annotations

import json
import statistics
import sys

BURN_IN = 3
# name => UnlearnConfig fields; "default" is what `unlearn` runs
LEVERS = {
    "reference_loop_fp32": {"reference_loop": True, "precision": "fp32", "fused_adam": False},
    "batched_fp32": {"precision": "fp32", "cache_targets": False, "fused_adam": False},
    "batched_fp32_cached_targets": {"precision": "fp32", "cache_targets": True, "fused_adam": False},
    "batched_fp32_fused_adam": {"precision": "fp32", "cache_targets": False, "fused_adam": True},
    "batched_bf16": {"precision": "bf16", "cache_targets": False, "fused_adam": False},
    "default": {},
    "cuda_graph": {"cuda_graph": True},  # CUDA only: guide/cuda_graph.py
    "robust_default": {"robust": "default"},  # RobustConfig(), its margin resolved as `unlearn --robust` does
    "robust_arcface_mbf": {"robust": "default", "identity": "arcface-mbf"},  # ... trained with ArcFace-MBF
}


def flop_per_iter(run, cfg) -> float:
    """FLOPs of one iteration as torch's FLOP counter sees them (convolutions and matmuls, forward and
    backward): a 2-iteration run minus a 1-iteration one, so what a run computes once is left out."""
    import dataclasses

    from torch.utils.flop_counter import FlopCounterMode

    counts = []
    for n in (1, 2):
        with FlopCounterMode(display=False) as counter:
            run(dataclasses.replace(cfg, iters=n))
        counts.append(counter.get_total_flops())
    return float(counts[1] - counts[0])


LEVER_FIELDS = ("reference_loop", "precision", "cache_targets", "fused_adam", "cuda_graph")  # what each row reports


def measure(iters: int, device: str = "cpu") -> dict:
    import dataclasses

    import torch

    from ..engine.files import state_sha256
    from ..engine.models import zoo
    from ..guide.calibration import calibrate, quantile
    from ..guide.config import DEFAULT_PRECISION, UnlearnConfig
    from ..guide.networks import identity_network
    from ..guide.robust import RobustConfig
    from ..guide.target import ufo_target
    from ..guide.unlearn import run_unlearning

    G = zoo.load_generator(device=device)
    nets = {zoo.DEFAULT_IDENTITY: zoo.load_identity(device=device)}
    w_u = G.latents_for_seeds([0]).to(device)
    w_t = ufo_target(w_u, G.average_latent(), 10.0)
    base_sha = state_sha256(G)  # the calibration's key, and the ensemble units' (guide/networks.py)
    out = {"iters": iters, "burn_in": BURN_IN, "device": device, "default_precision": DEFAULT_PRECISION, "levers": {}}
    for name, fields in LEVERS.items():
        if fields.get("cuda_graph") and torch.device(device).type != "cuda":
            continue
        fields = {"precision": DEFAULT_PRECISION, **fields}
        identity = fields.pop("identity", zoo.DEFAULT_IDENTITY)
        if identity not in nets:
            if not zoo.is_cached(zoo.get_spec(identity)):  # not fetched: the row is left out, not failed
                continue
            nets[identity] = identity_network(identity, G, base_sha, device)
            for line in zoo.licence_notes([identity]):  # on stderr: stdout is the JSON
                print(line, file=sys.stderr)
        net = nets[identity]
        if fields.get("robust") == "default":
            robust = RobustConfig()
            robust = dataclasses.replace(robust, margin=quantile(calibrate(G, net, base_sha),
                                                                 robust.margin_quantile))
        else:
            robust = None
        cfg = UnlearnConfig(iters=iters + BURN_IN, alpha_max=5.0, device=device, **{**fields, "robust": robust})
        run = lambda c: run_unlearning(G, net, w_u, w_t, c, progress=False)  # noqa: E731
        _, history = run(cfg)
        times = [h["s"] for h in history[BURN_IN:]]
        flop = flop_per_iter(run, cfg)
        out["levers"][name] = {"s_per_iter": statistics.median(times), "min": min(times), "max": max(times),
                               "flop_per_iter": flop, "flop_per_s": flop / statistics.median(times),
                               **{k: getattr(cfg, k) for k in LEVER_FIELDS},
                               "robust": robust is not None, "identity": identity}
    ref = out["levers"]["reference_loop_fp32"]["s_per_iter"]
    for r in out["levers"].values():
        r["speedup_vs_reference"] = ref / r["s_per_iter"]
    out["batched"], out["reference_loop"] = out["levers"]["default"], out["levers"]["reference_loop_fp32"]
    out["speedup_batched"] = out["levers"]["default"]["speedup_vs_reference"]
    out["s_per_1000_iters"] = 1000 * out["levers"]["default"]["s_per_iter"]
    return out


if __name__ == "__main__":
    print(json.dumps(measure(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "cpu")))
