"""The background backfill a migration starts (``backfill: "background"``).

A collection created with ``keep_sources`` keeps the raw input of every item it embeds
(``indexer.kept_sources``). A migration with ``backfill: "background"`` then stores a backfill job
(``indexer.jobs.backfill``), names it in its history entry, switches the query encoder and only then
runs the job: the items of older versions are re-encoded with the new encoder and moved into its
segment one batch at a time, each still searchable throughout (through the compatible prefix before,
in full after). Progress: ``GET /v1/jobs/{id}``. A rollback, or another migration, cancels it first;
the items it already moved keep their new vectors.

The job runner is reached through ``BackfillJobs``, the part of ``indexer.jobs.runner.JobRunner`` a
migration uses, so that this package does not depend on the jobs package (which runs the job).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from indexer.collection import Collection
from indexer.upgrade.errors import MigrationRefused


class BackfillJobs(Protocol):
    """What a migration asks of the job runner."""

    def prepare_backfill(self, collection: str, to: str) -> str:
        """Store a queued backfill job without running it; its id."""

    def start_backfill(self, job_id: str) -> dict[str, Any]: ...

    def discard(self, job_id: str) -> None:
        """Forget a job that never ran (its migration was refused)."""

    def cancel_backfills(self, collection: str, keep: str | None = None) -> list[str]:
        """Cancel the collection's running backfills but ``keep``; the ids cancelled."""


def check_backfill(collection: Collection) -> None:
    if collection.sources is None:
        raise MigrationRefused(
            f"collection '{collection.name}' does not keep sources, so there is nothing to re-encode in the "
            "background: migrate with backfill 'none' (old items stay searchable through the compatible prefix), "
            "or re-embed into a new collection created with keep_sources"
        )


def migrate_with_backfill(
    jobs: BackfillJobs, collection: Collection, to: str, migrate: Callable[[str | None], dict[str, Any]]
) -> dict[str, Any]:
    """Run ``migrate(backfill_job_id)``: the job is stored before the switch (so the history entry
    can name it) and started after it — or forgotten when the migration is refused."""
    check_backfill(collection)
    job_id = jobs.prepare_backfill(collection.name, to)
    try:
        entry = migrate(job_id)
    except BaseException:
        jobs.discard(job_id)
        raise
    jobs.start_backfill(job_id)
    return entry
