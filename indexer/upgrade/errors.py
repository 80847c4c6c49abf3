"""Errors of the upgrade domain (under the indexer's root); ``service/errors.py`` maps them to HTTP."""

from __future__ import annotations

from indexer.errors import IndexerError, NotFoundError


class MigrationRefused(IndexerError):
    """The migration is not allowed: incompatible by spec, the compatibility gate failed, or a
    background backfill was asked of a collection that keeps no sources (409)."""

    code = "migration_refused"


class EvalSetNotFound(NotFoundError):
    """The collection has no evaluation set (never put, or deleted): 404, like any missing resource."""

    code = "eval_set_not_found"

    def __init__(self, collection: str) -> None:
        super().__init__(f"collection '{collection}' has no evaluation set: PUT /v1/collections/{collection}/eval-set "
                         "with labelled inputs")  # fmt: skip


class MigrationTaskNotFound(NotFoundError):
    """No such migration task for this collection (never started, or forgotten by a restart): 404."""

    code = "migration_task_not_found"

    def __init__(self, collection: str, task_id: str) -> None:
        super().__init__(f"collection '{collection}' has no migration task '{task_id}' (tasks are kept in memory: "
                         "a restart forgets finished ones; GET .../migrations shows the history)")  # fmt: skip
