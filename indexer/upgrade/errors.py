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
