"""Load on `guide-engine serve`, the way an operator would measure it: start the server as its own process,
send requests at a fixed concurrency (one seed each, POST /v1/generate), report status codes, 429s (queue full),
p50/p99 latency, images/s and the server's RSS before and after.

    python -m guide_engine.bench.serving RUN_DIR --requests 1000 --concurrency 32
    python -m guide_engine.bench.serving RUN_DIR --seconds 300 --concurrency 16     # soak
Extra arguments after `--` go to `guide-engine serve` (e.g. -- --allow-unverified --max-queue 64).
"""
from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time

import click


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(source: str, extra: tuple[str, ...], stderr=None) -> tuple[subprocess.Popen, int]:
    """`guide-engine serve SOURCE *extra` as its own process on a free loopback port, once it accepts.
    stderr: where the server's log goes (a file object; None: this process's)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "guide_engine.apps.cli", "serve", source, "--port", str(port),
                             *extra],
                            stderr=stderr)
    deadline = time.time() + 300
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, port
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                raise SystemExit(f"error: the server did not start (exit {proc.poll()})")
            time.sleep(0.2)


async def load(url: str, concurrency: int, requests: int | None, seconds: float | None) -> dict:
    import httpx

    latencies, codes, sent = [], {}, 0
    t_end = time.perf_counter() + seconds if seconds else None

    async def worker(client):
        nonlocal sent
        while (requests is None or sent < requests) and (t_end is None or time.perf_counter() < t_end):
            seed, sent = sent, sent + 1
            t0 = time.perf_counter()
            try:
                r = await client.post(url, json={"seeds": [seed % 100_000]})
                code = r.status_code
            except httpx.HTTPError as e:
                code = type(e).__name__
            latencies.append(time.perf_counter() - t0)
            codes[code] = codes.get(code, 0) + 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*[worker(client) for _ in range(concurrency)])
        wall = time.perf_counter() - t0
    lat = sorted(latencies)
    ok = codes.get(200, 0)
    return {"requests": len(lat), "concurrency": concurrency, "codes": {str(k): v for k, v in codes.items()},
            "errors": len(lat) - ok - codes.get(429, 0), "429": codes.get(429, 0),
            "p50_ms": round(1000 * lat[len(lat) // 2], 1),
            "p99_ms": round(1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))], 1),
            "images_per_s": round(ok / wall, 1), "wall_s": round(wall, 1)}


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("source")
@click.option("--requests", type=int, default=None, help="Total requests (default 1000 unless --seconds).")
@click.option("--seconds", type=float, default=None, help="Soak: send for this long instead.")
@click.option("--concurrency", type=int, default=32, show_default=True)
@click.option("--warmup", type=int, default=50, show_default=True, help="Requests sent (and not counted) first.")
@click.argument("serve_args", nargs=-1, type=click.UNPROCESSED)
def main(source, requests, seconds, concurrency, warmup, serve_args):
    proc, port = start_server(source, serve_args)
    try:
        url = f"http://127.0.0.1:{port}/v1/generate"
        asyncio.run(load(url, min(concurrency, 8), warmup, None))
        rss0 = rss_mb(proc.pid)
        out = asyncio.run(load(url, concurrency, requests if requests or seconds else 1000, seconds))
        out |= {"rss_mb_before": round(rss0, 1), "rss_mb_after": round(rss_mb(proc.pid), 1)}
        print(json.dumps(out))
    finally:
        proc.terminate()
        proc.wait(60)


if __name__ == "__main__":
    main()
