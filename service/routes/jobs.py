"""Batch indexing jobs: ``POST /v1/jobs`` (server source or upload), list, show, cancel."""

from __future__ import annotations

from typing import Any, Literal

import anyio.to_thread
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from indexer.errors import InvalidInput
from indexer.jobs.runner import JobRunner
from indexer.validation import load_json
from service.deps import RunnerDep

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


class JobSource(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["directory", "manifest"]
    path: str = Field(min_length=1, max_length=4096)


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    collection: str = Field(min_length=1, max_length=64)
    source: JobSource
    options: dict[str, Any] = Field(default_factory=dict)


UPLOAD_DOC = {
    "requestBody": {
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/JobCreate"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["collection", "manifest"],
                    "properties": {
                        "collection": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"},
                        "manifest": {"type": "string", "format": "binary", "description": ".jsonl or .csv"},
                        "file": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "files the manifest names in its 'path' column",
                        },
                        "options": {"type": "string", "description": 'JSON object, e.g. {"batch_size": 32}'},
                    },
                }
            },
        }
    }
}


async def _submit_upload(request: Request, runner: JobRunner) -> dict[str, Any]:
    form = await request.form()
    collection = form.get("collection")
    manifest = form.get("manifest")
    if not isinstance(collection, str) or not collection:
        raise InvalidInput("multipart job upload needs a 'collection' field")
    if manifest is None or isinstance(manifest, str):
        raise InvalidInput("multipart job upload needs a 'manifest' file part (.jsonl or .csv)")
    options = load_json(str(form.get("options") or "{}"), "options")
    if not isinstance(options, dict):
        raise InvalidInput("options must be a JSON object")
    files = [(f.filename or "", await f.read()) for f in form.getlist("file") if not isinstance(f, str)]
    data = await manifest.read()
    name = manifest.filename or "manifest.jsonl"
    return await anyio.to_thread.run_sync(runner.submit_upload, collection, name, data, files, options)


@router.post("", status_code=202, openapi_extra=UPLOAD_DOC)
async def submit_job(request: Request, runner: RunnerDep) -> dict[str, Any]:
    """Start a job over a server directory or manifest (under ERS_ALLOWED_ROOTS), or an upload."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        return await _submit_upload(request, runner)
    try:
        body = JobCreate.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from exc
    return await anyio.to_thread.run_sync(runner.submit, body.collection, body.source.model_dump(), body.options)


@router.get("")
def list_jobs(runner: RunnerDep) -> dict[str, Any]:
    return {"jobs": runner.list_jobs()}


@router.get("/{job_id}")
def get_job(job_id: str, runner: RunnerDep) -> dict[str, Any]:
    return runner.get(job_id)


@router.post("/{job_id}/cancel")
def cancel_job(job_id: str, runner: RunnerDep) -> dict[str, Any]:
    return runner.cancel(job_id)
