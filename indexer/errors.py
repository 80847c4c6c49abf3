"""Domain errors of the indexer. The service maps each class to an HTTP status once."""

from __future__ import annotations


class ERSError(Exception):
    """Base of every error a client may see; ``code`` is the stable machine-readable name."""

    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFoundError(ERSError):
    code = "not_found"


class CollectionNotFound(NotFoundError):
    code = "collection_not_found"

    def __init__(self, name: str) -> None:
        super().__init__(f"collection '{name}' does not exist")


class ItemNotFound(NotFoundError):
    code = "item_not_found"

    def __init__(self, collection: str, item_id: str) -> None:
        super().__init__(f"item '{item_id}' does not exist in collection '{collection}'")


class AlreadyExists(ERSError):
    code = "already_exists"


class InvalidInput(ERSError):
    """The request is well-formed JSON but its content cannot be accepted (422)."""

    code = "invalid_input"


class LimitExceeded(ERSError):
    """A size limit was exceeded (413)."""

    code = "limit_exceeded"


class StoreUnavailable(ERSError):
    """The metadata store (e.g. Redis) cannot be reached (503)."""

    code = "store_unavailable"


class DataDirLocked(ERSError):
    """Another server process already owns the data directory."""

    code = "data_dir_locked"


class StoreMismatch(ERSError):
    """The metadata store and a collection's log disagree (wrong data directory or wiped store)."""

    code = "store_mismatch"
