"""The server's Prometheus metrics: requests by route template, method and status; latency; batch sizes; queue
depth; inference time; images the guard withheld (for a forgotten identity, for a pending forget request); hot
swaps; requests refused for a full queue."""
from __future__ import annotations

import time

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT"})


class Metrics:
    """Prometheus metrics of one app (its own registry, so several apps in one process do not collide)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry()
        self.requests = Counter("guide_engine_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("guide_engine_request_seconds", "request latency by route", ["route"], registry=r,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.batch = Histogram("guide_engine_batch_size", "latents per generator call", registry=r,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.queue = Gauge("guide_engine_queue_depth", "latents accepted and not yet answered", registry=r)
        self.infer = Histogram("guide_engine_inference_seconds", "seconds per generator call", registry=r,
                               buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))
        self.withheld = Counter("guide_engine_withheld_images", "images the guard withheld", registry=r)
        self.withheld_pending = Counter("guide_engine_withheld_pending_images", "images withheld because they match "
                                        "a pending forget request (and no forgotten identity)", registry=r)
        self.swaps = Counter("guide_engine_swaps", "generators swapped in by deployed forget requests", registry=r)
        self.queue_full = Counter("guide_engine_queue_full", "requests answered 429: the queue was full", registry=r)


class MetricsMiddleware:
    """Counts every HTTP request by its route template (bounded label values) and status, and times it."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status = time.perf_counter(), [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"] if scope["method"] in HTTP_METHODS else "other"  # a bounded label set
            self.metrics.requests.labels(route, method, str(status[0])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - t0)
