"""Domain errors of indexing jobs (under the indexer's root); ``service/errors.py`` maps each to an
HTTP status once."""

from __future__ import annotations

from indexer.errors import IndexerError, InvalidInput, NotFoundError


class JobNotFound(NotFoundError):
    code = "job_not_found"

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job '{job_id}' does not exist")


class PathRefused(IndexerError):
    """A server path outside the allowed roots, a traversal, a symlink escape or a URL (403)."""

    code = "path_refused"


class JobConflict(IndexerError):
    """The job is not in a state that allows the request, e.g. cancelling a finished job (409)."""

    code = "job_conflict"


class SourceInvalid(InvalidInput):
    """The source cannot be read as asked: missing, wrong type, unreadable manifest (422)."""

    code = "invalid_source"


class ItemError(IndexerError):
    """One item cannot be indexed; ``reason`` is what the job reports for it. A job records it
    against the item and goes on, so it does not reach HTTP; were one to escape, it is the item's
    content that was refused (422)."""

    code = "item_error"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
