"""What a job is made of: runner options, items and batches on their way, and the public view."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from indexer.ingest import Failure, Item, ItemKind
from indexer.kept_sources import KeptSource
from indexer.thumbnails import Thumbnail
from indexer.types import FloatArray

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
ACTIVE: tuple[JobState, ...] = ("queued", "running")
TERMINAL: tuple[JobState, ...] = ("succeeded", "failed", "cancelled")
__all__ = ["Failure", "Item", "ItemKind"]  # items and failures are the ingest path's (indexer.ingest)
MAX_BATCH = 1024


@dataclass(frozen=True)
class JobOptions:
    """Runner settings (``ERS_*`` through ``Settings.job_options()``)."""

    allowed_roots: tuple[Path, ...] = ()
    uploads_dir: Path = Path(".ers-data/uploads")
    batch_size: int = 64  # items per encoder batch, per stream entry and per durable write
    concurrency: int = 1  # jobs the embedded runner runs at once
    encode_threads: int = 1  # encoder threads per job in the embedded runner
    max_attempts: int = 3  # deliveries of a stream entry before its items become dead letters
    claim_idle_ms: int = 30_000  # a pending stream entry idle this long is reclaimed by another worker
    backlog: int = 32  # batches of one job queued in the stream at most
    max_image_pixels: int = 40_000_000


Entry = Item | Failure  # a source yields failures too: a manifest line that cannot be parsed


@dataclass
class Batch:
    """A fixed slice of the source: ``seq`` numbers it (same slicing on every run, so a resumed
    job skips the batches already counted)."""

    seq: int
    entries: list[Entry]


@dataclass
class Encoded:
    """A batch ready to write: one row per vector (a face image may give several) and the items
    that failed; ``done`` counts source items written."""

    seq: int
    ids: list[str] = field(default_factory=list)
    vectors: FloatArray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    payloads: list[dict[str, Any] | None] = field(default_factory=list)
    versions: list[str | None] = field(default_factory=list)
    done: int = 0
    failures: list[Failure] = field(default_factory=list)
    # per row, the raw input it was encoded from (kept by collections with keep_sources); None: unknown
    sources: list[KeptSource | None] | None = None
    thumbnails: list[Thumbnail | None] | None = None  # per row, the console's picture (image rows)

    @property
    def items(self) -> int:
        return self.done + len(self.failures)


def public_view(job: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """The API's answer: state, counts, a rate and an ETA from real counts, the first errors."""
    now = time.time() if now is None else now
    done, failed = int(job.get("done", 0)), int(job.get("failed", 0))
    processed, total = done + failed, job.get("total")
    state = job["state"]
    rate: float | None = job.get("items_per_s")
    if state == "running" and job.get("run_started_at"):
        # Rate of this run only: a resumed job counts from where it resumed, not from zero.
        elapsed = now - float(job["run_started_at"])
        since = processed - int(job.get("run_started_processed", 0))
        rate = since / elapsed if elapsed > 0 and since > 0 else None
    eta: float | None = None
    if state == "running" and total is not None and rate:
        eta = max(0.0, (int(total) - processed) / rate)
    elif state in TERMINAL:
        eta = 0.0
    return {
        "id": job["id"],
        "collection": job["collection"],
        "source": job["source"],
        "options": job.get("options", {}),
        "runner": job.get("runner"),
        "state": state,
        "total": total,
        "done": done,
        "failed": failed,
        "items_per_s": None if rate is None else round(rate, 2),
        "eta_s": None if eta is None else round(eta, 1),
        "errors": job.get("errors", []),
        "dead_letters": int(job.get("dead_letters", 0)),
        "message": job.get("message"),
        "created_at": job.get("created_at"),
        "started_at": job.get("started_at"),
        "finished_at": job.get("finished_at"),
    }
