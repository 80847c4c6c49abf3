"""The distributed runner, server side: produce batches into a Redis stream, consume the encoded
results that ``ers worker`` processes post, write them durably, then acknowledge.

Producer (one thread per running job, ``ERS_JOB_CONCURRENCY`` at once): reads the source, skips
batches already counted or already in the stream (``enqueued_through``, saved after each XADD),
and keeps at most ``ERS_JOB_BACKLOG`` task entries in the stream. Consumer (one thread): reads the
results group (its own pending entries first, after any restart or outage), writes each through
``Collection.upsert``, counts it once (``record_job_batch``), then XACKs + XDELs the result and the
task. Every step may be redone after a crash without duplicating anything: upserts replace by id,
counting refuses a known ``seq``. While Redis is down both threads wait and retry.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from indexer.errors import CollectionNotFound, InvalidInput, StoreUnavailable
from indexer.ingest import FACE_SEPARATOR
from indexer.jobs import streams
from indexer.jobs.errors import SourceInvalid
from indexer.jobs.model import ACTIVE, Encoded, Failure, JobOptions
from indexer.jobs.runner import EncoderGetter, JobRunner
from indexer.jobs.sources import load
from indexer.manager import CollectionManager
from indexer.store.base import MetadataStore

log = logging.getLogger(__name__)
T = TypeVar("T")
TRANSIENT = (*streams.REDIS_DOWN, StoreUnavailable)


class _Halted(Exception):
    """The job was cancelled or the server is stopping: drop what this thread was doing."""


class RedisRunner(JobRunner):
    name = "redis"

    def __init__(
        self, store: MetadataStore, manager: CollectionManager, options: JobOptions, get_encoder: EncoderGetter,
        redis_url: str, prefix: str,
    ) -> None:  # fmt: skip
        super().__init__(store, manager, options, get_encoder)
        self.client = streams.connect(redis_url)
        self.tasks, self.results = streams.tasks_key(prefix), streams.results_key(prefix)
        self.prefix = prefix
        self._resumed = False
        self._resume_lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        targets: list[tuple[Callable[[], None], str]] = [(self._consume, "job-results")]
        targets += [(self._dispatch, f"job-producer-{n}") for n in range(max(1, self.options.concurrency))]
        self._start_threads(targets)

    def stop(self) -> None:
        self._stop_threads(timeout=30)
        self.client.close()

    def _enqueue(self, job_id: str) -> None:
        self._queue.put(job_id)

    def _cancelled(self, job_id: str) -> None:
        halt = self._halts.get(job_id)
        if halt is not None:
            halt.set()
        self.cleanup(job_id)  # an upload's staged files (its tasks left in the stream are dropped by workers)

    def _retry(self, fn: Callable[..., T], *args: Any, halt: threading.Event | None = None) -> T:
        """``fn(*args)`` until it gets through to Redis; ``_Halted`` when told to stop meanwhile."""
        pause = 0.1
        while True:
            if self._stop.is_set() or (halt is not None and halt.is_set()):
                raise _Halted
            try:
                return fn(*args)
            except TRANSIENT as exc:
                log.warning("redis unavailable, retrying in %.1fs: %s", pause, exc)
                time.sleep(pause)
                pause = min(2.0, pause * 2)

    # -- producer ----------------------------------------------------------------------------
    def _dispatch(self) -> None:
        try:  # resume what a previous run left (the first producer thread wins the race: once)
            for job_id in self._retry(self._claim_resume):
                self._queue.put(job_id)
        except _Halted:
            return
        while not self._stop.is_set():
            try:
                job_id = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            halt = self._halts[job_id] = threading.Event()
            try:
                self._produce(job_id, halt)
            except _Halted:
                pass
            except (CollectionNotFound, SourceInvalid) as exc:
                self.fail(job_id, exc.message)
            except Exception as exc:
                log.exception("job %s", job_id)
                self._retry(self.fail, job_id, f"internal error: {exc}")
            finally:
                self._halts.pop(job_id, None)

    def _claim_resume(self) -> list[str]:
        with self._resume_lock:
            if self._resumed:
                return []
            jobs = self.active_jobs()
            self._resumed = True
            return jobs

    def _produce(self, job_id: str, halt: threading.Event) -> None:
        job = self._retry(self.store.get_job, job_id, halt=halt)
        if job is None or job["state"] not in ACTIVE:
            return
        target = self.target(job)
        options = job.get("options", {})
        source = self.open_source(job)
        total = source.count()
        if self._retry(self.begin, job_id, total, halt=halt) is None:
            return
        for name, group in ((self.tasks, streams.TASK_GROUP), (self.results, streams.RESULT_GROUP)):
            self._retry(streams.ensure_group, self.client, name, group, halt=halt)
        counted = self._retry(self.store.job_batches, job_id, halt=halt)
        cursor = int(job.get("enqueued_through", -1))
        size = int(options.get("batch_size", self.options.batch_size))
        for batch in source.batches(size, skip=counted):
            if batch.seq <= cursor:
                continue  # already in the stream from an earlier run
            while self._retry(self.client.xlen, self.tasks, halt=halt) >= max(1, self.options.backlog):
                time.sleep(0.02)  # backpressure: the workers are behind
                if halt.is_set() or self._stop.is_set():
                    raise _Halted
            entries = load(batch.entries, source.roots)
            fields = streams.pack_task(job_id, batch.seq, target, entries, self.options.max_image_pixels)
            self._retry(self.client.xadd, self.tasks, fields, halt=halt)
            self._retry(self.store.update_job, job_id, {"enqueued_through": batch.seq}, ["running"], halt=halt)
        self._retry(self.store.update_job, job_id, {"enqueued_all": True}, ["running"], halt=halt)
        self._retry(self._maybe_finish, job_id, halt=halt)

    # -- consumer ----------------------------------------------------------------------------
    def _consume(self) -> None:
        backlog_first = True  # our own pending results first: they were read but not written
        while not self._stop.is_set():
            try:
                if backlog_first:
                    streams.ensure_group(self.client, self.results, streams.RESULT_GROUP)
                start = "0" if backlog_first else ">"
                reply = self.client.xreadgroup(streams.RESULT_GROUP, "server", {self.results: start}, count=16,
                                               block=None if backlog_first else 500)  # fmt: skip
                entries = reply[0][1] if reply else []
                if backlog_first and not entries:
                    backlog_first = False
                for entry_id, fields in entries:
                    self._apply(entry_id.decode(), fields)
            except TRANSIENT as exc:
                log.warning("job results: redis unavailable, retrying: %s", exc)
                backlog_first = True
                self._stop.wait(0.5)
            except Exception:
                log.exception("job results consumer")
                backlog_first = True
                self._stop.wait(1.0)

    def _apply(self, entry_id: str, fields: dict[bytes, bytes]) -> None:
        job_id, task_id, enc, dead = streams.unpack_result(fields)
        job = self.store.get_job(job_id)
        if job is not None and job["state"] == "running":
            try:
                self.write(job_id, enc, dead)
            except CollectionNotFound as exc:
                self.fail(job_id, exc.message)
            except InvalidInput as exc:  # e.g. a worker whose encoder makes another dimension
                self.write(job_id, _all_failed(enc, f"the write was refused: {exc.message}"))
        pipe = self.client.pipeline(transaction=True)
        pipe.xack(self.tasks, streams.TASK_GROUP, task_id)
        pipe.xdel(self.tasks, task_id)
        pipe.xack(self.results, streams.RESULT_GROUP, entry_id)
        pipe.xdel(self.results, entry_id)
        pipe.execute()
        self._maybe_finish(job_id)

    def _maybe_finish(self, job_id: str) -> None:
        job = self.store.get_job(job_id)
        if job is None or job["state"] != "running" or not job.get("enqueued_all"):
            return
        if job["done"] + job["failed"] >= int(job.get("total") or 0):
            self.finish(job_id)
            self.client.delete(streams.posted_key(self.prefix, job_id), streams.attempts_key(self.prefix, job_id))
            self.cleanup(job_id)


def _all_failed(enc: Encoded, reason: str) -> Encoded:
    sources = dict.fromkeys(i.split(FACE_SEPARATOR)[0] for i in enc.ids)
    return Encoded(enc.seq, failures=[*enc.failures, *(Failure(i, reason) for i in sources)])
