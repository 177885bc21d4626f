"""`guide-engine bench`: sampling throughput per backend (each in its own process) and unlearning
seconds per iteration (the official loop structure and each speed lever), written as bench.json,
bench.md and bench.png.

"% of peak" is the model's counted FLOPs x images/s over the theoretical peak of the precision the
backends compute in (bench/peak.py: read from the CPU, fp32; or the GPU's datasheet, TF32 where cuDNN
runs fp32 convolutions on the tensor cores, as it does by default), a bound no backend can pass; a
measured fp32 matmul is reported beside it, as "measured".
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from ..engine.errors import GuideEngineError
from ..engine.files import atomic_write, write_json
from ..engine.models.zoo import DEFAULT_GENERATOR
from .peak import at_least_measured, measured_matmul, theoretical

ALL_BACKENDS = ("torch", "torch-compile", "torch-cudagraph", "onnxruntime", "tensorrt")


def skip_reason(backend: str) -> str | None:
    if backend == "tensorrt":
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            return "tensorrt is not installed (pip install tensorrt on a CUDA host)"
        if not torch.cuda.is_available():
            return "no CUDA GPU"
    if backend == "torch-cudagraph" and not torch.cuda.is_available():
        return "CUDA graphs need a CUDA GPU"
    if backend == "onnxruntime":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "onnxruntime is not installed"
    return None


def _subprocess_json(args: list[str], timeout: float) -> dict:
    proc = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": last[:300]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_bench(out: Path, backends: list[str], batches: list[int], quick: bool = False,
              source: str = DEFAULT_GENERATOR, unlearn_iters: int | None = None) -> dict:
    bad = [b for b in backends if b not in ALL_BACKENDS]
    if bad:
        raise GuideEngineError(f"--backends {','.join(bad)}: choose from {','.join(ALL_BACKENDS)}")
    if not batches or min(batches) < 1:
        raise GuideEngineError("--batch: give positive batch sizes, e.g. 1,16,64")
    repeats = 3 if quick else 7
    sampling, skipped = [], {}
    for b in backends:
        if (why := skip_reason(b)) is not None:
            skipped[b] = why
            continue
        res = _subprocess_json(["guide_engine.bench.sampling", b, source, ",".join(map(str, batches)), str(repeats)],
                               900)
        if "error" in res:
            skipped[b] = res["error"]
        else:
            sampling.append(res)
    iters = unlearn_iters or (5 if quick else 30)
    from ..engine.runtime import default_device

    device = default_device().split(":")[0]
    unlearning = _subprocess_json(["guide_engine.bench.unlearning", str(iters), device], 1800)
    peaks = theoretical(device)
    # the sampling backends compute in fp32; on CUDA, cuDNN runs fp32 convolutions on the TF32 tensor
    # cores unless told not to, so the bound is the TF32 peak there
    precision = "tf32" if device == "cuda" and torch.backends.cudnn.allow_tf32 else "fp32"
    measured = measured_matmul(device)
    peaks = at_least_measured(peaks, precision, measured)
    peak = peaks.get(precision)
    eager = {r["batch"]: r["images_per_s"] for s in sampling if s["backend"] == "torch" for r in s["rows"]}
    for s in sampling:
        for r in s["rows"]:
            r["vs_torch_eager"] = r["images_per_s"] / eager[r["batch"]] if r["batch"] in eager else None
            r["frac_of_peak"] = None if peak is None else r["images_per_s"] * s["flops_per_image"] / peak
            r["frac_of_measured_matmul"] = r["images_per_s"] * s["flops_per_image"] / measured
    for r in unlearning.get("levers", {}).values():  # bf16 rows against the bf16 bound (only part of them is bf16)
        bound = peaks.get("bf16") if r["precision"] == "bf16" else peak
        r["frac_of_peak"] = None if bound is None else r["flop_per_s"] / bound
        r["frac_of_measured_matmul"] = r["flop_per_s"] / measured
    if "levers" in unlearning:  # the same rows as the levers' (JSON made them copies)
        levers = unlearning["levers"]
        unlearning["batched"], unlearning["reference_loop"] = levers["default"], levers["reference_loop_fp32"]
    result = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
              "cpu_model": cpu_model(), "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
              "versions": {"torch": torch.__version__, "python": platform.python_version(),
                           "onnxruntime": _version("onnxruntime")},
              "peak_flops": peak, "peak_precision": precision, "peak_flops_bf16": peaks["bf16"],
              "peak_method": f"theoretical: {peaks['how']}",
              "measured_matmul_flops": measured,
              "measured_method": f"best of 5 x 4 fp32 1024x1024 torch.mm on {device}",
              "quick": quick, "sampling": sampling, "skipped": skipped, "unlearning": unlearning}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "bench.json", result)
    atomic_write(out / "bench.md", lambda tmp: tmp.write_text(markdown(result)))
    plot(result, out / "bench.png")
    return result


def _version(mod: str) -> str | None:
    try:
        return __import__(mod).__version__
    except ImportError:
        return None


def markdown(res: dict) -> str:
    gf = lambda v: "-" if v is None else f"{v / 1e9:.1f}"  # noqa: E731
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    lines = [f"# guide-engine bench ({res['date']})", "",
             f"device: {res['device']} · CPU: {res['cpu_model']} · threads: {res['threads']} · torch "
             f"{res['versions']['torch']}",
             f"peak (bound): {res.get('peak_precision', 'fp32')} {gf(res['peak_flops'])} GFLOP/s, bf16 "
             f"{gf(res['peak_flops_bf16'])} GFLOP/s "
             f"({res['peak_method']}) · measured fp32 matmul {gf(res['measured_matmul_flops'])} GFLOP/s", "",
             "| backend | batch | images/s (median) | min-max | x torch eager | % of peak | % of measured matmul |",
             "|-|-|-|-|-|-|-|"]
    for s in res["sampling"]:
        for r in s["rows"]:
            ratio = "-" if r["vs_torch_eager"] is None else f"{r['vs_torch_eager']:.2f}"
            lines.append(f"| {s['backend']} | {r['batch']} | {r['images_per_s']:.1f} | {r['min']:.1f}-{r['max']:.1f} | "
                         f"{ratio} | {pct(r['frac_of_peak'])} | {pct(r['frac_of_measured_matmul'])} |")
    for b, why in res["skipped"].items():
        lines.append(f"| {b} | - | skipped: {why} | | | | |")
    u = res["unlearning"]
    lines += ["",
              "| unlearning loop (one identity) | precision | cached targets | Adam | s/iter (median) | min-max | x "
              "reference "
              "| GFLOP/iter | % of peak | % of measured matmul |", "|-|-|-|-|-|-|-|-|-|-|"]
    if "error" in u:
        lines.append(f"| failed | {u['error']} | | | | | | | | |")
    else:
        for k, r in u["levers"].items():
            cached = "-" if r["reference_loop"] else ("yes" if r["cache_targets"] else "no")
            adam = "fused" if r["fused_adam"] else "torch default"
            lines.append(f"| {k} | {r['precision']} | {cached} | {adam} | {r['s_per_iter']:.3f} | "
                         f"{r['min']:.3f}-{r['max']:.3f} | "
                         f"{r['speedup_vs_reference']:.2f} | {r['flop_per_iter'] / 1e9:.2f} | "
                         f"{pct(r['frac_of_peak'])} | "
                         f"{pct(r['frac_of_measured_matmul'])} |")
        lines.append(f"\ndefault loop: {u['speedup_batched']:.2f}x the fp32 reference structure; 1000 iterations take "
                     f"{u['s_per_1000_iters']:.0f} s ({u['iters']} timed iterations after {u['burn_in']} burn-in, "
                     f"{u['device']}); "
                     f"{u['batched']['flop_per_iter'] / 1e9:.2f} GFLOP per iteration at "
                     f"{u['batched']['flop_per_s'] / 1e9:.1f} "
                     f"GFLOP/s, {pct(u['batched']['frac_of_measured_matmul'])}% of the measured matmul")
        if "cuda_graph" in u["levers"]:
            g = u["levers"]["cuda_graph"]["s_per_iter"]
            lines.append(f"--cuda-graph: {g * 1e3:.2f} ms per iteration, {u['batched']['s_per_iter'] / g:.2f}x the "
                         f"default loop's speed")
        for lever, flags in (("robust_default", "--robust"), ("robust_arcface_mbf", "--robust --identity arcface-mbf")):
            if lever in u["levers"]:
                lines.append(f"{flags}: {u['levers'][lever]['s_per_iter'] / u['batched']['s_per_iter']:.2f}x the "
                             f"default loop per iteration")
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    """A grouped bar chart of images/s per backend and batch (Pillow; no plotting library needed)."""
    from PIL import Image, ImageDraw

    rows = [(s["backend"], r["batch"], r["images_per_s"]) for s in res["sampling"] for r in s["rows"]]
    W, H, left, bottom = 760, 360, 60, 60
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    top = max([v for *_, v in rows] + [1.0]) * 1.1
    d.text((left, 8), f"sampling throughput, images/s ({res['device']}, {res['threads']} threads)", fill="black")
    d.line((left, H - bottom, W - 10, H - bottom), fill="black")
    d.line((left, 30, left, H - bottom), fill="black")
    colors = {"torch": "#4c72b0", "torch-compile": "#55a868", "torch-cudagraph": "#dd8452", "onnxruntime": "#c44e52",
              "tensorrt": "#8172b2"}
    batches = sorted({b for _, b, _ in rows})
    backends = [s["backend"] for s in res["sampling"]]
    group_w = (W - left - 20) / max(1, len(batches))
    bar_w = group_w * 0.8 / max(1, len(backends))
    for gi, b in enumerate(batches):
        x0 = left + 10 + gi * group_w
        d.text((x0 + group_w * 0.3, H - bottom + 6), f"batch {b}", fill="black")
        for bi, name in enumerate(backends):
            v = next((v for n, bb, v in rows if n == name and bb == b), None)
            if v is None:
                continue
            x = x0 + bi * bar_w
            y = H - bottom - (H - bottom - 30) * v / top
            d.rectangle((x, y, x + bar_w - 3, H - bottom), fill=colors.get(name, "gray"))
            d.text((x, y - 12), f"{v:.0f}", fill="black")
    for i, name in enumerate(backends):
        d.rectangle((left + i * 150, H - 22, left + i * 150 + 12, H - 10), fill=colors.get(name, "gray"))
        d.text((left + i * 150 + 16, H - 22), name, fill="black")
    atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))
