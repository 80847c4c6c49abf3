"""Domain errors of the indexer, under its one root ``IndexerError`` (itself under the base
``models.core.errors.ERSError``). The service maps each class to an HTTP status once, in
``service/errors.py``."""

from __future__ import annotations

from models.core.errors import ERSError


class IndexerError(ERSError):
    """Root of the indexer's errors: collections, stores, jobs, upgrades."""

    code = "indexer_error"


class NotFoundError(IndexerError):
    code = "not_found"


class CollectionNotFound(NotFoundError):
    code = "collection_not_found"

    def __init__(self, name: str) -> None:
        super().__init__(f"collection '{name}' does not exist")


class ItemNotFound(NotFoundError):
    code = "item_not_found"

    def __init__(self, collection: str, item_id: str) -> None:
        super().__init__(f"item '{item_id}' does not exist in collection '{collection}'")


class AlreadyExists(IndexerError):
    code = "already_exists"


class InvalidInput(IndexerError):
    """The request is well-formed JSON but its content cannot be accepted (422)."""

    code = "invalid_input"


class LimitExceeded(IndexerError):
    """A size limit was exceeded (413)."""

    code = "limit_exceeded"


class StoreUnavailable(IndexerError):
    """The metadata store (e.g. Redis) cannot be reached (503)."""

    code = "store_unavailable"


class DataDirLocked(IndexerError):
    """Another server process already owns the data directory."""

    code = "data_dir_locked"


class StoreMismatch(IndexerError):
    """The metadata store and a collection's log disagree (wrong data directory or wiped store)."""

    code = "store_mismatch"


class InsufficientStorage(IndexerError):
    """The disk (or the quota, or Redis's memory) is full: the write was refused and not
    acknowledged (507). Writes succeed again once space is freed; reads go on meanwhile."""

    code = "insufficient_storage"


class CollectionQuarantined(IndexerError):
    """A collection whose log, snapshot or store record cannot be loaded: it answers 503 with the
    reason while the other collections serve; ``ers doctor`` reports it and repairs what it can."""

    code = "collection_quarantined"
    retry_after = 60.0  # waiting does not heal it (an operator must), so ask clients not to hammer

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(
            f"collection '{name}' is quarantined: {reason} (run `ers doctor` with the server stopped, "
            "or delete the collection)"
        )
        self.reason = reason


class LogDamaged(IndexerError):
    """A write-ahead log holds damage that is not a torn, unacknowledged tail: intact records
    follow a corrupt one, or an older segment stops short. Raised at open (the collection is
    quarantined), never dropped silently: cutting there would lose acknowledged writes."""

    code = "log_damaged"


class ReadOnlyView(IndexerError):
    code = "read_only_view"

    def __init__(self, name: str) -> None:
        super().__init__(f"collection '{name}' is a read-only view in this process: writes go to the writer")
