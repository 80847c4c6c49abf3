"""``ers worker``: encode batches from the Redis stream with the models in its own models dir.

Loop: first take over entries other workers left pending longer than ``claim_idle_ms`` (they died
or hung: XAUTOCLAIM), else read new ones (XREADGROUP). For each entry: skip it if its job is over
(ack + delete) or its result was already posted (the server will ack it); count a delivery; after
``max_attempts`` deliveries give its items up as dead letters with the last error; otherwise
encode and post the result together with the "posted" mark (one MULTI). The worker never acks a
task itself: the server does, once the vectors are durably written.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from indexer.errors import StoreUnavailable
from indexer.jobs import streams
from indexer.jobs.encode import encode_batch, give_up
from indexer.jobs.model import Batch, JobOptions
from indexer.store.redis import RedisStore
from models.core.backends import set_torch_threads
from models.core.encoder import Encoder

log = logging.getLogger(__name__)
TRANSIENT = (*streams.REDIS_DOWN, StoreUnavailable)


class StreamWorker:
    def __init__(
        self, redis_url: str, prefix: str, models_dir: Path, options: JobOptions, threads: int = 1,
        name: str | None = None,
    ) -> None:  # fmt: skip
        self.client = streams.connect(redis_url)
        self.store = RedisStore(redis_url, prefix=prefix)
        self.prefix = prefix
        self.tasks, self.results = streams.tasks_key(prefix), streams.results_key(prefix)
        self.models_dir = models_dir
        self.options = options
        self.threads = threads
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._encoders: dict[str, Encoder] = {}
        self.batches = 0
        set_torch_threads(threads)

    def get_encoder(self, key: str) -> Encoder:
        if key not in self._encoders:
            from models.compat.bridges import load_any  # brings torch: only once an encoder is needed

            self._encoders[key] = load_any(self.models_dir / key, self.get_encoder, threads=self.threads)
            log.info("worker %s loaded encoder %s", self.name, key)
        return self._encoders[key]

    def warm_up(self) -> None:
        """Load every encoder of the models dir before reading: the first batch should not pay it."""
        from models.zoo import installed

        for spec in installed(self.models_dir):
            self.get_encoder(spec.key)

    def run(self, stop: threading.Event) -> None:
        self.warm_up()
        log.info("worker %s reading %s", self.name, self.tasks)
        pause, ready = 0.1, False
        while not stop.is_set():
            try:
                if not ready:
                    streams.ensure_group(self.client, self.tasks, streams.TASK_GROUP)
                    ready = True
                for entry_id, fields in self._next():
                    self._handle(entry_id.decode(), fields, stop)
                pause = 0.1
            except TRANSIENT as exc:
                log.warning("worker %s: redis unavailable, retrying in %.1fs: %s", self.name, pause, exc)
                ready = False
                stop.wait(pause)
                pause = min(2.0, pause * 2)
        self.client.close()
        self.store.close()

    def _next(self) -> list[tuple[bytes, dict[bytes, bytes]]]:
        _, claimed, *_ = self.client.xautoclaim(
            self.tasks, streams.TASK_GROUP, self.name, self.options.claim_idle_ms, start_id="0-0", count=4
        )
        claimed = [(i, f) for i, f in claimed if f]  # deleted entries come back empty
        if claimed:
            log.info("worker %s took over %d stalled batch(es)", self.name, len(claimed))
            return claimed
        reply = self.client.xreadgroup(streams.TASK_GROUP, self.name, {self.tasks: ">"}, count=1, block=1000)
        return list(reply[0][1]) if reply else []

    def _handle(self, entry_id: str, fields: dict[bytes, bytes], stop: threading.Event) -> None:
        job_id, seq, target, entries, max_pixels = streams.unpack_task(fields)
        job = self.store.get_job(job_id)
        if job is None or job["state"] != "running":  # cancelled, failed or deleted: drop the task
            pipe = self.client.pipeline(transaction=True)
            pipe.xack(self.tasks, streams.TASK_GROUP, entry_id)
            pipe.xdel(self.tasks, entry_id)
            pipe.execute()
            return
        posted, attempts = streams.posted_key(self.prefix, job_id), streams.attempts_key(self.prefix, job_id)
        if self.client.sismember(posted, seq):
            return  # encoded already; the server acks it once written
        tries = int(self.client.hincrby(attempts, str(seq), 1))
        dead: list[dict[str, Any]] = []
        if tries > self.options.max_attempts:
            last = self.client.hget(attempts, f"err:{seq}")
            reason = last.decode() if last else "the worker processing it stopped (crash or kill)"
            enc, dead = give_up(Batch(seq, entries), tries - 1, reason)
        else:
            try:
                enc = encode_batch(seq, entries, target, self.get_encoder, max_pixels)
            except Exception as exc:  # not an item's fault: leave it pending, to be retried
                log.exception("worker %s: job %s batch %d attempt %d", self.name, job_id, seq, tries)
                self.client.hset(attempts, f"err:{seq}", f"{type(exc).__name__}: {exc}")
                return
        fields_out = streams.pack_result(job_id, entry_id, enc, dead)
        pause = 0.1
        while True:  # keep the encoded result through a Redis outage rather than encoding again
            try:
                pipe = self.client.pipeline(transaction=True)
                pipe.xadd(self.results, fields_out)  # type: ignore[arg-type]
                pipe.sadd(posted, seq)
                pipe.execute()
                self.batches += 1
                return
            except streams.REDIS_DOWN as exc:
                if stop.is_set():
                    return  # still pending: another worker takes it over
                log.warning("worker %s: cannot post batch %d yet: %s", self.name, seq, exc)
                time.sleep(pause)
                pause = min(2.0, pause * 2)
