"""A collection: write-ahead log (truth) -> metadata store + FAISS index segments (both derived).

Write path (serialised per collection by the writer lock): validate -> append + fsync the log
record -> apply it to the store (atomically with the store's applied offset) -> apply it to the
index segments and the in-memory maps -> acknowledge. Opening a collection and applying records is
``indexer.collection_replay``; the read path is ``indexer.collection_search``; which lock guards
what, and their order, is ``indexer.locks.CollectionLocks``.

The index is split in segments, one per encoder version (``indexer.segments``); every record is
applied to each segment whose index has not seen it yet.
"""

from __future__ import annotations

import logging
import struct
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from indexer import collection_search
from indexer.collection_replay import ReplayedCollection
from indexer.collection_search import Hit
from indexer.errors import (
    CollectionNotFound,
    CollectionQuarantined,
    InsufficientStorage,
    InvalidInput,
    ItemNotFound,
    LimitExceeded,
    LogDamaged,
)
from indexer.kept_sources import KeptSource
from indexer.moved_vectors import MovedBatch
from indexer.records import ITEM_BITS, MAX_ITEMS_PER_RECORD, LogRecord, encode
from indexer.segments import STATE_NAMESPACE, EncoderState
from indexer.thumbnails import Thumbnail
from indexer.types import FloatArray, ItemRecord
from indexer.validation import as_matrix, check_ids
from indexer.wal import refused_when_disk_full
from models.core.errors import ERSError

__all__ = ["Collection", "Hit"]
log = logging.getLogger(__name__)
# What applying an intact log record raises when the record itself cannot be applied (undecodable,
# values the maps or the index refuse): the collection is damaged, not the store or the disk.
UNAPPLICABLE = (LogDamaged, ValueError, TypeError, KeyError, IndexError, OverflowError, RuntimeError,
                AssertionError, struct.error)  # fmt: skip


