"""A collection's derived state and how it is replayed from its write-ahead log.

The log is the truth; the metadata store, the FAISS index segments and the in-memory maps (id <->
FAISS id, payloads, versions, payload index) are derived from it. ``_catch_up`` applies every
record the store or an index segment has not applied yet: at open (after each segment is loaded
from its snapshot, or rebuilt from the store) it replays the tail a ``kill -9`` left, and after
each append it applies the new record — so a write whose store step failed (Redis down) is
applied before the next one.

``Collection`` (``indexer.collection``) adds the public operations on top; the locks and their
order are ``indexer.locks.CollectionLocks``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from indexer.errors import LogDamaged, StoreMismatch
from indexer.filters import PayloadIndex
from indexer.index_policy import IndexOptions, IndexPolicy
from indexer.kept_sources import SOURCES_DIR, KeptSources
from indexer.locks import CollectionLocks
from indexer.moved_vectors import MovedVectors
from indexer.records import LogRecord, decode
from indexer.rewritten_views import ViewCache
from indexer.segments import (
    STATE_NAMESPACE,
    CompatResolver,
    EncoderState,
    SameDimCompat,
    Segment,
    SegmentPolicy,
    apply_to_segment,
    known_segment_dirs,
    segment_directory,
    write_segment_meta,
)
from indexer.store.base import MetadataStore
from indexer.thumbnails import Thumbnails
from indexer.types import CollectionConfig, HitFields, ItemRecord
from indexer.vector_index import VectorIndex
from indexer.wal import HEADER, WriteAheadLog


class ReplayedCollection:
    """Opening a collection (recovery) and applying log records to its store, segments and maps."""

    def __init__(
        self,
        config: CollectionConfig,
        directory: Path,
        store: MetadataStore,
        options: IndexOptions,
        compat: CompatResolver | None = None,
    ):
        self.base_config = config  # as created; ``config`` follows the active query encoder
        self.name = config.name
        self.directory = directory
        self.store = store
        self.options = options
        self.compat: CompatResolver = compat or SameDimCompat()
        self.state = self._load_state()
        self.config = replace(config, encoder=self.state.active, dim=self.state.dim)
        self.locks = CollectionLocks()
        self.id_to_int: dict[str, int] = {}
        self.int_to_id: dict[int, str] = {}
        self.payloads: dict[int, dict[str, Any] | None] = {}
        self.versions: dict[int, str | None] = {}
        self.hit_fields: dict[int, HitFields] = {}  # the three above in one lookup, for the search loop
        self.payload_index = PayloadIndex()
        self.moved = MovedVectors(directory)  # old vectors a backfill replaced, for an exact rollback
        self.views = ViewCache()  # rewritten views of old segments (transform migrations): derived data
        self.closed = False
        self.deleted = False  # set by the manager's delete, under the writer lock: no more files written
        # Why the collection stopped serving when a logged record could not be applied (None: it
        # serves); the manager answers 503 with it, as for a collection quarantined at start-up.
        self.damaged: str | None = None
        # raw inputs of embedded items, for a background backfill after a migration
        self.sources = KeptSources(directory / SOURCES_DIR) if config.keep_sources else None
        self.thumbnails = Thumbnails.of(directory)  # the web console's pictures of image items
        directory.mkdir(parents=True, exist_ok=True)
        self.wal = WriteAheadLog(directory / "wal", options.wal_segment_bytes)
        self.segments: dict[str | None, Segment] = {}
        try:
            for item in store.iter_items(self.name):
                self._map_add(item.id, item.int_id, item.payload, item.encoder_version)
            self.store_off = store.applied_offset(self.name)
            self._check_store_matches_log()
            for key, dim in self._segments_at_start().items():
                self.segments[key] = self._open_segment(key, dim)
            with self.locks.writing():
                self._catch_up()
        except BaseException:
            self.wal.close()  # a collection that cannot be opened holds no file open
            raise

    # -- opening -----------------------------------------------------------------------------
    def _load_state(self) -> EncoderState:
        doc = self.store.get_doc(STATE_NAMESPACE, self.name)
        if doc is None:
            return EncoderState(self.base_config.encoder, self.base_config.dim)
        return EncoderState.from_json(doc)

    def _check_store_matches_log(self) -> None:
        # New writes take FAISS ids from log offsets: a store ahead of the log would hand out ids
        # that already exist, and a store behind a truncated log cannot be caught up.
        if self.store_off > self.wal.end_offset:
            raise StoreMismatch(
                f"collection '{self.name}': the metadata store has applied log offset {self.store_off} but "
                f"the log in {self.wal.directory} ends at {self.wal.end_offset}; either the log lost records the "
                "store holds (`ers doctor --repair` rebuilds it from the store) or this data directory does not "
                "belong to this metadata store (check ERS_DATA_DIR, ERS_REDIS_URL, ERS_REDIS_PREFIX)"
            )
        if self.store_off < self.wal.start_offset:
            raise StoreMismatch(
                f"collection '{self.name}': the metadata store is at log offset {self.store_off} but the log "
                f"starts at {self.wal.start_offset}; the store lost data (restore it from a backup)"
            )

    def _segments_at_start(self) -> dict[str | None, int]:
        """Every version with a segment directory or with items in the store, and its dimension."""
        found = {self.segment_key(self.base_config.encoder): self.base_config.dim}
        found.update(known_segment_dirs(self.directory))
        missing = {self.segment_key(v) for v in self.versions.values()} - set(found)
        if missing:  # items whose segment directory was never written (a crash): their dim from the store
            for item in self.store.iter_items(self.name, with_vectors=True):
                key = self.segment_key(item.encoder_version)
                if key in missing and item.vector is not None:
                    found[key] = len(item.vector)
                    missing.discard(key)
                    if not missing:
                        break
        return found

    def _open_segment(self, key: str | None, dim: int, born_at: int | None = None) -> Segment:
        """Load (snapshot or store) a segment, or start it empty at log offset ``born_at``."""
        segment = Segment(key, dim, segment_directory(self.directory, key, self.segment_key(self.base_config.encoder)))
        if segment.directory != self.directory:
            write_segment_meta(segment.directory, key, dim)
        policy = IndexPolicy(self, self.options, segment)
        segment.policy = policy
        if born_at is None:
            segment.index, segment.index_off = policy.load_or_rebuild()
        else:
            segment.index, segment.index_off = policy.start_empty(), born_at
        return segment

    # -- segments ----------------------------------------------------------------------------
    def segment_key(self, version: str | None) -> str | None:
        """The segment an item of ``version`` lives in (one segment when there is no encoder)."""
        return version if self.base_config.encoder is not None else None

    def rows_of(self, record: LogRecord, key: str | None) -> np.ndarray:
        """Rows of an upsert record whose vectors belong to segment ``key``."""
        if self.base_config.encoder is None:
            return np.arange(len(record.ids))
        return np.flatnonzero([self.segment_key(v) == key for v in record.versions])

    def dim_for(self, version: str | None) -> int:
        """The dimension vectors of ``version`` must have in this collection."""
        segment = self.segments.get(self.segment_key(version))
        if segment is not None:
            return segment.dim
        if version == self.config.encoder:
            return self.config.dim
        return self.compat.dim_of(version) or self.config.dim

    def truncate_log(self, store_off: int) -> None:
        """Drop log segments every reader is past: the store, and each segment's last snapshot
        (a segment without one is rebuilt from the store, so it needs no log)."""
        snaps = [s.snapshot_off for s in list(self.segments.values()) if s.snapshot_off is not None]
        self.wal.truncate_before(min([store_off, *snaps]))

    @property
    def primary(self) -> Segment:
        """The active encoder's segment (else the first): what single-index callers look at."""
        found = self.segments.get(self.segment_key(self.config.encoder))
        return found if found is not None else next(iter(self.segments.values()))

    @property
    def index(self) -> VectorIndex:
        return self.primary.index

    @property
    def policy(self) -> SegmentPolicy:
        return self.primary.policy

    @property
    def indexed(self) -> int:
        return sum(s.index.size for s in list(self.segments.values()))

    # -- in-memory maps ----------------------------------------------------------------------
    def _map_add(self, item_id: str, int_id: int, payload: dict[str, Any] | None, version: str | None) -> None:
        self.id_to_int[item_id] = int_id
        self.int_to_id[int_id] = item_id
        self.payloads[int_id] = payload
        self.versions[int_id] = version
        self.hit_fields[int_id] = (item_id, payload, version)
        self.payload_index.add(int_id, payload)

    def _map_remove(self, item_id: str) -> None:
        int_id = self.id_to_int.pop(item_id, None)
        if int_id is not None:
            self.int_to_id.pop(int_id, None)
            self.payloads.pop(int_id, None)
            self.versions.pop(int_id, None)
            self.hit_fields.pop(int_id, None)
            self.payload_index.remove(int_id)

    # -- applying log records ----------------------------------------------------------------
    def _catch_up(self) -> None:
        """Apply every log record the store or the index has not seen yet. Caller holds
        ``locks.writing()``."""
        start = min([self.store_off, *(s.index_off for s in self.segments.values())])
        if start >= self.wal.end_offset:
            return
        expected = start
        for offset, payload in self.wal.replay(start):
            if offset != expected:
                # A record skipped would leave the store and the index each with its own idea of the
                # collection (one replays it later, the other never): stop loudly instead.
                raise LogDamaged(f"log replay of '{self.name}' jumped from offset {expected} to {offset}")
            end = expected = offset + HEADER.size + len(payload)
            record = decode(payload)
            to_store = offset >= self.store_off
            born = self._segments_born(offset, record)  # before the store: a failure here applies nothing
            if to_store:
                self._apply_store(offset, end, record)
            with self.locks.mutating():
                self.segments.update(born)
                if to_store:
                    self._apply_maps(offset, record)
                    self.store_off = end
                applied = [s for s in self.segments.values() if offset >= s.index_off]
                for segment in applied:
                    rows = self.rows_of(record, segment.key) if record.op == "upsert" else np.zeros(0, np.int64)
                    apply_to_segment(segment, segment.index, rows, offset, record, self.config.metric)
                    segment.index_off = end
                    if self.views.views and len(rows) and record.vectors is not None:
                        int_ids, vectors = record.int_ids(offset)[rows], record.vectors[rows]
                        # keeps each rewritten view complete as its segment grows (a restore, old-version writes)
                        self.views.extend(segment.key, int_ids, vectors, self.compat.rewriter)
            for segment in applied:
                segment.policy.observe(offset, record)

    def _segments_born(self, offset: int, record: LogRecord) -> dict[str | None, Segment]:
        """New segments for versions this upsert writes first (empty, starting at this record);
        published with the record, under the index lock."""
        if record.op != "upsert" or record.vectors is None:
            return {}
        born: dict[str | None, Segment] = {}
        for key in {self.segment_key(v) for v in record.versions} - set(self.segments):
            born[key] = self._open_segment(key, int(record.vectors.shape[1]), born_at=offset)
        return born

    def _apply_store(self, offset: int, end: int, record: LogRecord) -> None:
        if record.op == "upsert":
            assert record.vectors is not None
            ups = [
                ItemRecord(i, int(n), record.vectors[row], record.payloads[row], record.versions[row])
                for row, (i, n) in enumerate(zip(record.ids, record.int_ids(offset), strict=True))
            ]
            self.store.apply(self.name, ups, [], end)
        else:
            self.store.apply(self.name, [], record.ids, end)

    def _apply_maps(self, offset: int, record: LogRecord) -> None:
        for item_id in record.ids:
            self._map_remove(item_id)
        if record.op == "upsert":
            for row, (item_id, int_id) in enumerate(zip(record.ids, record.int_ids(offset), strict=True)):
                self._map_add(item_id, int(int_id), record.payloads[row], record.versions[row])
