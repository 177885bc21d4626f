"""Forget requests on a live server, measured the way an operator would (docs/serving.md): start `guide-engine
serve RUN --state-dir --admin-token-file` (its worker included) as its own process, measure /v1/generate before,
send the forget requests (seeds, and photos built from generator faces: bench/photos.py), keep the load on
while they are pending, unlearned, verified and swapped in, and report:

- seconds from each 202 to `deployed` (or the state it ended in, with the reason);
- /v1/generate p50/p99 before and during (one seed per request; every 10th asks for a pending person's seed);
- the answers by status code during (5xx: none expected), and how many the guard withheld (451) while pending,
  of the persons' seeds and of strangers' apart;
- the arguments it gave `serve` (the worker's resolved settings: the state dir's config.json), the ledger's size
  before, the server's swaps.

    python -m guide_engine.bench.forget RUN --seeds 8101,8102 --photo-seeds 8103 [--concurrency 4 --rate 10]
Extra arguments after `--` go to `guide-engine serve` (e.g. -- --forget-iters 200).
"""
from __future__ import annotations

import asyncio
import json
import os
import secrets
import tempfile
import time
from pathlib import Path

import click

from ..engine import rundir
from ..guide import ledger
from .serving import start_server


def _percentiles(lat: list[float]) -> dict:
    lat = sorted(lat)
    if not lat:
        return {"n": 0}
    return {"n": len(lat), "p50_ms": round(1000 * lat[len(lat) // 2], 1),
            "p99_ms": round(1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))], 1)}


