"""Vectors a background backfill replaced, kept so that a rollback restores them exactly.

A backfill moves an item to the new encoder's version by rewriting its vector (``Collection.upsert(...,
only_moving_to=...)``). Before that write is logged, the item's old vector, version and the FAISS id the
move will give it are published here, one durable file per batch (``moved/<job>/<seq>.npz``: temp ->
fsync -> ``os.replace`` -> fsync dir; no pickle). A rollback (``indexer.upgrade.migrations``) writes the
old vectors back with ``only_moving_to=<old version>``, but only for items whose FAISS id is still the one
the move gave them: an item a client rewrote or deleted since keeps the client's write. A batch whose log
write failed (or a crash between the two) leaves entries whose ids never existed; they are skipped.
"""

from __future__ import annotations

import io
import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexer.types import FloatArray
from models.core.durable import atomic_write_bytes, fsync_dir

MOVED_DIR = "moved"
META = "meta.json"
JOB_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # job ids are uuid hex: never a path component otherwise


@dataclass
class MovedBatch:
    ids: list[str]
    moved_int_ids: np.ndarray  # (n,) the FAISS id each item got from the move
    versions: list[str | None]  # the version each item had before
    vectors: FloatArray  # (n, d) the vector each item had before


class MovedVectors:
    """The archive of one collection (``<collection dir>/moved``)."""

    def __init__(self, collection_dir: Path) -> None:
        self.root = collection_dir / MOVED_DIR

    def _job_dir(self, job: str) -> Path:
        if not JOB_RE.match(job):
            raise ValueError(f"not a job id: {job!r}")
        return self.root / job

    def keep(self, job: str, to: str, name: str, batch: MovedBatch) -> None:
        """Publish one batch durably (before the move is logged)."""
        directory = self._job_dir(job)
        if not (directory / META).exists():
            directory.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(directory / META, json.dumps({"to": to}).encode())
            fsync_dir(self.root)
        buffer = io.BytesIO()
        np.savez(
            buffer,
            ids=np.asarray(batch.ids, dtype=np.str_),
            moved=np.asarray(batch.moved_int_ids, dtype=np.int64),
            versions=np.asarray(["" if v is None else v for v in batch.versions], dtype=np.str_),
            unversioned=np.asarray([v is None for v in batch.versions], dtype=bool),
            vectors=np.asarray(batch.vectors, dtype=np.float32),
        )
        atomic_write_bytes(directory / f"{name}.npz", buffer.getvalue())

    def jobs_moving_to(self, to: str) -> list[str]:
        """The archived backfill jobs that moved items to ``to``, oldest file first."""
        if not self.root.is_dir():
            return []
        found = []
        for meta in self.root.glob(f"*/{META}"):
            try:
                if json.loads(meta.read_text()).get("to") == to:
                    found.append((meta.stat().st_mtime, meta.parent.name))
            except (OSError, ValueError):
                continue
        return [job for _, job in sorted(found)]

    def batches(self, job: str) -> Iterator[MovedBatch]:
        for path in sorted(self._job_dir(job).glob("*.npz")):
            with np.load(path, allow_pickle=False) as data:
                versions = [None if none else str(v) for v, none in zip(data["versions"], data["unversioned"],
                                                                         strict=True)]  # fmt: skip
                yield MovedBatch([str(i) for i in data["ids"]], data["moved"], versions, data["vectors"])

    def count(self, job: str) -> int:
        return sum(len(b.ids) for b in self.batches(job))

    def drop(self, job: str) -> None:
        directory = self._job_dir(job)
        if directory.exists():
            shutil.rmtree(directory)
            fsync_dir(self.root)
