"""The server's micro-batcher: concurrent requests' latents grouped into one generator call, behind a bound on
the latents accepted and not yet answered (a full queue is refused at once, never waited on)."""
from __future__ import annotations

import asyncio
import time

import torch


class QueueFull(Exception):
    pass


class MicroBatcher:
    """Groups concurrent requests' latents into one `infer` call (up to max_batch latents, or max_wait_ms),
    behind a bound of `max_queue` latents accepted and not yet answered."""

    def __init__(self, infer, max_batch: int, max_wait_ms: float, max_queue: int = 1 << 30, metrics=None):
        self.infer, self.max_batch, self.max_wait = infer, max_batch, max_wait_ms / 1000
        self.max_queue, self.metrics = max_queue, metrics
        self.queue: asyncio.Queue | None = None
        self.loop = None
        self.pending = 0  # latents accepted and not yet answered
        self.calls: list[int] = []  # batch size of each infer call (for tests and metrics)

    async def submit(self, w: torch.Tensor) -> torch.Tensor:
        if self.pending + len(w) > self.max_queue:
            raise QueueFull
        if self.loop is not asyncio.get_running_loop():  # first call, or a new event loop: (re)start the worker
            self.loop = asyncio.get_running_loop()
            self.queue = asyncio.Queue()
            self.loop.create_task(self._worker())
        fut = asyncio.get_running_loop().create_future()
        self._count(len(w))
        await self.queue.put((w, fut))
        return await fut

    def _count(self, n: int) -> None:
        self.pending += n
        if self.metrics is not None:
            self.metrics.queue.set(self.pending)

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            n = len(items[0][0])
            deadline = loop.time() + self.max_wait
            while n < self.max_batch:
                try:
                    item = await asyncio.wait_for(self.queue.get(), max(0.0, deadline - loop.time()))
                except asyncio.TimeoutError:
                    break
                if n + len(item[0]) > self.max_batch:
                    await self._run(items)
                    items, n = [], 0
                items.append(item)
                n += len(item[0])
            await self._run(items)

    async def _run(self, items) -> None:
        if not items:
            return
        w = torch.cat([w for w, _ in items])
        self.calls.append(len(w))
        t0 = time.perf_counter()
        try:
            images = await asyncio.get_running_loop().run_in_executor(None, self.infer, w)
        except Exception as e:  # the worker must survive any failure
            for _, fut in items:
                if not fut.done():
                    fut.set_exception(e)
            return
        finally:
            self._count(-len(w))
            if self.metrics is not None:
                self.metrics.batch.observe(len(w))
                self.metrics.infer.observe(time.perf_counter() - t0)
        i = 0
        for w_i, fut in items:
            if not fut.done():  # a request that timed out has cancelled its future
                fut.set_result(images[i:i + len(w_i)])
            i += len(w_i)
