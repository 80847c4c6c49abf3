"""Query coalescing: concurrent searches of one collection with the same ``k`` and filter share
one FAISS call.

Why: an exact (flat) search streams the whole index once per call. With several queries in one
call FAISS scores them with one matrix product that reads the index once for all of them
(``indexer.threads``: from 4 queries per call on; on one core at 128-d, 455 queries/s one by one,
780 at 8 per call, 1,210 at 16, 1,730 at 32). So under load, merging the single-query requests
that are waiting anyway makes each of them cheaper.

No timer: a search is dispatched at once when one of ``concurrency`` search slots is free (a lone
request never waits). Searches that arrive while every slot is busy queue up by (collection, k,
filter); when a slot frees, everything queued under the oldest key goes out as one call (up to
``max_rows`` query rows). The batch size therefore follows the load by itself. The event loop is
the only thread touching the queues, so they need no lock.

A merged call returns what each search would have returned alone: rows are independent in FAISS
(the approximate-index fallback for filters is decided per row, ``VectorIndex.search``), a
by-id query's own item is dropped from its row only, and if the merged call fails, each search
is retried alone so that one bad query fails only its own request. Scores of a merged call can
differ from a lone call's in the last float bits (matrix product vs scan: another summation order).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
import numpy as np

from indexer.collection import Collection, Hit

log = logging.getLogger(__name__)

Results = list[list[Hit]]


@dataclass
class _Pending:
    vectors: np.ndarray  # (rows, dim) float32, validated
    exclude: list[str | None]  # per row: an item id to leave out (search by id)
    future: asyncio.Future[Results]


@dataclass
class _Queue:
    collection: Collection
    k: int
    flt: dict[str, Any] | None
    waiting: list[_Pending]
    version: str | None = None  # encoder version of the query vectors (None: the collection's active one)


def filter_key(flt: dict[str, Any] | None) -> str:
    return json.dumps(flt, sort_keys=True) if flt else ""


class SearchBatcher:
    def __init__(self, concurrency: int, max_rows: int = 256) -> None:
        self.free = max(1, concurrency)
        self.max_rows = max(1, max_rows)
        self._queues: dict[tuple[Collection, int, str, str | None], _Queue] = {}
        self._running: set[asyncio.Task[None]] = set()
        self.calls = 0  # FAISS calls made
        self.searches = 0  # submissions answered (a merged call answers several)

    async def search(
        self,
        collection: Collection,
        vectors: np.ndarray,
        k: int,
        flt: dict[str, Any] | None = None,
        exclude: list[str | None] | None = None,
        version: str | None = None,
    ) -> Results:
        """Top-``k`` hits per row of ``vectors``, computed together with concurrent searches."""
        future: asyncio.Future[Results] = asyncio.get_running_loop().create_future()
        pending = _Pending(vectors, exclude or [None] * len(vectors), future)
        key = (collection, k, filter_key(flt), version)
        queue = self._queues.get(key)
        if queue is None:
            self._queues[key] = _Queue(collection, k, flt, [pending], version)
        else:
            queue.waiting.append(pending)
        self._dispatch()
        return await future

    def _dispatch(self) -> None:
        while self.free and self._queues:
            key = next(iter(self._queues))  # oldest key first: no collection starves
            queue = self._queues.pop(key)
            group: list[_Pending] = []
            rows = 0
            while queue.waiting and (not group or rows + len(queue.waiting[0].vectors) <= self.max_rows):
                pending = queue.waiting.pop(0)
                if not pending.future.done():  # not cancelled (client gone)
                    group.append(pending)
                    rows += len(pending.vectors)
            if queue.waiting:
                self._queues[key] = queue  # re-queued behind the other keys
            if not group:
                continue
            self.free -= 1
            task = asyncio.get_running_loop().create_task(self._run(queue, group))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, queue: _Queue, group: list[_Pending]) -> None:
        answers: list[Results | Exception]
        try:
            answers = await anyio.to_thread.run_sync(
                search_group, queue.collection, queue.k, queue.flt, group, queue.version
            )
        except Exception as exc:  # search_group catches search errors; this is the thread hop failing
            answers = [exc] * len(group)
        except BaseException:  # cancelled at shutdown: nobody may wait forever
            answers = [RuntimeError("search cancelled: the server is stopping")] * len(group)
            raise
        finally:
            self.free += 1
            self.calls += 1
            self.searches += len(group)
            for pending, answer in zip(group, answers, strict=True):
                if pending.future.done():
                    continue
                if isinstance(answer, BaseException):
                    pending.future.set_exception(answer)
                else:
                    pending.future.set_result(answer)
            self._dispatch()


def search_group(
    collection: Collection, k: int, flt: dict[str, Any] | None, group: list[_Pending], version: str | None = None
) -> list[Results | Exception]:
    """One FAISS call for the whole group (worker thread); each search alone if that fails."""
    if len(group) == 1:
        try:
            return [collection.search(group[0].vectors, k, flt, exclude=group[0].exclude, version=version)]
        except Exception as exc:
            return [exc]
    try:
        matrix = np.concatenate([p.vectors for p in group])
        exclude = [e for p in group for e in p.exclude]
        hits = collection.search(matrix, k, flt, exclude=exclude, version=version)
    except Exception:
        log.debug("merged search of %d requests failed; answering each alone", len(group), exc_info=True)
        return [answer for p in group for answer in search_group(collection, k, flt, [p], version)]
    out: list[Results | Exception] = []
    start = 0
    for p in group:
        out.append(hits[start : start + len(p.vectors)])
        start += len(p.vectors)
    return out
