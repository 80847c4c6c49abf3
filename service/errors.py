"""Map domain errors to HTTP once; every error body is ``{"error": {"code", "message"}}``."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from indexer.errors import (
    AlreadyExists,
    DataDirLocked,
    ERSError,
    InvalidInput,
    LimitExceeded,
    NotFoundError,
    StoreUnavailable,
)
from indexer.jobs.errors import JobConflict, PathRefused
from models.core.errors import ArtifactError, EncoderNotFound, InputTooLarge, InvalidEncoderInput, ModelError, ZooError
from service.migrations import MigrationRefused
from service.runtime.batching import QueueFull

MODEL_STATUS: list[tuple[type[ModelError], int]] = [
    (EncoderNotFound, 422),
    (InvalidEncoderInput, 422),
    (InputTooLarge, 413),
    (ArtifactError, 500),
    (ZooError, 502),
]
STATUS: list[tuple[type[ERSError], int]] = [
    (NotFoundError, 404),
    (PathRefused, 403),
    (JobConflict, 409),
    (MigrationRefused, 409),
    (AlreadyExists, 409),
    (InvalidInput, 422),
    (LimitExceeded, 413),
    (StoreUnavailable, 503),
    (DataDirLocked, 503),
]


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def _status_for(exc: ERSError | ModelError) -> int:
    for cls, status in [*STATUS, *MODEL_STATUS]:
        if isinstance(exc, cls):
            return status
    return 500


def _describe(errors: list[dict[str, Any]]) -> str:
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc or 'body'}: {err.get('msg')}")
    return "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ERSError)
    async def _domain(_: Request, exc: ERSError) -> JSONResponse:
        status = _status_for(exc)
        headers = {"Retry-After": "1"} if status == 503 else None
        return error_response(status, exc.code, exc.message, headers)

    @app.exception_handler(ModelError)
    async def _model(_: Request, exc: ModelError) -> JSONResponse:
        return error_response(_status_for(exc), exc.code, exc.message)

    @app.exception_handler(QueueFull)
    async def _overloaded(_: Request, exc: QueueFull) -> JSONResponse:
        headers = {"Retry-After": str(max(1, round(exc.retry_after)))}
        return error_response(429, "overloaded", str(exc), headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", _describe(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 413: "limit_exceeded"}.get(
            exc.status_code, "http_error"
        )
        return error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))
