"""The metadata store contract: collections, items (id map, payload, raw vector) and job state.

Two implementations honour it: SQLite (embedded default) and Redis (shared). The per-collection
write-ahead log is the source of truth; the store is a materialised view of it that records the log
offset it has applied (``applied_offset``), so a restart replays exactly the missing tail.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

from indexer.errors import StoreUnavailable
from indexer.types import CollectionConfig, ItemRecord


@runtime_checkable
class MetadataStore(Protocol):
    # -- collections -------------------------------------------------------------------------
    def create_collection(self, config: CollectionConfig) -> None:
        """Register a collection; raise ``AlreadyExists`` if the name is taken."""

    def get_collection(self, name: str) -> CollectionConfig | None: ...

    def collection_names(self) -> list[str]:
        """Every collection's name, sorted, without reading its config (start-up quarantines a
        collection whose config cannot be read, instead of failing on it)."""

    def list_collections(self) -> list[CollectionConfig]:
        """All collections, sorted by name."""

    def delete_collection(self, name: str) -> bool:
        """Drop the config, every item and the applied offset. False if it did not exist."""

    # -- items -------------------------------------------------------------------------------
    def apply(
        self,
        name: str,
        upserts: Sequence[ItemRecord],
        deletes: Sequence[str],
        offset: int,
    ) -> None:
        """Atomically upsert ``upserts`` (replacing by string id), delete ``deletes`` (missing ids
        are ignored) and set the collection's applied offset to ``offset``. All or nothing."""

    def applied_offset(self, name: str) -> int:
        """Log offset up to which ``apply`` has been called; 0 for a new collection."""

    def get_item(self, name: str, item_id: str, with_vector: bool = False) -> ItemRecord | None: ...

    def get_items(self, name: str, item_ids: Sequence[str], with_vectors: bool = False) -> list[ItemRecord | None]:
        """Items (with their vectors if asked), in the order asked, None where missing: one round trip."""

    def iter_items(self, name: str, with_vectors: bool = False, batch: int = 1000) -> Iterator[ItemRecord]:
        """Every item of a collection (order unspecified)."""

    def count(self, name: str) -> int: ...

    # -- small JSON documents (job state, settings) -------------------------------------------
    def put_doc(self, namespace: str, key: str, doc: dict[str, Any]) -> None: ...

    def get_doc(self, namespace: str, key: str) -> dict[str, Any] | None: ...

    def delete_doc(self, namespace: str, key: str) -> bool: ...

    def list_docs(self, namespace: str) -> list[dict[str, Any]]:
        """Every document of a namespace, sorted by key."""

    # -- indexing jobs (indexer/jobs) --------------------------------------------------------
    def create_job(self, job_id: str, doc: dict[str, Any]) -> None:
        """Register a job (``doc`` holds its ``state`` and ``created_at``); ``AlreadyExists`` if taken."""

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        """The doc with every update merged in, plus ``id``, ``done``, ``failed``, ``errors`` (the
        first few ``{id, reason}``) and ``dead_letters`` (a count); None if unknown."""

    def list_jobs(self) -> list[dict[str, Any]]:
        """Every job as ``get_job`` gives it but with ``errors`` empty, newest first."""

    def update_job(
        self, job_id: str, changes: dict[str, Any], states: Collection[str] | None = None
    ) -> dict[str, Any] | None:
        """Merge ``changes`` atomically, only while the job's ``state`` is one of ``states`` (any
        when None); the updated job, or None when it is unknown or in another state."""

    def record_job_batch(
        self,
        job_id: str,
        seq: int,
        done: int,
        failed: int,
        errors: Sequence[dict[str, Any]] = (),
        dead: Sequence[dict[str, Any]] = (),
    ) -> bool:
        """Count batch ``seq`` once, atomically: add to ``done``/``failed``, keep the first errors,
        append the dead letters. False, changing nothing, when ``seq`` was counted before."""

    def job_batches(self, job_id: str) -> set[int]:
        """Sequence numbers of the batches counted so far (what a resumed job skips)."""

    def job_dead_letters(self, job_id: str, limit: int = 1000) -> list[dict[str, Any]]: ...

    def delete_job(self, job_id: str) -> bool: ...

    # -- lifecycle ---------------------------------------------------------------------------
    def ping(self) -> None:
        """Raise ``StoreUnavailable`` when the backend cannot be reached."""

    def close(self) -> None: ...


def unreachable_reason(store: MetadataStore) -> str | None:
    """Why the store cannot be reached (``ping``'s ``StoreUnavailable``), or None when it answers."""
    try:
        store.ping()
    except StoreUnavailable as exc:
        return exc.message
    return None
