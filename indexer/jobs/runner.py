"""The runner interface and what both runners share: submitting, cancelling, progress, writing.

A runner is chosen by configuration (``ERS_JOB_RUNNER``): ``embedded`` (threads in the server,
state in the server's store) or ``redis`` (Redis Streams and ``ers worker`` processes). Either way
the server owns the collections, so every write goes through ``Collection.upsert`` (WAL fsync ->
store -> index) and a batch is counted in the job only after that write returned.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from indexer.collection import Collection
from indexer.errors import InvalidInput
from indexer.jobs.backfill import BackfillSource, backfill_spec, is_backfill
from indexer.jobs.encode import Target
from indexer.jobs.errors import JobConflict, JobNotFound, SourceInvalid
from indexer.jobs.model import ACTIVE, MAX_BATCH, TERMINAL, Encoded, JobOptions, public_view
from indexer.jobs.sources import MANIFEST_SUFFIXES, UPLOAD_FILES, Source, resolve
from indexer.manager import CollectionManager
from indexer.store.base import MetadataStore
from models.core.durable import FileData, publish_files
from models.core.encoder import Encoder

log = logging.getLogger(__name__)
CLIENT_OPTIONS = {"batch_size", "pattern"}
EncoderGetter = Callable[[str], Encoder]


def check_client_options(options: dict[str, Any], default_batch: int) -> dict[str, Any]:
    unknown = set(options) - CLIENT_OPTIONS
    if unknown:
        raise InvalidInput(f"unknown job options {sorted(unknown)}; known: {sorted(CLIENT_OPTIONS)}")
    batch = options.get("batch_size", default_batch)
    if not isinstance(batch, int) or isinstance(batch, bool) or not 1 <= batch <= MAX_BATCH:
        raise InvalidInput(f"options.batch_size must be an integer from 1 to {MAX_BATCH}")
    pattern = options.get("pattern")
    if pattern is not None and (not isinstance(pattern, str) or not pattern):
        raise InvalidInput("options.pattern must be a non-empty glob such as '*.png'")
    return {"batch_size": batch, **({"pattern": pattern} if pattern else {})}


MAX_UPLOAD_NAME_BYTES = 255  # NAME_MAX of Linux file systems


def safe_upload_name(name: str) -> str:
    base = os.path.basename(name.replace("\\", "/"))
    if not base or base in (".", "..") or base.startswith(".") or "\x00" in base:
        raise InvalidInput(f"upload file name '{name}' is not allowed")
    if len(base.encode("utf-8", "surrogatepass")) > MAX_UPLOAD_NAME_BYTES:  # the file system's limit
        raise InvalidInput(f"upload file name '{base[:40]}...' is over {MAX_UPLOAD_NAME_BYTES} bytes")
    return base


class JobRunner(ABC):
    """Submit, observe and cancel jobs; ``start``/``stop`` run with the server's lifespan."""

    name = "abstract"

    def __init__(
        self, store: MetadataStore, manager: CollectionManager, options: JobOptions, get_encoder: EncoderGetter
    ) -> None:
        self.store = store
        self.manager = manager
        self.options = options
        self.get_encoder = get_encoder
        self._queue: queue.Queue[str] = queue.Queue()  # job ids to read, for the dispatch threads
        self._stop = threading.Event()
        self._halts: dict[str, threading.Event] = {}  # per running job: set to stop it between batches
        self._threads: list[threading.Thread] = []

    @abstractmethod
    def start(self) -> None: ...

    def _start_threads(self, targets: list[tuple[Callable[[], None], str]]) -> None:
        for target, name in targets:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _stop_threads(self, timeout: float) -> None:
        """Stop between batches; running jobs stay ``running`` in the store and resume next start."""
        self._stop.set()
        for halt in list(self._halts.values()):
            halt.set()
        for thread in self._threads:
            thread.join(timeout=timeout)

    @abstractmethod
    def stop(self) -> None: ...

    @abstractmethod
    def _enqueue(self, job_id: str) -> None:
        """Have the job run (soon); called after it is stored as ``queued``."""

    # -- the API ---------------------------------------------------------------------------------
    def submit(self, collection: str, source: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
        coll = self.manager.get(collection)  # 404 first: the commonest mistake
        opts = check_client_options(options, self.options.batch_size)
        spec = resolve(source, self.options.allowed_roots)
        if spec["type"] == "directory" and coll.config.encoder is None:
            raise InvalidInput(f"collection '{collection}' has no encoder: a directory of files needs one")
        return self._create(uuid.uuid4().hex, coll, spec, opts)

    def submit_upload(
        self,
        collection: str,
        manifest_name: str,
        manifest: bytes,
        files: Sequence[tuple[str, bytes]],
        options: dict[str, Any],
    ) -> dict[str, Any]:
        """Stage an uploaded manifest (and the files it names) durably under the data directory,
        then run it like a server manifest: a restart resumes it like any other job."""
        coll = self.manager.get(collection)
        opts = check_client_options(options, self.options.batch_size)
        suffix = Path(manifest_name).suffix.lower() or ".jsonl"
        if suffix not in MANIFEST_SUFFIXES:
            raise SourceInvalid("the uploaded manifest must be JSON lines (.jsonl, .ndjson) or .csv")
        job_id = uuid.uuid4().hex
        staging = self.options.uploads_dir / job_id
        names = [safe_upload_name(n) for n, _ in files]
        if len(set(names)) != len(names):
            raise InvalidInput("two uploaded files have the same name")
        (staging / UPLOAD_FILES).mkdir(parents=True)
        try:
            uploads: list[tuple[Path, FileData | None]] = [
                (staging / UPLOAD_FILES / name, data) for name, (_, data) in zip(names, files, strict=True)
            ]
            publish_files([*uploads, (staging / f"manifest{suffix}", manifest)])
            spec = {"type": "upload", "path": str(staging / f"manifest{suffix}")}
            return self._create(job_id, coll, spec, opts)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def _create(
        self, job_id: str, coll: Collection, spec: dict[str, Any], opts: dict[str, Any], enqueue: bool = True
    ) -> dict[str, Any]:
        doc = {"collection": coll.name, "source": spec, "options": opts, "runner": self.name, "state": "queued",
               "created_at": time.time(), "encoder": coll.config.encoder}  # fmt: skip
        self.store.create_job(job_id, doc)
        if enqueue:
            self._enqueue(job_id)
        return self.get(job_id)

    # -- background backfill after a migration (indexer.jobs.backfill) ---------------------------
    def prepare_backfill(self, collection: str, to: str) -> str:
        """Store a queued backfill job without running it: the migration names it in its history
        entry, then ``start_backfill`` runs it once the switch is done (a job left over by a crash
        before the switch fails at once: the collection does not query with ``to``)."""
        job_id = uuid.uuid4().hex
        self._create(job_id, self.manager.get(collection), backfill_spec(to),
                     {"batch_size": self.options.batch_size}, enqueue=False)  # fmt: skip
        return job_id

    def start_backfill(self, job_id: str) -> dict[str, Any]:
        self._enqueue(job_id)
        return self.get(job_id)

    def discard(self, job_id: str) -> None:
        """Forget a job that never ran (its migration was refused)."""
        self.store.delete_job(job_id)

    def cancel_backfills(self, collection: str, keep: str | None = None) -> list[str]:
        """Cancel the collection's running backfills but ``keep`` (before a rollback or another migration)."""
        cancelled = []
        for job in self.store.list_jobs():
            if job["id"] == keep or job["collection"] != collection or not is_backfill(job):
                continue
            if job["state"] in ACTIVE:
                try:
                    self.cancel(job["id"])
                    cancelled.append(job["id"])
                except JobConflict:
                    pass  # it finished meanwhile
        return cancelled

    def open_source(self, job: dict[str, Any]) -> Source | BackfillSource:
        if is_backfill(job):
            processed = int(job.get("done", 0)) + int(job.get("failed", 0))
            return BackfillSource(job["source"], self.manager.get(job["collection"]), processed)
        return Source(job["source"], self.options.allowed_roots, job.get("options", {}).get("pattern"))

    def get(self, job_id: str) -> dict[str, Any]:
        job = self.store.get_job(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return public_view(job)

    def list_jobs(self) -> list[dict[str, Any]]:
        return [public_view(j) for j in self.store.list_jobs()]

    def cancel(self, job_id: str) -> dict[str, Any]:
        job = self.store.update_job(job_id, {"state": "cancelled", "finished_at": time.time()}, states=ACTIVE)
        if job is None:
            current = self.get(job_id)  # 404 when unknown
            raise JobConflict(
                f"job '{job_id}' is already {current['state']}; only queued or running jobs can be cancelled"
            )
        self._cancelled(job_id)
        return public_view(job)

    @abstractmethod
    def _cancelled(self, job_id: str) -> None:
        """Stop local work on the job at once (the stored state stops it too, a little later)."""

    # -- shared by the runners ----------------------------------------------------------------------
    def target(self, job: dict[str, Any]) -> Target:
        coll = self.manager.get(job["collection"])
        if is_backfill(job):  # the encoder the collection migrated to, whatever is active by now
            to = job["source"]["to"]
            return Target(coll.name, coll.dim_for(to), to, coll.config.keep_sources)
        return Target(coll.name, coll.dim_for(coll.config.encoder), coll.config.encoder, coll.config.keep_sources)

    def begin(self, job_id: str, total: int) -> dict[str, Any] | None:
        """Mark the job running with its total; remember where this run starts for the rate.
        None when it was cancelled meanwhile."""
        job = self.store.get_job(job_id)
        if job is None:
            return None
        now = time.time()
        changes = {"state": "running", "total": total, "run_started_at": now,
                   "run_started_processed": job["done"] + job["failed"]}  # fmt: skip
        if not job.get("started_at"):
            changes["started_at"] = now
        return self.store.update_job(job_id, changes, states=ACTIVE)

    def write(self, job_id: str, enc: Encoded, dead: Sequence[dict[str, Any]] = ()) -> None:
        """Durably upsert one encoded batch, then count it (once, whatever happens after)."""
        if enc.ids:
            job = self.store.get_job(job_id)
            collection = self.manager.get(job["collection"] if job else "")
            # versions: the encoder this job encodes with, even after a migration switched the active one
            if job is not None and is_backfill(job):
                to = job["source"]["to"]
                moving = (enc.ids, enc.vectors, enc.payloads, enc.versions)
                collection.upsert(*moving, only_moving_to=to, archive_as=(job_id, enc.seq))
            else:
                collection.upsert(
                    enc.ids, enc.vectors, enc.payloads, enc.versions, sources=enc.sources, thumbnails=enc.thumbnails
                )
        self.store.record_job_batch(job_id, enc.seq, enc.done, len(enc.failures),
                                    [f.to_json() for f in enc.failures], dead)  # fmt: skip

    def finish(self, job_id: str) -> dict[str, Any] | None:
        """``succeeded`` (a cancel that came first wins), with this run's final rate."""
        job = self.store.get_job(job_id)
        if job is None or job["state"] != "running":
            return job
        now = time.time()
        since = job["done"] + job["failed"] - int(job.get("run_started_processed", 0))
        elapsed = now - float(job.get("run_started_at") or now)
        rate = round(since / elapsed, 2) if elapsed > 0 else None
        done = self.store.update_job(job_id, {"state": "succeeded", "finished_at": now, "items_per_s": rate},
                                     states=["running"])  # fmt: skip
        log.info("job %s succeeded: %s", job_id, done and {k: done[k] for k in ("total", "done", "failed")})
        return done

    def fail(self, job_id: str, message: str) -> None:
        log.warning("job %s failed: %s", job_id, message)
        self.store.update_job(job_id, {"state": "failed", "message": message, "finished_at": time.time()},
                              states=ACTIVE)  # fmt: skip

    def cleanup(self, job_id: str) -> None:
        """Drop an upload's staged files once its job is over."""
        job = self.store.get_job(job_id)
        if job is not None and job["state"] in TERMINAL and job["source"].get("type") == "upload":
            shutil.rmtree(Path(job["source"]["path"]).parent, ignore_errors=True)

    def active_jobs(self) -> list[str]:
        """Jobs of this runner still to do, oldest first (what a restarted server resumes)."""
        jobs = [j for j in self.store.list_jobs() if j["state"] in ACTIVE and j.get("runner") == self.name]
        return [j["id"] for j in sorted(jobs, key=lambda j: j.get("created_at") or 0.0)]
