"""A collection: write-ahead log (truth) -> metadata store + FAISS index (both derived).

Write path (serialised per collection): validate -> append + fsync the log record -> apply it to the
store (atomically with the store's applied offset) -> apply it to the index and the in-memory maps
-> acknowledge. ``_catch_up`` replays whatever the store or index has not applied, so a write whose
store step failed (Redis down) is applied before the next one, and a restart after ``kill -9``
replays the tail after the last snapshot.

The index is split in segments, one per encoder version (``indexer.segments``); every record is
applied to each segment whose index has not seen it yet.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from indexer.errors import CollectionNotFound, InvalidInput, ItemNotFound, LimitExceeded, StoreMismatch
from indexer.filters import PayloadIndex, validate_filter
from indexer.index_policy import IndexOptions, IndexPolicy
from indexer.kept_sources import SOURCES_DIR, KeptSource, KeptSources
from indexer.locks import RWLock
from indexer.records import MAX_ITEMS_PER_RECORD, LogRecord, decode, encode
from indexer.segments import (
    STATE_NAMESPACE,
    CompatResolver,
    EncoderState,
    SameDimCompat,
    Segment,
    apply_to_segment,
    known_segment_dirs,
    merge_by_score,
    segment_directory,
    write_segment_meta,
)
from indexer.store.base import MetadataStore
from indexer.types import CollectionConfig, FloatArray, ItemRecord
from indexer.validation import as_matrix, check_ids
from indexer.vector_index import VectorIndex, prepare
from indexer.wal import HEADER, WriteAheadLog

log = logging.getLogger(__name__)


@dataclass
class Hit:
    id: str
    score: float
    payload: dict[str, Any] | None
    encoder_version: str | None


class Collection:
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
        self._writer = threading.Lock()  # one writer at a time (FAISS add is not thread-safe)
        self._rw = RWLock()  # searches share, index/map mutations exclude
        self.id_to_int: dict[str, int] = {}
        self.int_to_id: dict[int, str] = {}
        self.payloads: dict[int, dict[str, Any] | None] = {}
        self.versions: dict[int, str | None] = {}
        self.payload_index = PayloadIndex()
        self.closed = False
        # raw inputs of embedded items, for a background backfill after a migration
        self.sources = KeptSources(directory / SOURCES_DIR) if config.keep_sources else None
        directory.mkdir(parents=True, exist_ok=True)
        self.wal = WriteAheadLog(directory / "wal", options.wal_segment_bytes)
        for item in store.iter_items(self.name):
            self._map_add(item.id, item.int_id, item.payload, item.encoder_version)
        self.store_off = store.applied_offset(self.name)
        self._check_store_matches_log()
        self.segments: dict[str | None, Segment] = {}
        for key, dim in self._segments_at_start().items():
            self.segments[key] = self._open_segment(key, dim)
        with self._writer:
            self._catch_up()

    # -- segments ----------------------------------------------------------------------------
    def segment_key(self, version: str | None) -> str | None:
        """The segment an item of ``version`` lives in (one segment when there is no encoder)."""
        return version if self.base_config.encoder is not None else None

    def _load_state(self) -> EncoderState:
        doc = self.store.get_doc(STATE_NAMESPACE, self.name)
        if doc is None:
            return EncoderState(self.base_config.encoder, self.base_config.dim)
        return EncoderState.from_json(doc)

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
        segment.policy = IndexPolicy(self, self.options, segment)
        if born_at is None:
            segment.index, segment.index_off = segment.policy.load_or_rebuild()
        else:
            segment.index, segment.index_off = segment.policy.start_empty(), born_at
        return segment

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
    def policy(self) -> IndexPolicy:
        return self.primary.policy

    @property
    def indexed(self) -> int:
        return sum(s.index.size for s in list(self.segments.values()))

    def version_counts(self) -> dict[str | None, int]:
        with self._rw.read():
            return dict(Counter(self.versions.values()))

    def set_active_encoder(self, encoder: str, dim: int, entry: dict[str, Any]) -> EncoderState:
        """Switch the query encoder (and the default version of new writes) and append ``entry``
        to the history, durably and at once: a search already past its start keeps the version it
        started with (``search(version=...)``); every later one and every later write use ``encoder``."""
        with self._writer:
            self._check_open()
            state = EncoderState(encoder, dim, [*self.state.history, entry])
            self.store.put_doc(STATE_NAMESPACE, self.name, state.to_json())
            self.state = state
            self.config = replace(self.base_config, encoder=encoder, dim=dim)
            return state

    def _check_store_matches_log(self) -> None:
        # New writes take FAISS ids from log offsets: a store ahead of the log would hand out ids
        # that already exist, and a store behind a truncated log cannot be caught up.
        if self.store_off > self.wal.end_offset:
            raise StoreMismatch(
                f"collection '{self.name}': the metadata store has applied log offset {self.store_off} but "
                f"the log in {self.wal.directory} ends at {self.wal.end_offset}; this data directory does not "
                "belong to this metadata store (check ERS_DATA_DIR, ERS_REDIS_URL, ERS_REDIS_PREFIX)"
            )
        if self.store_off < self.wal.start_offset:
            raise StoreMismatch(
                f"collection '{self.name}': the metadata store is at log offset {self.store_off} but the log "
                f"starts at {self.wal.start_offset}; the store lost data (restore it from a backup)"
            )

    # -- in-memory maps ----------------------------------------------------------------------
    def _map_add(self, item_id: str, int_id: int, payload: dict[str, Any] | None, version: str | None) -> None:
        self.id_to_int[item_id] = int_id
        self.int_to_id[int_id] = item_id
        self.payloads[int_id] = payload
        self.versions[int_id] = version
        self.payload_index.add(int_id, payload)

    def _map_remove(self, item_id: str) -> None:
        int_id = self.id_to_int.pop(item_id, None)
        if int_id is not None:
            self.int_to_id.pop(int_id, None)
            self.payloads.pop(int_id, None)
            self.versions.pop(int_id, None)
            self.payload_index.remove(int_id)

    # -- applying log records ----------------------------------------------------------------
    def _catch_up(self) -> None:
        """Apply every log record the store or the index has not seen yet. Caller holds _writer."""
        start = min([self.store_off, *(s.index_off for s in self.segments.values())])
        if start >= self.wal.end_offset:
            return
        for offset, payload in self.wal.replay(start):
            end = offset + HEADER.size + len(payload)
            record = decode(payload)
            to_store = offset >= self.store_off
            if to_store:
                self._apply_store(offset, end, record)
            born = self._segments_born(offset, record)
            with self._rw.write():
                self.segments.update(born)
                if to_store:
                    self._apply_maps(offset, record)
                    self.store_off = end
                applied = [s for s in self.segments.values() if offset >= s.index_off]
                for segment in applied:
                    rows = self.rows_of(record, segment.key) if record.op == "upsert" else np.zeros(0, np.int64)
                    apply_to_segment(segment, segment.index, rows, offset, record, self.config.metric)
                    segment.index_off = end
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

    # -- public API --------------------------------------------------------------------------
    def upsert(
        self,
        ids: list[str],
        vectors: Any,
        payloads: list[dict[str, Any] | None] | None = None,
        versions: list[str | None] | None = None,
        sources: Sequence[KeptSource | None] | None = None,
        only_moving_to: str | None = None,
    ) -> int:
        """Durably upsert a batch (all or nothing); returns the number of items written.

        A collection that keeps sources keeps ``sources[i]`` for row i (durably, before the write is
        logged); a row without one drops the id's kept source: its vector was made from something else.
        ``only_moving_to`` (background backfill: re-encoded kept sources) writes only the rows whose
        item still exists with another version, decided under the writer lock — a client write or
        delete that came first wins — and refuses once the collection no longer queries with it.
        """
        check_ids(ids)
        versions = versions or [self.config.encoder] * len(ids)
        dims = {self.dim_for(v) for v in set(versions)}
        if len(dims) > 1:
            raise InvalidInput(
                f"one write holds vectors of one dimension; versions {sorted(map(str, set(versions)))} "
                f"have dims {sorted(dims)}: send them separately"
            )
        matrix = as_matrix(vectors, dims.pop())
        if len(ids) != len(matrix) or len(ids) != len(versions):
            raise InvalidInput(f"{len(ids)} ids but {len(matrix)} vectors and {len(versions)} versions")
        if sources is not None and len(sources) != len(ids):
            raise InvalidInput(f"{len(ids)} ids but {len(sources)} kept sources")
        if len(ids) > MAX_ITEMS_PER_RECORD:
            raise LimitExceeded(f"at most {MAX_ITEMS_PER_RECORD} items per write")
        payloads = payloads or [None] * len(ids)
        # The last occurrence of a repeated id wins, as if the items were sent one by one.
        last = {item_id: row for row, item_id in enumerate(ids)}
        rows = sorted(last.values())
        with self._writer:
            self._check_open()
            self._catch_up()
            if only_moving_to is not None:
                rows = self._still_to_move(ids, rows, only_moving_to)
                if not rows:
                    return 0
            elif self.sources is not None:
                self.sources.replace([ids[r] for r in rows], [sources[r] if sources else None for r in rows])
            ids = [ids[r] for r in rows]
            record = LogRecord(
                op="upsert",
                ids=ids,
                replaces=[self.id_to_int.get(i, -1) for i in ids],
                payloads=[payloads[r] for r in rows],
                versions=[versions[r] for r in rows],
                vectors=matrix[rows],
            )
            self.wal.append(encode(record))
            self._catch_up()
        for segment in list(self.segments.values()):
            segment.policy.after_write(len(ids))
        return len(ids)

    def _still_to_move(self, ids: list[str], rows: list[int], version: str) -> list[int]:
        """Rows whose item exists with a version other than ``version``. Caller holds _writer."""
        if version != self.config.encoder:
            raise InvalidInput(f"collection '{self.name}' now queries with {self.config.encoder}, not {version}: "
                               "items are no longer moved to it (rolled back or migrated again)")  # fmt: skip
        out = []
        for r in rows:
            int_id = self.id_to_int.get(ids[r])
            if int_id is not None and self.versions.get(int_id) != version:
                out.append(r)
        return out

    def delete(self, ids: list[str]) -> int:
        """Durably delete the ids that exist; returns how many did."""
        with self._writer:
            self._check_open()
            self._catch_up()
            present = list(dict.fromkeys(i for i in ids if i in self.id_to_int))
            if not present:
                return 0
            record = LogRecord("delete", present, [self.id_to_int[i] for i in present], [], [])
            self.wal.append(encode(record))
            self._catch_up()
            if self.sources is not None:  # after the log: a crash in between leaves only an unused file
                self.sources.delete(present)
        for segment in list(self.segments.values()):
            segment.policy.after_write(len(present))
        return len(present)

    def get(self, item_id: str, with_vector: bool = False) -> ItemRecord:
        with self._rw.read():
            int_id = self.id_to_int.get(item_id)
            if int_id is None:
                raise ItemNotFound(self.name, item_id)
            item = ItemRecord(item_id, int_id, None, self.payloads[int_id], self.versions[int_id])
        if with_vector:
            stored = self.store.get_item(self.name, item_id, with_vector=True)
            if stored is None:
                raise ItemNotFound(self.name, item_id)
            item.vector = stored.vector
        return item

    def vector_of(self, item_id: str) -> FloatArray:
        vector = self.get(item_id, with_vector=True).vector
        assert vector is not None
        return vector

    def query_vector_of(self, item_id: str) -> FloatArray:
        """A stored item's vector as a query of the active encoder (search by id)."""
        item = self.get(item_id, with_vector=True)
        active = self.config.encoder
        if self.segment_key(item.encoder_version) != self.segment_key(active):
            raise InvalidInput(
                f"item '{item_id}' was embedded by {item.encoder_version} but this collection now queries with "
                f"{active}; search by id works for items of the active encoder (search with the item's text or "
                "image instead, or re-embed it)"
            )
        assert item.vector is not None
        return item.vector

    def search(
        self,
        queries: Any,
        k: int,
        flt: dict[str, Any] | None = None,
        exclude: list[str | None] | None = None,
        version: str | None = None,
    ) -> list[list[Hit]]:
        """Top-``k`` hits per query row; ``exclude[i]`` drops that id from row i (search by id).

        The queries are vectors of encoder ``version`` (default: the active query encoder); each
        segment compatible with it is searched with its view of them and the hits merged by score.
        """
        if k < 1:
            raise InvalidInput("k must be at least 1")
        cfg = self.config  # one read: a concurrent migration does not change this search's version
        version = version if version is not None else cfg.encoder
        dim = cfg.dim if version == cfg.encoder else self.dim_for(version)
        matrix = as_matrix(queries, dim, "query vector")
        if flt:
            validate_filter(flt)
        extra = 1 if exclude and any(exclude) else 0
        with self._rw.read():
            allowed = None
            if flt:
                allowed = np.fromiter(self.payload_index.match(flt), dtype=np.int64)
            scores, found = self._search_segments(matrix, version, k + extra, allowed)
            results: list[list[Hit]] = []
            for row in range(len(matrix)):
                skip = exclude[row] if exclude else None
                hits = []
                for score, int_id in zip(scores[row].tolist(), found[row].tolist(), strict=True):
                    item_id = self.int_to_id.get(int_id)
                    if item_id is None or item_id == skip:
                        continue
                    hits.append(Hit(item_id, score, self.payloads[int_id], self.versions[int_id]))
                results.append(hits[:k])
        return results

    def _search_segments(
        self, matrix: FloatArray, version: str | None, k: int, allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Caller holds the read lock. One segment of the query's own version: a plain search."""
        metric = self.config.metric
        segments = list(self.segments.values())
        if len(segments) == 1 and segments[0].key == self.segment_key(version):
            return segments[0].index.search(prepare(matrix, metric), k, allowed)
        parts = []
        for segment in segments:
            if segment.index.size == 0:
                continue
            dims = self.compat.prefix(version, matrix.shape[1], segment.key, segment.dim)
            if dims is None or dims != segment.dim or dims > matrix.shape[1]:
                continue  # incompatible versions are never compared
            mine = allowed
            if allowed is not None:  # the filter's ids in this segment only (exact fallback reconstructs them)
                keys = (self.segment_key(self.versions.get(int(i))) for i in allowed)
                mine = allowed[np.fromiter((key == segment.key for key in keys), dtype=bool, count=len(allowed))]
            # prepare() renormalises the prefix for cosine: the compat view of the query
            parts.append(segment.index.search(prepare(matrix[:, :dims], metric), k, mine))
        if not parts:
            return np.full((len(matrix), k), -np.inf, np.float32), np.full((len(matrix), k), -1, np.int64)
        return merge_by_score(parts, k)

    def all_vectors(self, limit: int = 200_000) -> tuple[list[str], FloatArray]:
        """Every item's id and stored (raw) vector of the active encoder's version, from the store;
        refuses huge collections."""
        if self.count > limit:
            raise LimitExceeded(f"collection has {self.count} items; this operation handles at most {limit}")
        ids, rows = [], []
        active = self.segment_key(self.config.encoder)
        for item in self.store.iter_items(self.name, with_vectors=True):
            assert item.vector is not None
            if self.segment_key(item.encoder_version) != active:
                continue
            ids.append(item.id)
            rows.append(item.vector)
        matrix = np.vstack(rows) if rows else np.zeros((0, self.config.dim), dtype=np.float32)
        return ids, matrix.astype(np.float32)

    @property
    def count(self) -> int:
        return len(self.id_to_int)

    def stats(self) -> dict[str, Any]:
        with self._rw.read():
            return {
                "count": self.count,
                "indexed": self.indexed,
                **self.policy.describe(),
                "segments": [s.describe() for s in self.segments.values()],
                "log_offset": self.wal.end_offset,
            }

    def snapshot(self) -> None:
        for segment in list(self.segments.values()):
            segment.policy.snapshot()

    def _check_open(self) -> None:
        if self.closed:
            raise CollectionNotFound(self.name)

    def close(self, snapshot: bool = True) -> None:
        with self._writer:
            self.closed = True
        for segment in list(self.segments.values()):
            segment.policy.close(snapshot=snapshot)
        self.wal.close()
