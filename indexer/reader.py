"""Read-only views of the collections another process owns: the readers of ``ers serve --workers N``.

A ``ReaderCollection`` is what the writer's ``Collection`` is to a search — same maps, same segments,
same ``collection_search.search`` — built without writing anything in the data directory:

- the maps (id <-> FAISS id, payloads, versions, payload index) from the store, then the log records
  from the store's applied offset read *before* the items (the items may be newer than that offset;
  replaying a record an item already reflects leaves the same item, so the result is exact);
- each index segment from its published snapshot (``load_snapshot``, without tidying; a flat or HNSW
  one mapped from its file and shared with the other processes, ``indexer.mapped_index``), or — when there
  is none — an exact flat index over the store's vectors, made idempotent against the replay by the
  set of ids it already holds (as the writer's rebuild does);
- then, polled every few ms, the log tail: records up to the store's applied offset (the writer logs,
  then applies to the store, then acknowledges), so every id a reader returns is in the store.

``position`` is the log offset the view has applied up to; a write's ``X-ERS-Position`` names the
offset a view must reach to show it. A newer snapshot of another kind (an IVF index built, tombstones
dropped, other search parameters), or a periodic one once a mapped view's overlay of newer rows has grown
past ``OVERLAY_SWITCH_ROWS``, replaces the view's index once caught up to the same offset; a view
that fell behind the log's truncation, or whose collection was deleted or recreated, is rebuilt.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from indexer.collection import Collection
from indexer.errors import ReadOnlyView
from indexer.filters import PayloadIndex
from indexer.index_policy import IndexOptions
from indexer.locks import CollectionLocks
from indexer.mapped_index import OVERLAY_SWITCH_ROWS, MappedIndex
from indexer.reader_store import LogTail, LogTruncated
from indexer.records import LogRecord, decode
from indexer.rewritten_views import ViewCache
from indexer.segments import CompatResolver, SameDimCompat, Segment, apply_to_segment, segment_directory
from indexer.snapshot import META, SnapshotMeta, load_snapshot
from indexer.store.base import MetadataStore
from indexer.types import CollectionConfig, HitFields
from indexer.vector_index import FLAT, VectorIndex, prepare
from indexer.wal import HEADER

log = logging.getLogger(__name__)
# Snapshot fields that say nothing about the index's kind: a snapshot that differs only in them is a
# periodic one of the index the view already has (it is not worth deserialising).
ROUTINE_FIELDS = ("offset", "file", "built_n", "dead")


class ReaderCollection(Collection):
    """A collection's read-only view: the search API of ``Collection``, its writes refused."""

    def __init__(
        self, config: CollectionConfig, directory: Path, store: MetadataStore, compat: CompatResolver | None = None
    ) -> None:
        # Not ReplayedCollection.__init__: that one opens the log for appending and recovers it.
        self.base_config = config
        self.name = config.name
        self.directory = directory
        self.store = store
        self.options = IndexOptions()
        self.compat = compat or SameDimCompat()
        self.state = self._load_state()
        self.config = replace(config, encoder=self.state.active, dim=self.state.dim)
        self.locks = CollectionLocks()
        self.id_to_int: dict[str, int] = {}
        self.int_to_id: dict[int, str] = {}
        self.payloads: dict[int, dict[str, Any] | None] = {}
        self.versions: dict[int, str | None] = {}
        self.hit_fields: dict[int, HitFields] = {}
        self.payload_index = PayloadIndex()
        self.views = ViewCache()
        self.closed = self.deleted = False
        self.damaged: str | None = None
        self.sources = None
        self.segments: dict[str | None, Segment] = {}
        self.tail = LogTail(directory / "wal")
        self._maps_off = 0  # records from here on are applied to the maps (the store read began here)
        self._present: dict[str | None, set[int]] = {}  # ids of store-built segments (replay idempotence)
        self._snapshot_seen: dict[str | None, tuple[int, int, int] | None] = {}
        self._kinds: dict[str | None, dict[str, Any]] = {}  # what each segment's index is (snapshot meta)
        self.position = 0
        self._open()

    # -- opening -----------------------------------------------------------------------------
    def _open(self) -> None:
        self._maps_off = self.store.applied_offset(self.name)
        for item in self.store.iter_items(self.name):
            self._map_add(item.id, item.int_id, item.payload, item.encoder_version)
        base_key = self.segment_key(self.base_config.encoder)
        for key, dim in self._segments_at_start().items():
            directory = segment_directory(self.directory, key, base_key)
            segment = Segment(key, dim, directory)
            self._snapshot_seen[key] = _stamp(directory)
            found = _readable(load_snapshot(directory, dim, self.config.metric, tidy=False, mapped=True))
            if found is not None:
                segment.index, segment.index_off = found[0], found[1].offset
                segment.snapshot_off = found[1].offset
                self._kinds[key] = _significant(asdict(found[1]))
            else:
                segment.index, segment.index_off = self._from_store(key, dim), self._maps_off
            self.segments[key] = segment
        self.position = min([self._maps_off, *(s.index_off for s in self.segments.values())])
        self.catch_up()
        self._present.clear()  # past the store read: every later record is new to every segment

    def _from_store(self, key: str | None, dim: int) -> VectorIndex:
        """An exact index over the store's vectors of segment ``key`` (read after ``_maps_off``)."""
        ids: list[int] = []
        rows: list[np.ndarray] = []
        for item in self.store.iter_items(self.name, with_vectors=True):
            if self.segment_key(item.encoder_version) == key and item.vector is not None and len(item.vector) == dim:
                ids.append(item.int_id)
                rows.append(item.vector)
        index = VectorIndex(dim, self.config.metric, FLAT)
        if rows:
            index.add(np.asarray(ids, dtype=np.int64), prepare(np.vstack(rows), self.config.metric))
        self._present[key] = set(ids)
        return index

    # -- following the log -------------------------------------------------------------------
    def has_news(self) -> bool:
        """Whether the log grew past the view (a ``stat`` or two)."""
        return self.tail.end() > self.position

    def catch_up(self) -> int:
        """Apply the records the store has applied and the view has not; returns how many."""
        limit = self.store.applied_offset(self.name)
        applied = 0
        for offset, payload in self.tail.read(self.position, limit):
            self._apply(offset, offset + HEADER.size + len(payload), decode(payload))
            applied += 1
        return applied

    def _apply(self, offset: int, end: int, record: LogRecord) -> None:
        """One record to the maps and every segment that has not seen it (``_catch_up``'s order)."""
        born: dict[str | None, Segment] = {}
        if record.op == "upsert" and record.vectors is not None:
            base_key = self.segment_key(self.base_config.encoder)
            for key in {self.segment_key(v) for v in record.versions} - set(self.segments):
                dim = int(record.vectors.shape[1])
                segment = Segment(key, dim, segment_directory(self.directory, key, base_key))
                segment.index, segment.index_off = VectorIndex(dim, self.config.metric, FLAT), offset
                born[key] = segment
        with self.locks.mutating():
            self.segments.update(born)
            if offset >= self._maps_off:
                self._apply_maps(offset, record)
            for segment in self.segments.values():
                if offset < segment.index_off:
                    continue
                rows = self.rows_of(record, segment.key) if record.op == "upsert" else np.zeros(0, np.int64)
                present = self._present.get(segment.key)
                apply_to_segment(segment, segment.index, rows, offset, record, self.config.metric, present)
                segment.index_off = end
                if self.views.views and len(rows) and record.vectors is not None:
                    int_ids, vectors = record.int_ids(offset)[rows], record.vectors[rows]
                    self.views.extend(segment.key, int_ids, vectors, self.compat.rewriter)
            self.position = max(self.position, end)

    # -- newer state the writer published ----------------------------------------------------
    def follow_state(self) -> None:
        """The active query encoder (a migration switches it in the store, not in the log)."""
        state = self._load_state()
        if state.to_json() != self.state.to_json():
            self.state = state
            self.config = replace(self.base_config, encoder=state.active, dim=state.dim)

    def follow_snapshots(self) -> None:
        """Replace a segment's index by a newer published snapshot of another kind (``ROUTINE_FIELDS``)."""
        for segment in list(self.segments.values()):
            stamp = _stamp(segment.directory)
            if stamp is None or stamp == self._snapshot_seen.get(segment.key):
                continue
            kind, dead = _kind(segment.directory)
            mapped = segment.index if isinstance(segment.index, MappedIndex) else None
            known = mapped.snapshot_dead if mapped is not None else len(segment.index.dead)
            routine = kind is not None and kind == self._kinds.get(segment.key) and dead >= known
            overlay = mapped.overlay_rows if mapped is not None else None
            if routine and (overlay is None or overlay <= OVERLAY_SWITCH_ROWS):
                if overlay is None:  # a copied index took the tail's rows itself: nothing to gain
                    self._snapshot_seen[segment.key] = stamp  # a periodic snapshot of the index the view has
                continue  # a mapped one looks again once its overlay has grown
            metric = self.config.metric
            found = _readable(load_snapshot(segment.directory, segment.dim, metric, tidy=False, mapped=True))
            if found is None:
                continue  # replaced meanwhile (its file is gone): the next poll reads the newer one
            index, meta = found
            if meta.offset > self.position:
                self.catch_up()  # the store is past any snapshot's offset: the view reaches it
                if meta.offset > self.position:
                    continue
            self._replay_onto(segment, index, meta.offset)
            with self.locks.mutating():
                segment.index, segment.snapshot_off = index, meta.offset
            self._snapshot_seen[segment.key] = stamp
            self._kinds[segment.key] = _significant(asdict(meta))
            log.info("collection %s: view switched to the %s snapshot at %d", self.name, meta.spec, meta.offset)

    def _replay_onto(self, segment: Segment, index: VectorIndex, start: int) -> None:
        """Bring a fresh snapshot's index from its offset to the view's (only this thread advances it)."""
        for offset, payload in self.tail.read(start, self.position):
            record = decode(payload)
            rows = self.rows_of(record, segment.key) if record.op == "upsert" else np.zeros(0, np.int64)
            apply_to_segment(segment, index, rows, offset, record, self.config.metric)

    # -- writes are the writer's -------------------------------------------------------------
    def _refuse(self) -> NoReturn:
        raise ReadOnlyView(self.name)

    def upsert(self, *args: Any, **kwargs: Any) -> int:  # type: ignore[override]
        self._refuse()

    def delete(self, *args: Any, **kwargs: Any) -> int:  # type: ignore[override]
        self._refuse()

    def set_active_encoder(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        self._refuse()

    def snapshot(self) -> None:
        self._refuse()

    def close(self, snapshot: bool = True) -> None:
        self.closed = True


def _readable(found: tuple[VectorIndex, SnapshotMeta] | None) -> tuple[VectorIndex, SnapshotMeta] | None:
    """A snapshot the view can extend without writing. ``load_snapshot(tidy=False)`` opens a re-ranked
    index's exact-vector files read-only (the tail's rows stay in this process), so every one is."""
    if found is not None and found[0].exact is not None and not found[0].exact.read_only:
        return None
    return found


def _stamp(directory: Path) -> tuple[int, int, int] | None:
    """Identity of a segment's published snapshot meta (rewritten atomically: a new inode each time)."""
    try:
        st = os.stat(directory / META)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _significant(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in meta.items() if k not in ROUTINE_FIELDS}


def _kind(directory: Path) -> tuple[dict[str, Any] | None, int]:
    """What kind of index a segment's published snapshot holds (its meta without ``ROUTINE_FIELDS``),
    and how many tombstones it has."""
    try:
        meta = dict(json.loads((directory / META).read_text()))
        return _significant(meta), len(meta.get("dead") or ())
    except (OSError, ValueError, TypeError):
        return None, 0


__all__ = ["LogTruncated", "ReadOnlyView", "ReaderCollection"]
