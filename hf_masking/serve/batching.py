"""Collecting rows from concurrent requests into batches, bounded: a full queue refuses, it never grows.

`Batcher` is the single-process engine (Ray Serve's `@serve.batch` is the other, see
`ray_deployment`). Rows count against `max_queue` from the moment they are admitted until the
worker is done with them, answered or abandoned by a client that timed out, so the rows held in
memory never exceed it whatever clients do.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .service import MaskService, Row, RowError


class QueueFull(Exception):
    """The server holds `max_queue` rows already; the client should retry later."""


class Batcher:
    """Rows wait up to `max_wait` seconds (or until `max_batch` of them) and are answered in one call."""

    def __init__(self, service: MaskService, max_batch: int, max_wait: float, max_queue: int) -> None:
        self.service = service
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.max_queue = max_queue
        self.pending = 0  # rows admitted and not yet finished
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self.on_batch = None  # called with (rows, answers) after each forward (metrics)

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass

    @property
    def alive(self) -> bool:
        return self._worker is not None and not self._worker.done()

    async def submit(self, rows: list[Row]) -> list[dict[str, Any] | RowError]:
        """Every row's answer; `QueueFull` at once if admitting them would exceed `max_queue`."""
        if self.pending + len(rows) > self.max_queue:
            raise QueueFull(f"The server is busy ({self.pending} rows waiting, at most {self.max_queue}).")
        assert self._queue is not None, "Batcher.start() first"
        loop = asyncio.get_running_loop()
        futures = []
        for row in rows:
            future = loop.create_future()
            self.pending += 1
            self._queue.put_nowait((row, future))
            futures.append(future)
        return list(await asyncio.gather(*futures))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        queue = self._queue
        while True:
            items = [await queue.get()]
            deadline = loop.time() + self.max_wait
            while len(items) < self.max_batch:
                left = deadline - loop.time()
                if left <= 0 and queue.empty():
                    break
                try:
                    items.append(queue.get_nowait() if left <= 0 else await asyncio.wait_for(queue.get(), left))
                except (asyncio.TimeoutError, asyncio.QueueEmpty):
                    break
            live = [(row, future) for row, future in items if not future.done()]  # done: its client gave up
            try:
                if live:
                    answers = await asyncio.to_thread(self.service.answer, [row for row, _ in live])
                    for (_, future), answer in zip(live, answers, strict=True):
                        if not future.done():
                            future.set_result(answer)
                    if self.on_batch is not None:
                        self.on_batch([row for row, _ in live], answers)
            except Exception as err:  # every waiting row gets the error; the worker goes on
                for _, future in live:
                    if not future.done():
                        future.set_exception(err)
            finally:
                self.pending -= len(items)
