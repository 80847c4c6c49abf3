"""Dynamic batching: rows of many requests share forward passes, grouped by length.

Each request preprocesses its own inputs on a worker thread (decode, tokenize, detect faces), so a
bad input fails only its request. Its rows then join one queue, cut to their own length. A
collector forms each forward from the **oldest** waiting row plus the rows nearest to it in length,
up to a padding budget (rows x longest row: tokens for text, pixels for images) and a number of
rows (``models.core.batching.Budget``). A request's rows may be split over several forwards or
merged with other requests', padding stays small, and the oldest row always goes next, so no
length starves. Each request gets its rows back in its own order.

Cores (measured on 2 cores, see docs/benchmarks.md): up to ``slots`` forwards run at once, one
intra-op thread each, so one group's forward overlaps another group's HTTP work. When the queue is
shallow (nothing else in flight and nothing left waiting), a lone forward takes every slot and runs
with that many intra-op threads instead, so a single client's big batch is not left on one core.
With ``threads`` fixed (``ERS_ENCODER_THREADS`` > 0) every forward uses that count.
A full queue answers at once with ``QueueFull`` (HTTP 429 + Retry-After) instead of queueing forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from dataclasses import dataclass, field

import anyio.to_thread
import numpy as np

from models.core.batching import Budget, collate, row_count, row_lengths, split_rows
from models.core.encoder import Batch, Encoder
from service.runtime.errors import ServiceError

log = logging.getLogger(__name__)


class QueueFull(ServiceError):
    """The encoder's queue is full: the request is answered at once (429) rather than queued forever."""

    code = "overloaded"

    def __init__(self, encoder: str, retry_after: float) -> None:
        super().__init__(f"encoder {encoder} is overloaded: its queue is full; retry after {retry_after:.1f} s")
        self.retry_after = retry_after


@dataclass
class _Request:
    future: asyncio.Future[np.ndarray]
    rows: int
    out: np.ndarray | None = None
    done: int = 0

    def deliver(self, index: int, raw: np.ndarray) -> None:
        if self.future.done():
            return
        if self.out is None:
            self.out = np.empty((self.rows, *raw.shape), dtype=raw.dtype)
        self.out[index] = raw
        self.done += 1
        if self.done == self.rows:
            self.future.set_result(self.out)


@dataclass
class _Row:
    request: _Request
    index: int  # its place in the request
    length: int  # padding cost: tokens or pixels
    feeds: Batch
    seq: int  # arrival order
    queued_at: float = field(default_factory=time.perf_counter)


def pick(pending: list[_Row], budget: int, max_rows: int) -> list[_Row]:
    """The oldest row plus its nearest neighbours in length, while rows x longest <= ``budget``."""
    by_length = sorted(pending, key=lambda r: (r.length, r.seq))
    centre = next(i for i, r in enumerate(by_length) if r is pending[0])
    lo, hi = centre, centre + 1  # the group is by_length[lo:hi]
    shortest = longest = by_length[centre].length
    while hi - lo < max_rows:
        left = by_length[lo - 1] if lo > 0 else None
        right = by_length[hi] if hi < len(by_length) else None
        if left is None and right is None:
            break
        take_left = right is None or (left is not None and shortest - left.length <= right.length - longest)
        nxt = left if take_left else right
        assert nxt is not None
        if (hi - lo + 1) * max(longest, nxt.length) > budget:
            break
        if take_left:
            lo -= 1
            shortest = nxt.length
        else:
            hi += 1
            longest = nxt.length
    return by_length[lo:hi]


class DynamicBatcher:
    def __init__(
        self,
        encoder: Encoder,
        budget: Budget | None = None,
        max_wait_ms: float = 5.0,
        max_queue: int = 512,
        slots: int = 2,
        threads: int = 0,
    ) -> None:
        self.encoder = encoder
        self.budget = budget or Budget()
        self.max_wait = max_wait_ms / 1000
        self.max_queue = max_queue
        self.slots = max(1, slots)
        self.fixed_threads = threads  # 0: adapt to the load
        self._units = 0  # the budget in this encoder's unit (tokens, pixels or rows), set by the first batch
        self._pending: list[_Row] = []
        self._seq = itertools.count()
        self._changed = asyncio.Event()  # rows arrived or a slot came free
        self._free = self.slots
        self._active = 0  # requests waiting for rows
        self._load = 0.0  # moving average of _active seen by arriving requests: 1.0 = one client at a time
        self._running: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self.batches_run = 0
        self.rows_run = 0
        self.units_run = 0  # tokens (text) or pixels (images) of the rows run
        self.padded_run = 0  # rows x longest, summed: padding overhead = padded_run / units_run - 1
        self.wide_runs = 0

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
        """Raw network output for ``batch``'s rows, in order, computed together with other requests' rows."""
        rows = row_count(batch)
        if rows == 0:
            return np.zeros((0, self.encoder.spec.dim), dtype=np.float32)
        if self._pending and len(self._pending) + rows > self.max_queue:
            raise QueueFull(self.encoder.spec.key, retry_after=max(1.0, self.max_wait * 10))
        if not self._units:
            self._units = self.budget.units(batch)
        request = _Request(asyncio.get_running_loop().create_future(), rows)
        lengths = row_lengths(batch)
        for i, feeds in enumerate(split_rows(batch, lengths)):
            self._pending.append(_Row(request, i, int(lengths[i]), feeds, next(self._seq)))
        self._active += 1
        self._load = 0.8 * self._load + 0.2 * self._active
        self._changed.set()
        try:
            return await request.future
        finally:
            self._active -= 1

    def _full_group_waiting(self) -> bool:
        if len(self._pending) >= self.budget.rows:
            return True
        return len(self._pending) * max(r.length for r in self._pending) >= self._units

    async def _wait_change(self, timeout: float | None) -> None:
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    async def _collect(self) -> None:
        while True:
            while not self._pending or self._free == 0:
                await self._wait_change(None)
            # With a forward in flight, gather until a group is full or the oldest row has waited
            # max_wait: this forward should not be a lone row. Nothing in flight: go now.
            while self._free < self.slots and not self._full_group_waiting():
                remaining = self._pending[0].queued_at + self.max_wait - time.perf_counter()
                if remaining <= 0:
                    break
                await self._wait_change(remaining)
            group = pick(self._pending, self._units, self.budget.rows)
            chosen = {id(r) for r in group}
            self._pending = [r for r in self._pending if id(r) not in chosen]
            # One client at a time and nothing else to do: this forward may use every core.
            alone = self._free == self.slots and not self._pending and self._load < 1.5
            taken = self.slots if self.fixed_threads == 0 and alone else 1
            threads = self.fixed_threads or taken
            self._free -= taken
            task = asyncio.get_running_loop().create_task(self._run(group, threads, taken))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, group: list[_Row], threads: int, taken: int) -> None:
        try:
            merged = collate([r.feeds for r in group])
            raw = await anyio.to_thread.run_sync(lambda: self.encoder.forward(merged, threads=threads))
        except Exception as exc:  # a failed forward fails every request with a row in it
            log.exception("forward pass of %s failed", self.encoder.spec.key)
            for r in group:
                if not r.request.future.done():
                    r.request.future.set_exception(exc)
            return
        finally:
            self._free += taken
            self._changed.set()
        self.batches_run += 1
        self.rows_run += len(group)
        self.units_run += sum(r.length for r in group)
        self.padded_run += len(group) * max(r.length for r in group)
        self.wide_runs += taken > 1
        for r, out in zip(group, raw, strict=True):
            r.request.deliver(r.index, out)
