"""Map domain errors to HTTP once; every error body is ``{"error": {"code", "message"}}``.

Every domain error derives from ``models.core.errors.ERSError`` through its layer's root
(``ModelError``, ``IndexerError``, ``ServiceError``). ``HTTP_STATUS`` is the only table from error
classes to statuses: an error takes the entry of the nearest class on its MRO, and every concrete class
must have one, itself or through a non-root ancestor (``tests/service/test_error_mapping.py`` walks
them all). A root alone has no entry: an error raised as a bare root is a bug, answered 500.
Routes never catch domain errors to answer them: they propagate to the one handler below.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from indexer.errors import (
    AlreadyExists,
    CollectionQuarantined,
    DataDirLocked,
    InsufficientStorage,
    InvalidInput,
    LimitExceeded,
    LogDamaged,
    NotFoundError,
    ReadOnlyView,
    StoreMismatch,
    StoreUnavailable,
)
from indexer.jobs.errors import ItemError, JobConflict, PathRefused
from indexer.upgrade.errors import MigrationRefused
from models.core.errors import ArtifactError, EncoderNotFound, ERSError, InputTooLarge, InvalidEncoderInput, ZooError
from models.data.medical import MedicalDataError
from models.training.recipe import TrainingError
from service.runtime.batching import QueueFull
from service.wire import MalformedBody, UnsupportedMediaType

HTTP_STATUS: dict[type[ERSError], int] = {
    # models
    EncoderNotFound: 422,  # the request names an encoder that is not installed (`ers zoo pull` it)
    InvalidEncoderInput: 422,
    InputTooLarge: 413,
    ArtifactError: 500,  # an installed artifact is broken: the server's fault
    ZooError: 502,  # the upstream registry failed us
    # Training and its data sets run from the CLI, not the API; were one to reach HTTP, it is the
    # config or data the caller gave that a recipe refused.
    TrainingError: 422,
    MedicalDataError: 422,
    # indexer
    NotFoundError: 404,  # collections, items, jobs
    AlreadyExists: 409,
    InvalidInput: 422,  # job sources included (SourceInvalid)
    LimitExceeded: 413,
    StoreUnavailable: 503,
    DataDirLocked: 503,
    CollectionQuarantined: 503,  # one collection cannot be loaded; the others serve (the body says why)
    InsufficientStorage: 507,  # the disk (or Redis's memory) is full: not acknowledged, nothing kept
    LogDamaged: 500,  # raised while opening (the collection is quarantined); never a client's fault
    # The store and a collection's log disagree (wrong data directory, wiped store): the server's own
    # state is inconsistent. Nothing in the request can fix it and a retry meets the same state, so it
    # is 500 rather than a 4xx or a 503 with Retry-After; the code tells the operator what to look at.
    StoreMismatch: 500,
    PathRefused: 403,
    JobConflict: 409,
    ItemError: 422,  # an item's content was refused (jobs record these per item)
    MigrationRefused: 409,
    # A reader process forwards every write to the writer; a write reaching a read-only view is a
    # routing bug in the server, never the client's doing.
    ReadOnlyView: 500,
    # service
    QueueFull: 429,
    MalformedBody: 400,  # not readable as its Content-Type (broken msgpack)
    UnsupportedMediaType: 415,
}


def status_for(exc: ERSError) -> int:
    """The status of the nearest class on ``exc``'s MRO that has an entry; 500 when none has."""
    for cls in type(exc).__mro__:
        status = HTTP_STATUS.get(cls)
        if status is not None:
            return status
    return 500


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    # A message may quote a client's string, and JSON lets a client send a lone surrogate that UTF-8
    # cannot encode: escape it, or the refusal itself would become a 500.
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def _retry_after(exc: ERSError, status: int) -> dict[str, str] | None:
    if exc.retry_after is not None:  # the error knows (an overloaded queue)
        return {"Retry-After": str(max(1, round(exc.retry_after)))}
    return {"Retry-After": "1"} if status == 503 else None  # the store may be back in a moment


def _describe(errors: list[dict[str, Any]]) -> str:
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc or 'body'}: {err.get('msg')}")
    return "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ERSError)
    async def _domain(_: Request, exc: ERSError) -> JSONResponse:
        status = status_for(exc)
        return error_response(status, exc.code, exc.message, _retry_after(exc, status))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", _describe(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 413: "limit_exceeded"}.get(
            exc.status_code, "http_error"
        )
        return error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))
