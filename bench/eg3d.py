"""EG3D at 512 px: seconds per unlearning iteration, batched vs the official one-call-per-latent loop
(and `--robust`), with peak GPU memory, through the real `guide-engine unlearn` command.

    python -m guide_engine.bench.eg3d --nvlabs-code ~/eg3d/eg3d --iters 12 --out eg3d-bench

The generator is a randomly initialised TriPlaneGenerator in the FFHQ-512 configuration of NVlabs'
train.py (`--cfg=ffhq --gen_pose_cond=True`, neural rendering at 128 px as in the released
ffhqrebalanced512-128.pkl), built from the user's checkout of github.com/NVlabs/eg3d: nothing of that
code is copied here. Random weights cost what trained ones cost per iteration; they say nothing about
forgetting. Timings: the history's per-iteration seconds (each row ends in a .item(), so CUDA has
synchronised), median after BURN_IN iterations.
"""
from __future__ import annotations

import argparse
import json
import pickle
import statistics
import subprocess
import sys
from pathlib import Path

from ..engine import rundir

BURN_IN = 3
MODES = {"batched": [], "reference_loop": ["--reference-loop"], "robust": ["--robust"]}


def ffhq512_generator(nvlabs_code: Path, seed: int = 0):
    """A randomly initialised EG3D TriPlaneGenerator, FFHQ-512 configuration (train.py --cfg=ffhq)."""
    sys.path.insert(0, str(Path(nvlabs_code).resolve()))
    import torch
    from training.triplane import TriPlaneGenerator

    torch.manual_seed(seed)
    rendering = {
        "image_resolution": 512, "disparity_space_sampling": False, "clamp_mode": "softplus",
        "superresolution_module": "training.superresolution.SuperresolutionHybrid8XDC",
        "c_gen_conditioning_zero": False, "gpc_reg_prob": 0.5, "c_scale": 1.0, "superresolution_noise_mode": "none",
        "density_reg": 0.25, "density_reg_p_dist": 0.004, "reg_type": "l1", "decoder_lr_mul": 1.0, "sr_antialias": True,
        "depth_resolution": 48, "depth_resolution_importance": 48, "ray_start": 2.25, "ray_end": 3.3, "box_warp": 1,
        "avg_camera_radius": 2.7, "avg_camera_pivot": [0, 0, 0.2],
    }
    G = TriPlaneGenerator(z_dim=512, c_dim=25, w_dim=512, img_resolution=512, img_channels=3, sr_num_fp16_res=4,
                          mapping_kwargs={"num_layers": 2}, rendering_kwargs=rendering, channel_base=32768,
                          channel_max=512, fused_modconv_default="inference_only", num_fp16_res=0,
                          sr_kwargs={"channel_base": 32768, "channel_max": 512,
                                     "fused_modconv_default": "inference_only"})
    G.neural_rendering_resolution = 128
    return G.eval().requires_grad_(False)


def s_per_iter(run: Path, burn_in: int = BURN_IN) -> tuple[float, float, float]:
    """A run's history.csv => (median, min, max) seconds per iteration after `burn_in` iterations."""
    from ..guide import history

    s = [float(r["seconds"]) for r in history.read(run / rundir.HISTORY)][burn_in:]
    return statistics.median(s), min(s), max(s)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nvlabs-code", required=True, help="the eg3d/ folder of a checkout of NVlabs/eg3d")
    ap.add_argument("--iters", type=int, default=12)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--out", default="eg3d-bench")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pkl = out / "eg3d-ffhq512-random.pkl"
    if not pkl.is_file():
        with open(pkl, "wb") as f:
            pickle.dump({"G_ema": ffhq512_generator(Path(args.nvlabs_code))}, f)
    result = {"device": args.device, "iters": args.iters, "burn_in": BURN_IN, "modes": {}}
    for mode in args.modes.split(","):
        run = out / mode
        cmd = [sys.executable, "-m", "guide_engine.apps.cli", "unlearn", "--generator", f"nvlabs:{pkl}",
               "--nvlabs-code", args.nvlabs_code, "--trust-pickle", "--seed", "0", "--iters", str(args.iters),
               "--device", args.device, "--out", str(run), "--quiet", *MODES[mode]]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            result["modes"][mode] = {"error": (proc.stderr.strip().splitlines() or ["?"])[-1][:300]}
            continue
        med, lo, hi = s_per_iter(run)
        manifest = json.loads((run / rundir.MANIFEST).read_text())
        result["modes"][mode] = {"s_per_iter": med, "min": lo, "max": hi,
                                 "peak_cuda_memory_mib": manifest.get("peak_cuda_memory_mib"),
                                 "s_per_1000_iters": 1000 * med}
    if args.device.startswith("cuda"):
        import torch

        result["device_name"] = torch.cuda.get_device_name()
    (out / "eg3d.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"| EG3D FFHQ-512 (random init), {result.get('device_name', args.device)} | s/iter (median) | min-max | "
          f"s per 1000 iters | peak GPU memory MiB |\n|-|-|-|-|-|")
    for mode, r in result["modes"].items():
        if "error" in r:
            print(f"| {mode} | failed: {r['error']} | | | |")
        else:
            print(f"| {mode} | {r['s_per_iter']:.3f} | {r['min']:.3f}-{r['max']:.3f} | {r['s_per_1000_iters']:.0f} | "
                  f"{r['peak_cuda_memory_mib']} |")
    return result


if __name__ == "__main__":
    main()