class Collection(ReplayedCollection):
    """The public operations of a collection: durable writes, reads, search, snapshots."""

    # -- writes ------------------------------------------------------------------------------
    def upsert(
        self,
        ids: list[str],
        vectors: Any,
        payloads: list[dict[str, Any] | None] | None = None,
        versions: list[str | None] | None = None,
        sources: Sequence[KeptSource | None] | None = None,
        only_moving_to: str | None = None,
        thumbnails: Sequence[Thumbnail | None] | None = None,
        archive_as: tuple[str, int] | None = None,
        expected: Sequence[int] | None = None,
    ) -> int:
        """Durably upsert a batch (all or nothing); returns the number of items written.

        A collection that keeps sources keeps ``sources[i]`` for row i (durably, before the write is
        logged); a row without one drops the id's kept source: its vector was made from something else.
        ``only_moving_to`` (background backfill: re-encoded kept sources) writes only the rows whose
        item still exists with another version, decided under the writer lock — a client write or
        delete that came first wins — and refuses once the collection no longer queries with it.
        ``thumbnails[i]`` is row i's picture for the web console (None drops a stale one); they are
        written after the log, under the writer lock so the last write of an id keeps its picture.
        ``archive_as`` (job id, batch seq), with ``only_moving_to``: the moved items' old vectors are kept
        first (``indexer.moved_vectors``) so that a rollback can restore them. ``expected[i]``, with
        ``only_moving_to``: row i is written only while its item still has that FAISS id (a restore).
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
        with self.locks.writing():
            self._check_open()
            self._apply_logged()
            if only_moving_to is not None:
                rows = self._still_to_move(ids, rows, only_moving_to, restoring=expected is not None)
                if expected is not None:
                    rows = [r for r in rows if self.id_to_int.get(ids[r]) == expected[r]]
                if not rows:
                    return 0
                if archive_as is not None:
                    self._archive_moves([ids[r] for r in rows], only_moving_to, archive_as)
            ids = [ids[r] for r in rows]
            record = LogRecord(
                op="upsert",
                ids=ids,
                replaces=[self.id_to_int.get(i, -1) for i in ids],
                payloads=[payloads[r] for r in rows],
                versions=[versions[r] for r in rows],
                vectors=matrix[rows],
            )
            data = encode(record)
            previous = None
            if self.sources is not None and only_moving_to is None:
                previous = [self.sources.get(i) for i in ids]
                with refused_when_disk_full(f"keeping the sources of a write to '{self.name}'"):
                    self.sources.replace(ids, [sources[r] if sources else None for r in rows])
            logged_end = self.wal.end_offset
            try:
                self._log_and_apply(data)
            except BaseException:
                if previous is not None and self.wal.end_offset == logged_end:  # not logged, or withdrawn
                    self._restore_sources(ids, previous)
                raise
            if only_moving_to is None:  # a backfill re-encodes the same input: the picture stands
                self._keep_thumbnails(ids, [thumbnails[r] for r in rows] if thumbnails is not None else None)
        for segment in list(self.segments.values()):
            segment.policy.after_write(len(ids))
        return len(ids)

    def _archive_moves(self, ids: list[str], to: str, archive_as: tuple[str, int]) -> None:
        """Keep the current vectors of items about to move (caller holds ``locks.writing()``); the ids
        the move gives them are the next record's (``LogRecord.int_ids`` at the log's end)."""
        vectors, versions = [], []
        for item_id in ids:
            stored = self.store.get_item(self.name, item_id, with_vector=True)
            assert stored is not None and stored.vector is not None  # present: checked by _still_to_move
            vectors.append(stored.vector)
            versions.append(self.versions[self.id_to_int[item_id]])
        offset = np.int64(self.wal.end_offset)
        moved = (offset << np.int64(ITEM_BITS)) | np.arange(len(ids), dtype=np.int64)
        for dim in sorted({len(v) for v in vectors}):  # one file per width (versions may differ)
            pick = [i for i, v in enumerate(vectors) if len(v) == dim]
            batch = MovedBatch([ids[i] for i in pick], moved[pick], [versions[i] for i in pick],
                               np.vstack([vectors[i] for i in pick]).astype(np.float32))  # fmt: skip
            self.moved.keep(archive_as[0], to, f"{archive_as[1]:010d}-{dim}", batch)

    def _keep_thumbnails(self, ids: list[str], thumbnails: list[Thumbnail | None] | None) -> None:
        """Pictures are derived, cosmetic data: the write is acknowledged whatever happens here (a full
        disk leaves the item without one, which the console shows as a placeholder)."""
        if not any(thumbnails or ()) and not self.thumbnails.directory.exists():
            return  # no pictures, and a collection that never held one: nothing to write or drop
        try:
            self.thumbnails.write_many(ids, thumbnails or [None] * len(ids))
        except (OSError, ERSError) as exc:
            log.warning("collection %s: thumbnails of %d items not kept: %s", self.name, len(ids), exc)

    def _log_and_apply(self, data: bytes) -> None:
        """Append one record (the acknowledgement point) and apply it. Caller holds ``locks.writing()``.

        A full disk refuses the write with nothing of it kept: the log cuts a failed append back
        itself, and a record whose store step was refused without effect is withdrawn from the log.
        """
        offset = self.wal.append(data)
        try:
            self._apply_logged()
        except InsufficientStorage:
            try:
                if self.store_off == offset and self.store.applied_offset(self.name) == offset:
                    self.wal.withdraw(offset)  # nothing applied it: the write is undone, as answered
            except Exception:  # it stays logged and is applied by the next write, as after a store outage
                log.exception("collection %s: could not withdraw the refused record at %d", self.name, offset)
            raise

    def _apply_logged(self) -> None:
        """``_catch_up`` for a write. A full disk or an unreachable store is retried by the next
        write; a logged record that cannot be applied at all quarantines the collection (503 with
        the reason, as at start-up) instead of failing every later write with a 500."""
        try:
            with refused_when_disk_full(f"applying a write to collection '{self.name}'"):
                self._catch_up()
        except UNAPPLICABLE as exc:
            self.damaged = f"a logged record cannot be applied ({type(exc).__name__}: {exc})"
            log.exception("collection %s quarantined", self.name)
            raise CollectionQuarantined(self.name, self.damaged) from exc

    def _restore_sources(self, ids: list[str], previous: list[KeptSource | None]) -> None:
        """Put back the kept sources a refused write replaced (its vectors were never logged)."""
        assert self.sources is not None
        try:
            self.sources.replace(ids, previous)
        except OSError:
            log.exception("collection %s: could not restore the kept sources of a refused write", self.name)

    def _still_to_move(self, ids: list[str], rows: list[int], version: str, restoring: bool = False) -> list[int]:
        """Rows whose item exists with a version other than ``version``. Caller holds ``locks.writing()``.
        A rollback's restore moves items back before it switches (``restoring``); a backfill only moves
        items to the encoder the collection queries with."""
        if version != self.config.encoder and not restoring:
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
        with self.locks.writing():
            self._check_open()
            self._apply_logged()
            present = list(dict.fromkeys(i for i in ids if i in self.id_to_int))
            if not present:
                return 0
            record = LogRecord("delete", present, [self.id_to_int[i] for i in present], [], [])
            self._log_and_apply(encode(record))
            if self.sources is not None:  # after the log: a crash in between leaves only an unused file
                self.sources.delete(present)
            self._keep_thumbnails(present, None)
        for segment in list(self.segments.values()):
            segment.policy.after_write(len(present))
        return len(present)

    def set_active_encoder(self, encoder: str, dim: int, entry: dict[str, Any]) -> EncoderState:
        """Switch the query encoder (and the default version of new writes) and append ``entry``
        to the history, durably and at once: a search already past its start keeps the version it
        started with (``search(version=...)``); every later one and every later write use ``encoder``."""
        with self.locks.writing():
            self._check_open()
            state = EncoderState(encoder, dim, [*self.state.history, entry])
            self.store.put_doc(STATE_NAMESPACE, self.name, state.to_json())
            self.state = state
            self.config = replace(self.base_config, encoder=encoder, dim=dim)
            return state

    # -- reads -------------------------------------------------------------------------------
    def get(self, item_id: str, with_vector: bool = False) -> ItemRecord:
        with self.locks.reading():
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
        return collection_search.search(self, queries, k, flt, exclude, version)

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

    def version_counts(self) -> dict[str | None, int]:
        with self.locks.reading():
            return dict(Counter(self.versions.values()))

    def stats(self) -> dict[str, Any]:
        with self.locks.reading():
            return {
                "count": self.count,
                "indexed": self.indexed,
                **self.policy.describe(),
                "segments": [s.describe() for s in self.segments.values()],
                "log_offset": self.wal.end_offset,
            }

    # -- lifecycle ---------------------------------------------------------------------------
    def snapshot(self) -> None:
        for segment in list(self.segments.values()):
            segment.policy.snapshot()

    def _check_open(self) -> None:
        if self.closed:
            raise CollectionNotFound(self.name)
        if self.damaged is not None:
            raise CollectionQuarantined(self.name, self.damaged)

    def close(self, snapshot: bool = True) -> None:
        with self.locks.writing():
            self.closed = True
        for segment in list(self.segments.values()):
            segment.policy.close(snapshot=snapshot)
        self.wal.close()
