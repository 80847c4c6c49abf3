"""The ``backfill`` job source (internal to the server; clients start one with a migration's
``backfill: "background"``): re-encode the kept sources of the items whose vectors are not of the
version a collection migrated to, oldest version first, with that version's encoder.

The items still to move are listed when a run starts (a resumed job lists only what is left: items
already moved are of the new version now), each batch reads its items' kept sources as the job reads
files. The write is ``Collection.upsert(..., only_moving_to=to)``: the new vector is written — into the
new version's segment, replacing the old one by id in one log record — under the collection's writer
lock, skipping items a client rewrote or deleted meanwhile, so no item is ever missing from search
and nothing is resurrected. Items without a kept source (vectors a client sent) fail with the reason
and stay as they are, still searchable through the compatible prefix.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from indexer.collection import Collection
from indexer.jobs.errors import SourceInvalid
from indexer.jobs.model import Batch, Entry, Failure, Item

BACKFILL = "backfill"


def backfill_spec(to: str) -> dict[str, Any]:
    return {"type": BACKFILL, "to": to}


def is_backfill(job: dict[str, Any]) -> bool:
    return bool(job.get("source", {}).get("type") == BACKFILL)


def version_age(collection: Collection) -> dict[str | None, int]:
    """Rank of each encoder version by when the collection first used it (0: the oldest)."""
    order: dict[str | None, int] = {collection.base_config.encoder: 0}
    for entry in collection.state.history:
        for version in (entry.get("from"), entry.get("to")):
            order.setdefault(version, len(order))
    return order


class BackfillSource:
    """Entries of a backfill job; ``processed`` is what earlier runs of the job counted already."""

    kind = BACKFILL

    def __init__(self, spec: dict[str, Any], collection: Collection, processed: int = 0) -> None:
        self.roots: list[Path] = []  # nothing is read from server paths
        self.to = str(spec["to"])
        self.collection = collection
        self.processed = processed
        self._pending: list[str] | None = None

    def pending(self) -> list[str]:
        """Ids of the items of another version than ``to``, oldest version first, then by age."""
        if self._pending is None:
            coll = self.collection
            if coll.config.encoder != self.to:
                raise SourceInvalid(
                    f"collection '{coll.name}' queries with {coll.config.encoder}, not {self.to} (the migration "
                    "was rolled back, replaced or never happened): nothing to backfill"
                )
            if coll.sources is None:
                raise SourceInvalid(f"collection '{coll.name}' does not keep sources: nothing to re-encode")
            age = version_age(coll)
            with coll.locks.reading():
                found = [(age.get(v, -1), n, coll.int_to_id[n]) for n, v in coll.versions.items() if v != self.to]
            found.sort()  # oldest version first (unknown labels before any), then in order of writing
            self._pending = [item_id for _, _, item_id in found]
        return self._pending

    def count(self) -> int:
        return self.processed + len(self.pending())

    def batches(self, size: int, skip: set[int] | None = None) -> Iterator[Batch]:
        """The pending items in batches numbered after the ones earlier runs counted (``skip``)."""
        seq = max(skip) + 1 if skip else 0
        pending = self.pending()
        for start in range(0, len(pending), size):
            yield Batch(seq, [self._entry(i) for i in pending[start : start + size]])
            seq += 1

    def _entry(self, item_id: str) -> Entry:
        coll = self.collection
        assert coll.sources is not None
        source = coll.sources.get(item_id)
        int_id = coll.id_to_int.get(item_id)
        if int_id is None:
            return Failure(item_id, "deleted before it was re-encoded")
        if source is None:
            return Failure(item_id, "no kept source (its vector was sent by a client): it keeps its old vector")
        payload = coll.payloads.get(int_id)
        if source.kind == "image":  # a loaded file, as the job encoders take image bytes
            return Item(item_id, "path", source.data, payload)
        return Item(item_id, source.kind, source.value(), payload)
