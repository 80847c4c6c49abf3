"""Errors of the upgrade domain (under the indexer's root); ``service/errors.py`` maps them to HTTP."""

from __future__ import annotations

from indexer.errors import IndexerError


class MigrationRefused(IndexerError):
    """The migration is not allowed: incompatible by spec, the compatibility gate failed, or a
    background backfill was asked of a collection that keeps no sources (409)."""

    code = "migration_refused"
