"""The service layer's error root. Its errors come from the service's own machinery (batching
queues), not from the indexer or the models; ``service/errors.py`` maps each class to an HTTP status.

It lives here, not in ``service/errors.py``, because that module imports the classes it maps:
defining the root there would make ``service.runtime.batching`` and it import each other."""

from __future__ import annotations

from models.core.errors import ERSError


class ServiceError(ERSError):
    """Root of the service layer's errors."""

    code = "service_error"