async def _load(url: str, concurrency: int, rate: float, until, people: list[int], pending, transport=None) -> dict:
    """/v1/generate from `concurrency` clients at about `rate` requests/s in all, until `until()`; every 10th
    request asks for a person's seed while `pending()`. Withheld answers are counted apart: the persons' seeds
    (the guard at work) and strangers' (what it costs everyone else)."""
    import httpx

    lat, codes, sent = [], {}, 0
    withheld = {"persons": 0, "strangers": 0}
    asked = {"persons": 0, "strangers": 0}

    async def one(client):
        nonlocal sent
        while not until():
            await asyncio.sleep(max(0.0, concurrency / rate - (lat[-1] if lat else 0.0)))
            n, sent = sent, sent + 1
            person = bool(people) and n % 10 == 0 and pending()
            ask = people[n // 10 % len(people)] if person else 20_000 + n % 50_000
            who = "persons" if person else "strangers"
            t0 = time.perf_counter()
            try:
                code = (await client.post(url, json={"seeds": [ask]})).status_code
            except httpx.HTTPError as e:
                code = type(e).__name__
            lat.append(time.perf_counter() - t0)
            codes[code] = codes.get(code, 0) + 1
            asked[who] += 1
            withheld[who] += code == 451

    async with httpx.AsyncClient(timeout=120, transport=transport) as client:
        await asyncio.gather(*[one(client) for _ in range(concurrency)])
    return {**_percentiles(lat), "codes": {str(k): v for k, v in sorted(codes.items(), key=str)},
            "5xx": sum(v for k, v in codes.items() if isinstance(k, int) and k >= 500),
            "withheld_451": withheld, "asked": asked}


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("run")
@click.option("--seeds", default="", help="Seeds to ask to forget, e.g. 8101,8102.")
@click.option("--photo-seeds", default="", help="Generator faces to ask to forget as photos (a scene each).")
@click.option("--concurrency", type=int, default=4, show_default=True)
@click.option("--rate", type=float, default=10.0, show_default=True, help="Requests per second in all (a steady "
              "load: a saturating one leaves the worker, at nice 10, next to nothing).")
@click.option("--before-s", type=float, default=30.0, show_default=True, help="Seconds of load before the requests.")
@click.option("--timeout-s", type=float, default=1800.0, show_default=True)
@click.option("--state-dir", default=None, help="Default: a fresh temporary folder.")
@click.argument("serve_args", nargs=-1, type=click.UNPROCESSED)
def main(run, seeds, photo_seeds, concurrency, rate, before_s, timeout_s, state_dir, serve_args):
    import httpx

    from ..engine.models import zoo
    from .photos import compose, generator_face

    seeds = [int(s) for s in seeds.split(",") if s]
    photo_seeds = [int(s) for s in photo_seeds.split(",") if s]
    work = Path(tempfile.mkdtemp(prefix="forget-bench-"))
    state = Path(state_dir) if state_dir else work / "state"
    token = work / "token"
    fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, secrets.token_hex(24).encode())
    os.close(fd)
    auth = {"Authorization": f"Bearer {token.read_text()}"}
    log = open(work / "server.log", "wb")
    n_before = len(ledger.read(Path(run))["identities"])
    proc, port = start_server(run, ("--state-dir", str(state), "--admin-token-file", str(token), *serve_args),
                              stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while httpx.get(f"{url}/readyz", timeout=30).status_code != 200:
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.5)
        t_end = time.monotonic() + before_s
        before = asyncio.run(_load(f"{url}/v1/generate", concurrency, rate, lambda: time.monotonic() > t_end, [], bool))

        generator = zoo.load_generator(rundir.read_manifest(Path(run))["generator"])
        ids, t202 = {}, {}
        for s in seeds:
            r = httpx.post(f"{url}/v1/forget", json={"seed": s}, headers=auth, timeout=60)
            assert r.status_code == 202, r.text
            ids[f"seed {s}"], t202[r.json()["id"]] = r.json()["id"], time.monotonic()
        for s in photo_seeds:
            photo = compose([generator_face(generator, s)], work / f"photo-{s}.jpg", face_px=(160,),
                            at=((0.55, 0.45),), seed=s)
            r = httpx.post(f"{url}/v1/forget", files={"image": (photo.name, photo.read_bytes(), "image/jpeg")},
                           headers=auth, timeout=60)
            assert r.status_code == 202, r.text
            ids[f"photo of seed {s}"], t202[r.json()["id"]] = r.json()["id"], time.monotonic()
        people = seeds + photo_seeds
        ended, states = {}, {}
        t_stop = time.monotonic() + timeout_s

        def poll() -> bool:  # True when every request ended (or the time is up)
            with httpx.Client(timeout=60, headers=auth) as c:
                for name, rid in ids.items():
                    if rid not in ended:
                        s = c.get(f"{url}/v1/forget/{rid}").json()
                        states[name] = s
                        if s["state"] not in ("queued", "running"):
                            ended[rid] = time.monotonic() - t202[rid]
            return len(ended) == len(ids) or time.monotonic() > t_stop

        last = [0.0, False]

        def until() -> bool:
            if time.monotonic() - last[0] > 2:
                last[:] = [time.monotonic(), poll()]
            return last[1]

        during = asyncio.run(_load(f"{url}/v1/generate", concurrency, rate, until, people,
                                   lambda: len(ended) < len(ids)))
        t_end = time.monotonic() + 10
        after = asyncio.run(_load(f"{url}/v1/generate", concurrency, rate, lambda: time.monotonic() > t_end, [], bool))
        metrics = httpx.get(f"{url}/metrics", timeout=30).text
        swaps = next((float(line.split()[-1]) for line in metrics.splitlines()
                      if line.startswith("guide_engine_swaps_total")), 0.0)
        out = {"ledger_before": n_before, "requests": {name: {"state": states[name]["state"],
                                                             "seconds_202_to_end": round(ended.get(rid, -1), 1),
                                                             "reason": states[name]["reason"]}
                                                      for name, rid in ids.items()},
               "generate_before": before, "generate_during": during, "generate_after": after, "swaps": swaps,
               # the worker's resolved settings are state_dir's config.json, whose owner (apps/forget_store.py) is
               # a layer above this one: the benchmark names what it gave the server, and where to read the rest
               "serve_args": list(serve_args), "state_dir": str(state)}
        print(json.dumps(out, indent=1))
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()


if __name__ == "__main__":
    main()
