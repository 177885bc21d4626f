"""Kernel vs reference (eager and torch.compile'd): median time and achieved bandwidth.
`python -m guide_engine.bench.kernels [--quick]` prints a markdown table and writes kernels.json.
Triton runs only on CUDA tensors; on the CPU the table holds the references alone (the interpreter's
timings mean nothing). Bytes are the fewest a case must move (each input read once, each output written
once); GB/s is set against the GPU's datasheet bandwidth (bench/peak.py)."""
from __future__ import annotations

import json
import statistics
import sys
import time

import torch

from ..kernels import identity_distance, identity_distance_reference, latent_adjacency, latent_adjacency_reference


def _time(fn, reps: int, device: str) -> float:
    """Median seconds of one call. CUDA: triton.testing.do_bench (CUDA events, L2 flushed between calls,
    so the bytes come from device memory); CPU: perf_counter after 3 warm-up calls."""
    if device == "cuda":
        from triton.testing import do_bench

        return do_bench(fn, warmup=25, rep=max(25, reps), return_mode="median") / 1e3
    for _ in range(3):
        fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def _time_queued(fn, calls: int = 20, reps: int = 10) -> float:
    """CUDA: median seconds per call over `calls` back-to-back launches between two events. Once launches
    queue up faster than the GPU drains them, this is the kernel's device time without the host's
    per-call overhead (which _time includes: the loop pays it)."""
    for _ in range(3):
        fn()
    ts = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        torch.cuda.synchronize()
        ts.append(start.elapsed_time(end) / 1e3 / calls)
    return statistics.median(ts)


_compiled: dict = {}


def _impl(ref, fast, impl):
    """impl: "ref" | "compiled" | "triton" => the function to time."""
    if impl == "ref":
        return ref
    if impl == "compiled":
        return _compiled.setdefault(ref, torch.compile(ref))
    return fast


def cases(device: str, sizes=(5, 32, 256, 4096)):
    for n in sizes:
        for d in (128, 512, 14 * 512):
            e_u = torch.randn(n, d, device=device, requires_grad=True)
            e_t = torch.randn(n, d, device=device)
            nbytes = 3 * n * d * 4  # read e_u, e_t; write the gradient

            def fwd_bwd(impl, e_u=e_u, e_t=e_t):
                if impl == "kernel":  # the bare Triton launch: loss and gradient in one pass, no autograd
                    from ..kernels.triton_identity_distance import identity_distance_fwd

                    return lambda: identity_distance_fwd(e_u.detach(), e_t)
                f = _impl(identity_distance_reference, lambda a, b: identity_distance(a, b, impl="triton"), impl)
                return lambda: torch.autograd.grad(f(e_u, e_t), e_u)  # no .grad accumulation in the timing

            yield f"identity_distance N={n} D={d}", nbytes, fwd_bwd
        w_u, w_t = torch.randn(1, 14, 512, device=device), torch.randn(1, 14, 512, device=device)
        w_r, alpha = torch.randn(n, 14, 512, device=device), torch.rand(n, device=device) * 15

        def adj(impl, w_r=w_r, alpha=alpha):
            if impl == "kernel":
                impl = "triton"  # no autograd around it: the call is the launch
            f = _impl(latent_adjacency_reference, lambda *a: latent_adjacency(*a, impl="triton"), impl)
            return lambda: f(w_u, w_t, w_r, alpha)

        yield f"latent_adjacency K={n} W+ 14x512", 3 * n * 14 * 512 * 4, adj


def main(quick: bool = False, device: str | None = None) -> list[dict]:
    """quick: N up to 256, 10 repeats, no torch.compile (the CPU test); else N up to 4096, compiled references too.
    device: cpu or cuda (default: engine.runtime.default_device)."""
    from ..engine.runtime import default_device
    from .peak import bandwidth

    device = default_device(device).split(":")[0]
    reps = 10 if quick else 100
    peak_bw = bandwidth(device)
    rows = []
    for name, nbytes, make in cases(device, (5, 32, 256) if quick else (5, 32, 256, 4096)):
        row = {"case": name, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "bytes": nbytes}
        row["ref_eager_us"] = _time(make("ref"), reps, device) * 1e6
        row["ref_compiled_us"] = _time(make("compiled"), reps, device) * 1e6 if not quick else None
        row["triton_us"] = _time(make("triton"), reps, device) * 1e6 if device == "cuda" else None
        row["triton_GBps"] = nbytes / row["triton_us"] / 1e3 if row["triton_us"] else None
        row["kernel_queued_us"] = _time_queued(make("kernel")) * 1e6 if device == "cuda" else None
        row["kernel_GBps"] = nbytes / row["kernel_queued_us"] / 1e3 if row["kernel_queued_us"] else None
        row["kernel_frac_of_peak_bw"] = row["kernel_GBps"] * 1e9 / peak_bw["bytes_per_s"] \
            if row["kernel_GBps"] and peak_bw["bytes_per_s"] else None
        rows.append(row)
    fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    print(f"peak bandwidth: {fmt(peak_bw['bytes_per_s'] and peak_bw['bytes_per_s'] / 1e9)} GB/s ({peak_bw['how']})")
    print("per call (the host's overhead included: what the loop pays) and, for the bare kernel, device time with "
          "launches queued back to back")
    print("| case | ref eager us | ref compiled us | triton us (call) | kernel us (device) | kernel GB/s "
          "| % of peak BW |\n|-|-|-|-|-|-|-|")
    for r in rows:
        pct = "-" if r["kernel_frac_of_peak_bw"] is None else f"{100 * r['kernel_frac_of_peak_bw']:.1f}"
        print(f"| {r['case']} | {fmt(r['ref_eager_us'])} | {fmt(r['ref_compiled_us'])} | {fmt(r['triton_us'])} | "
              f"{fmt(r['kernel_queued_us'])} | {fmt(r['kernel_GBps'])} | {pct} |")
    with open("kernels.json", "w") as f:
        json.dump({"peak_bandwidth": peak_bw, "rows": rows}, f, indent=2)
    return rows


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
