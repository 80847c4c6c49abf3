"""The embedded runner: jobs run on threads inside the server, state in the server's store.

Each running job is a three-stage pipeline joined by small bounded queues, so the stages overlap:
a reader (walks the source, reads file bytes) -> ``encode_threads`` encoders (decode/tokenize +
forward, one batch each) -> the writer (this job's thread: ``Collection.upsert``, then the batch is
counted). Batches are counted by ``seq`` once written, so a server killed mid-job resumes on
restart with the batches not yet counted; one half-written batch is simply written again (upserts
replace by id).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any, TypeVar

from indexer.errors import CollectionNotFound, StoreUnavailable
from indexer.jobs.backfill import BackfillSource
from indexer.jobs.encode import Target, encode_batch, give_up
from indexer.jobs.errors import SourceInvalid
from indexer.jobs.model import ACTIVE, Batch, Encoded
from indexer.jobs.runner import JobRunner
from indexer.jobs.sources import Source, load
from models.core.backends import cpu_cores

log = logging.getLogger(__name__)
T = TypeVar("T")
_END = object()  # end of a stage's output


class EmbeddedRunner(JobRunner):
    name = "embedded"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)

    def start(self) -> None:
        for job_id in self.active_jobs():  # resume what a previous run left
            log.info("resuming job %s", job_id)
            self._queue.put(job_id)
        self._start_threads([(self._dispatch, f"job-runner-{n}") for n in range(max(1, self.options.concurrency))])

    def stop(self) -> None:
        self._stop_threads(timeout=60)

    def _enqueue(self, job_id: str) -> None:
        self._queue.put(job_id)

    def _cancelled(self, job_id: str) -> None:
        halt = self._halts.get(job_id)
        if halt is not None:
            halt.set()

    def _dispatch(self) -> None:
        while not self._stop.is_set():
            try:
                job_id = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self._run(job_id)
            except Exception as exc:
                log.exception("job %s", job_id)
                if not self._stop.is_set():
                    self.fail(job_id, f"internal error: {exc}")
            finally:
                self.cleanup(job_id)

    def _run(self, job_id: str) -> None:
        job = self.store.get_job(job_id)
        if job is None or job["state"] not in ACTIVE:
            return
        halt = self._halts[job_id] = threading.Event()
        try:
            target = self.target(job)
            options = job.get("options", {})
            source = self.open_source(job)
            if self.begin(job_id, source.count()) is None:
                return  # cancelled while queued
            batches = source.batches(int(options.get("batch_size", self.options.batch_size)),
                                     skip=self.store.job_batches(job_id))  # fmt: skip
            if _Pipeline(self, job_id, target, source, batches, halt).run():
                self.finish(job_id)
        except (CollectionNotFound, SourceInvalid) as exc:
            self.fail(job_id, exc.message)
        finally:
            self._halts.pop(job_id, None)


class _Pipeline:
    def __init__(
        self, runner: EmbeddedRunner, job_id: str, target: Target, source: Source | BackfillSource,
        batches: Iterator[Batch],
        halt: threading.Event,
    ) -> None:  # fmt: skip
        self.runner, self.job_id, self.target, self.source, self.batches = runner, job_id, target, source, batches
        self.halt = halt
        self.error: BaseException | None = None
        depth = 2 * max(1, runner.options.encode_threads)
        self.loaded: queue.Queue[object] = queue.Queue(maxsize=depth)
        self.encoded: queue.Queue[object] = queue.Queue(maxsize=depth)

    def run(self) -> bool:
        """True when every batch was written; False when halted (cancel, shutdown) or failed."""
        n = max(1, self.runner.options.encode_threads)
        stages = [(self._read, self.loaded, n, "read")] + [
            (self._encode, self.encoded, 1, f"encode-{i}") for i in range(n)
        ]
        threads = [threading.Thread(target=self._guarded, args=(fn, out, ends), name=f"job-{self.job_id[:8]}-{name}")
                   for fn, out, ends, name in stages]  # fmt: skip
        for thread in threads:
            thread.start()
        try:
            self._write(n)
        except BaseException as exc:
            self._stop_with(exc)
        for thread in threads:
            thread.join(timeout=60)
        if self.error is not None:
            raise self.error
        return not self.halt.is_set()

    def _stop_with(self, exc: BaseException) -> None:
        self.error = self.error or exc
        self.halt.set()

    def _guarded(self, stage: Any, out: queue.Queue[object], ends: int) -> None:
        """Run a stage; whatever happens, tell the next stage it has ended (``ends`` readers)."""
        try:
            stage()
        except BaseException as exc:
            self._stop_with(exc)
        finally:
            for _ in range(ends):
                self._put(out, _END, force=True)

    def _put(self, q: queue.Queue[object], item: object, force: bool = False) -> bool:
        while force or not self.halt.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                if force and self.halt.is_set():
                    return False  # nobody reads any more
        return False

    def _get(self, q: queue.Queue[object]) -> object:
        while True:
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                if self.halt.is_set():
                    return _END

    def _read(self) -> None:
        for batch in self.batches:
            loaded = Batch(batch.seq, load(batch.entries, self.source.roots))
            if self.halt.is_set() or not self._put(self.loaded, loaded):
                return

    def _encode(self) -> None:
        opts = self.runner.options
        # The job's encoder threads share the cores: each forward gets its share (measured in
        # bench/index.py; ONNX Runtime's workers sleep between forwards, so the writer is not starved).
        forward_threads = max(1, cpu_cores() // max(1, opts.encode_threads))
        while (batch := self._get(self.loaded)) is not _END:
            assert isinstance(batch, Batch)
            reason, dead = "", list[dict[str, Any]]()
            for attempt in range(1, opts.max_attempts + 1):
                try:
                    enc = encode_batch(batch.seq, batch.entries, self.target, self.runner.get_encoder,
                                       opts.max_image_pixels, forward_threads)  # fmt: skip
                    break
                except Exception as exc:  # not one item's fault (those are failures already): retry
                    reason = f"{type(exc).__name__}: {exc}"
                    log.warning("job %s batch %d attempt %d: %s", self.job_id, batch.seq, attempt, reason)
            else:
                enc, dead = give_up(batch, opts.max_attempts, reason)
            if not self._put(self.encoded, (enc, dead)):
                return

    def _write(self, encoders: int) -> None:
        ended = 0
        while ended < encoders:
            got = self._get(self.encoded)
            if got is _END:
                ended += 1
                if self.halt.is_set():
                    return
                continue
            assert isinstance(got, tuple)
            self._write_one(got[0], got[1])

    def _write_one(self, enc: Encoded, dead: list[dict[str, Any]]) -> None:
        """Write, riding out a store outage (Redis restarting): the batch is retried, never lost."""
        pause = 0.1
        while not self.halt.is_set():
            try:
                self.runner.write(self.job_id, enc, dead)
                return
            except StoreUnavailable as exc:
                log.warning("job %s: store unavailable, retrying batch %d: %s", self.job_id, enc.seq, exc.message)
                time.sleep(pause)
                pause = min(2.0, pause * 2)
