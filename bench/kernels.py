"""Kernel vs reference (eager and torch.compile'd): median time and achieved bandwidth.
`python -m guide_engine.bench.kernels [--quick]` prints a markdown table and writes kernels.json.
Triton runs only on CUDA tensors; on the CPU the table holds the references alone (the interpreter's
timings mean nothing). Peak bandwidth is not looked up: the table gives GB/s, compare with the GPU's."""
from __future__ import annotations

import json
import statistics
import sys
import time

import torch

from guide_engine.kernels import identity_distance, identity_distance_reference, latent_adjacency, latent_adjacency_reference


def _time(fn, reps: int) -> float:
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(3):
        fn()
    sync()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


_compiled: dict = {}


def _impl(ref, fast, impl):
    """impl: "ref" | "compiled" | "triton" => the function to time."""
    if impl == "ref":
        return ref
    if impl == "compiled":
        return _compiled.setdefault(ref, torch.compile(ref))
    return fast


def cases(device: str):
    for n in (5, 32, 256):
        for d in (128, 512, 14 * 512):
            e_u = torch.randn(n, d, device=device, requires_grad=True)
            e_t = torch.randn(n, d, device=device)
            nbytes = 3 * n * d * 4  # read e_u, e_t; write the gradient

            def fwd_bwd(impl, e_u=e_u, e_t=e_t):
                f = _impl(identity_distance_reference, lambda a, b: identity_distance(a, b, impl="triton"), impl)
                return lambda: f(e_u, e_t).backward()

            yield f"identity_distance N={n} D={d}", nbytes, fwd_bwd
        w_u, w_t = torch.randn(1, 14, 512, device=device), torch.randn(1, 14, 512, device=device)
        w_r, alpha = torch.randn(n, 14, 512, device=device), torch.rand(n, device=device) * 15

        def adj(impl, w_r=w_r, alpha=alpha):
            f = _impl(latent_adjacency_reference, lambda *a: latent_adjacency(*a, impl="triton"), impl)
            return lambda: f(w_u, w_t, w_r, alpha)

        yield f"latent_adjacency K={n} W+ 14x512", 3 * n * 14 * 512 * 4, adj


def main(quick: bool = False) -> list[dict]:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    reps = 10 if quick else 100
    rows = []
    for name, nbytes, make in cases(device):
        row = {"case": name, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu"}
        row["ref_eager_us"] = _time(make("ref"), reps) * 1e6
        row["ref_compiled_us"] = _time(make("compiled"), reps) * 1e6 if not quick else None
        row["triton_us"] = _time(make("triton"), reps) * 1e6 if device == "cuda" else None
        row["triton_GBps"] = nbytes / row["triton_us"] / 1e3 if row["triton_us"] else None
        rows.append(row)
    fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    print("| case | device | ref eager us | ref compiled us | triton us | triton GB/s |\n|-|-|-|-|-|-|")
    for r in rows:
        print(f"| {r['case']} | {r['device']} | {fmt(r['ref_eager_us'])} | {fmt(r['ref_compiled_us'])} | "
              f"{fmt(r['triton_us'])} | {fmt(r['triton_GBps'])} |")
    with open("kernels.json", "w") as f:
        json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
