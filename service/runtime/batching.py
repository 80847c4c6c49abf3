"""Dynamic batching: network inputs from many requests share one forward pass.

Each request preprocesses its own inputs on a worker thread (decode, tokenize, detect faces), so a
bad input fails only its request. The preprocessed batches wait in a bounded queue; one collector
task gathers them until ``max_batch`` rows or ``max_wait_ms`` have passed, pads and concatenates
them, runs ``forward`` on a worker thread (never on the event loop), and hands each request its rows.
Up to ``concurrency`` forwards run at once: with one in flight, the model core idles while the
event loop answers the last batch and takes in the next (measured: busy 58 % of the time on
2 cores); with two, one group's forward overlaps the other group's HTTP work.
A full queue answers at once with ``QueueFull`` (HTTP 429 + Retry-After) instead of queueing forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

import anyio.to_thread
import numpy as np

from models.core.encoder import Batch, Encoder, network_inputs
from service.runtime.errors import ServiceError

log = logging.getLogger(__name__)


class QueueFull(ServiceError):
    """The encoder's queue is full: the request is answered at once (429) rather than queued forever."""

    code = "overloaded"

    def __init__(self, encoder: str, retry_after: float) -> None:
        super().__init__(f"encoder {encoder} is overloaded: its queue is full; retry after {retry_after:.1f} s")
        self.retry_after = retry_after


@dataclass
class _Pending:
    batch: Batch
    rows: int
    future: asyncio.Future[np.ndarray]
    queued_at: float = field(default_factory=time.perf_counter)


def rows_of(batch: Batch) -> int:
    return len(next(iter(network_inputs(batch).values())))


def collate(batches: list[Batch]) -> Batch:
    """Concatenate network inputs, zero-padding ragged trailing axes (token ids, attention masks)."""
    out: Batch = {}
    for key in network_inputs(batches[0]):
        arrays = [b[key] for b in batches]
        shape = np.max([a.shape for a in arrays], axis=0)
        padded = []
        for a in arrays:
            pad = [(0, 0)] + [(0, int(t - s)) for s, t in zip(a.shape[1:], shape[1:], strict=True)]
            padded.append(np.pad(a, pad) if any(p[1] for p in pad) else a)
        out[key] = np.concatenate(padded)
    return out


class DynamicBatcher:
    def __init__(
        self,
        encoder: Encoder,
        max_batch: int = 8,
        max_wait_ms: float = 5.0,
        max_queue: int = 512,
        concurrency: int = 2,
    ) -> None:
        self.encoder = encoder
        self._slots = asyncio.Semaphore(max(1, concurrency))
        self._running: set[asyncio.Task[None]] = set()
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.max_queue = max_queue
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._queued_rows = 0
        self._task: asyncio.Task[None] | None = None
        self.batches_run = 0
        self.rows_run = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._collect(), name=f"batcher-{self.encoder.spec.key}")

    async def stop(self) -> None:
        for running in list(self._running):
            running.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def forward(self, batch: Batch) -> np.ndarray:
        """Raw network output for ``batch``'s rows, computed together with other requests' rows."""
        rows = rows_of(batch)
        if rows == 0:
            return np.zeros((0, self.encoder.spec.dim), dtype=np.float32)
        if self._queued_rows and self._queued_rows + rows > self.max_queue:
            raise QueueFull(self.encoder.spec.key, retry_after=max(1.0, self.max_wait * 10))
        self._queued_rows += rows
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(batch, rows, future))
        return await future

    async def _collect(self) -> None:
        while True:
            await self._slots.acquire()  # a free forward slot first: then gather while it waits
            first = await self._queue.get()
            group, rows = [first], first.rows
            deadline = time.perf_counter() + self.max_wait
            while rows < self.max_batch:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    nxt = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
                group.append(nxt)
                rows += nxt.rows
            self._queued_rows -= rows
            task = asyncio.get_running_loop().create_task(self._run(group, rows))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, group: list[_Pending], rows: int) -> None:
        try:
            merged = collate([p.batch for p in group])
            raw = await anyio.to_thread.run_sync(self.encoder.forward, merged)
        except Exception as exc:  # a failed forward fails every request of the batch
            log.exception("forward pass of %s failed", self.encoder.spec.key)
            for p in group:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        finally:
            self._slots.release()
        self.batches_run += 1
        self.rows_run += rows
        start = 0
        for p in group:
            if not p.future.done():
                p.future.set_result(raw[start : start + p.rows])
            start += p.rows
