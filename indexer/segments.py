"""Mixed-version collections: one index segment per encoder version.

Every stored vector carries the encoder version that made it. A collection bound to an encoder keeps
one FAISS index (a *segment*) per version, each with its own dimension, auto index policy and
snapshot: the first version's segment lives in the collection directory itself (so collections
written before segments existed open unchanged), later ones under ``segments/<hash of the version>/``
beside a ``segment.json`` naming the version and its dimension. A collection without an encoder has
one segment (key ``None``): its items' version labels are metadata only, as before.

A search with the active query encoder asks each segment with the right view of the query: the full
vector for its own version, the first ``compat_dims`` dims (renormalised by ``prepare`` for cosine)
for an older version it is compatible with — transitively, v3 -> v2 -> v1 — and nothing for an
incompatible one. The hits are merged by score. Which versions are compatible is the resolver's
business (``CompatResolver``); the service answers from the encoders' specs.

The collection's *active* query encoder (and its dimension, and the migration history) is a small
document in the metadata store (``STATE_NAMESPACE``), written in one atomic ``put_doc``: the
collection's creation config stays immutable, and a restart comes back on the encoder last switched to.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from indexer.records import LogRecord
from indexer.types import Metric
from indexer.vector_index import VectorIndex, prepare
from models.core.durable import atomic_write_bytes

log = logging.getLogger(__name__)
STATE_NAMESPACE = "ers-encoder-state"
EVAL_NAMESPACE = "ers-eval-sets"  # a collection's labelled evaluation set (indexer.upgrade)
SEGMENTS_DIR = "segments"
SEGMENT_META = "segment.json"


class CompatResolver(Protocol):
    """Which segments a query of one encoder version may be compared with, and on how many dims."""

    def prefix(self, query: str | None, query_dim: int, segment: str | None, segment_dim: int) -> int | None:
        """Leading dims of the query to compare with this segment's vectors, or None: never compare."""

    def dim_of(self, version: str | None) -> int | None:
        """The dimension vectors of ``version`` have, when known (from its spec)."""

    def rewriter(self, query: str | None, segment: str | None) -> Callable[[np.ndarray], np.ndarray] | None:
        """A map of this segment's stored vectors into the query version's space, when a ``transform``
        migration fitted one (``indexer.rewritten_views``); None otherwise."""


class SameDimCompat:
    """Without spec information (an indexer used on its own): equal versions, or equal dimensions,
    compare in full — the behaviour collections had before segments. The service replaces it with
    a resolver that follows the specs' ``compatible_with`` chains."""

    def prefix(self, query: str | None, query_dim: int, segment: str | None, segment_dim: int) -> int | None:
        return segment_dim if query == segment or query_dim == segment_dim else None

    def dim_of(self, version: str | None) -> int | None:
        return None

    def rewriter(self, query: str | None, segment: str | None) -> Callable[[np.ndarray], np.ndarray] | None:
        return None


class SegmentPolicy(Protocol):
    """What a segment's index policy (``indexer.index_policy.IndexPolicy``) does for the collection
    once the segment is open; named here so that segments need not import the policy that uses them."""

    def observe(self, offset: int, record: LogRecord) -> None:
        """Called under the writer lock for every record applied to the segment's live index."""

    def after_write(self, n: int) -> None:
        """Called after each write of ``n`` items, outside the writer lock: snapshot or rebuild when due."""

    def snapshot(self) -> None: ...

    def snapshots_held(self) -> AbstractContextManager[None]:
        """While held, no snapshot file of the segment is being written (taken before the writer lock)."""

    def describe(self) -> dict[str, Any]: ...

    def close(self, snapshot: bool) -> None: ...


@dataclass
class Segment:
    key: str | None  # encoder version of every vector in it (None: a collection without encoder)
    dim: int
    directory: Path
    index: VectorIndex = field(init=False)
    index_off: int = 0  # log offset up to which this segment's index has applied records
    snapshot_off: int | None = None  # offset of its last published snapshot (None: rebuilt from the store)
    policy: SegmentPolicy = field(init=False)

    def describe(self) -> dict[str, Any]:
        return {"encoder_version": self.key, "dim": self.dim, "indexed": self.index.size, **self.policy.describe()}


def segment_directory(root: Path, key: str | None, base_key: str | None) -> Path:
    """The collection directory for the first version; a hashed sub-directory for every other one
    (versions are client-supplied labels: never use one as a path)."""
    if key == base_key:
        return root
    digest = hashlib.sha256((key or "").encode()).hexdigest()[:20]
    return root / SEGMENTS_DIR / digest


def write_segment_meta(directory: Path, key: str | None, dim: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(directory / SEGMENT_META, json.dumps({"encoder_version": key, "dim": dim}).encode())


def known_segment_dirs(root: Path) -> dict[str | None, int]:
    """Versions (and their dims) of the segment directories on disk."""
    found: dict[str | None, int] = {}
    base = root / SEGMENTS_DIR
    if not base.is_dir():
        return found
    for meta in sorted(base.glob(f"*/{SEGMENT_META}")):
        try:
            doc = json.loads(meta.read_text())
            found[doc["encoder_version"]] = int(doc["dim"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable %s (%s); the segment is rebuilt from the store", meta, exc)
    return found


def apply_to_segment(
    segment: Segment,
    index: VectorIndex,
    rows: np.ndarray,
    offset: int,
    record: LogRecord,
    metric: Metric,
    present: set[int] | None = None,
) -> None:
    """Apply one log record to one segment's ``index``: ``rows`` are the record's rows whose
    version belongs to this segment (an upsert that moves an item to a new version removes it from
    its old segment here, and adds it to the new one there).

    ``present`` (used when catching a freshly built index up) is the set of ids the index already
    holds; it makes the replay idempotent without asking FAISS to delete ids it never had (which an
    HNSW index could only record as tombstones).
    """
    if record.op == "delete":
        gone = [r for r in record.replaces if present is None or r in present]
        index.remove(np.asarray(gone, dtype=np.int64))
        if present is not None:
            present.difference_update(gone)
        return
    assert record.vectors is not None
    old = [r for r in record.replaces if r >= 0 and (present is None or r in present)]
    index.remove(np.asarray(old, dtype=np.int64))
    if present is not None:
        present.difference_update(old)
    if not len(rows):
        return
    int_ids = record.int_ids(offset)[rows]
    keep = np.ones(len(int_ids), dtype=bool)
    if present is not None:
        keep = np.fromiter((int(i) not in present for i in int_ids), dtype=bool, count=len(int_ids))
        present.update(int(i) for i in int_ids)
    if record.vectors.shape[1] != segment.dim:
        # Upserts are validated against the segment's dim; this is a log written otherwise.
        log.error("record at %d has %d-d vectors for the %d-d segment %s; skipped",
                  offset, record.vectors.shape[1], segment.dim, segment.key)  # fmt: skip
        return
    index.add(int_ids[keep], prepare(record.vectors[rows][keep], metric))


def merge_by_score(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per query row, the ``k`` best (score, id) pairs over several segments' answers."""
    if len(parts) == 1:
        return parts[0]
    scores = np.concatenate([s for s, _ in parts], axis=1)
    ids = np.concatenate([i for _, i in parts], axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)


@dataclass
class EncoderState:
    """The active query encoder of a collection, its vectors' dimension and the migration history."""

    active: str | None
    dim: int
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"active": self.active, "dim": self.dim, "history": self.history}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> EncoderState:
        return cls(active=doc.get("active"), dim=int(doc["dim"]), history=list(doc.get("history", [])))
