"""Indexing jobs, encoder migrations and evaluation sets: the operations of REST API v1 that run for
a while on the server (written once for both clients; see ``service.client.call``)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from service.client.call import Call, nothing, operation, segment
from service.client.data import _collection
from service.client.inputs import Upload, compact
from service.client.types import EvalSetInfo, Job, MigrationHistory, MigrationResult, MigrationTask

JOBS = "/v1/jobs"
# The compatibility gate embeds the evaluation set with the old and the new model before it answers.
MIGRATION_TIMEOUT = 600.0


def _jobs(body: Any) -> list[Job]:
    return [Job.model_validate(j) for j in body["jobs"]]


def _options(options: Mapping[str, Any] | None, batch_size: int | None, pattern: str | None) -> dict[str, Any]:
    return {**(options or {}), **compact({"batch_size": batch_size, "pattern": pattern})}


class JobOperations:
    # -- jobs ------------------------------------------------------------------------------------
    @operation
    def submit_job(
        self,
        collection: str,
        path: str,
        *,
        source_type: Literal["directory", "manifest"] = "directory",
        batch_size: int | None = None,
        pattern: str | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> Call[Job]:
        """Index a directory or a .jsonl/.csv manifest *on the server* (an absolute path under its
        ``ERS_ALLOWED_ROOTS``; ``Forbidden`` otherwise) into ``collection``. Returns the queued job."""
        body = {
            "collection": collection,
            "source": {"type": source_type, "path": path},
            "options": _options(options, batch_size, pattern),
        }
        return Call("POST", JOBS, Job.model_validate, json=body)

    @operation
    def submit_upload(
        self,
        collection: str,
        upload: Upload,
        *,
        batch_size: int | None = None,
        pattern: str | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> Call[Job]:
        """Index a manifest and the files it names, sent from here (``Upload(name, manifest,
        files)``, or ``Upload.from_path`` of a local directory or manifest)."""
        form = {"collection": collection, "options": json.dumps(_options(options, batch_size, pattern))}
        return Call("POST", JOBS, Job.model_validate, data=form, files=upload.parts())

    @operation
    def list_jobs(self) -> Call[list[Job]]:
        return Call("GET", JOBS, _jobs)

    @operation
    def get_job(self, job_id: str) -> Call[Job]:
        """A job's state and progress: done / failed of total, items/s, ETA, the first errors."""
        return Call("GET", f"{JOBS}/{segment(job_id)}", Job.model_validate)

    @operation
    def cancel_job(self, job_id: str) -> Call[Job]:
        """Cancel a queued or running job (``Conflict`` once it has finished)."""
        return Call("POST", f"{JOBS}/{segment(job_id)}/cancel", Job.model_validate)

    # -- migrations ------------------------------------------------------------------------------
    @operation
    def migrate(
        self,
        collection: str,
        to: str,
        *,
        force: bool = False,
        backfill: Literal["none", "background"] = "none",
        eval_set: Mapping[str, Sequence[Any]] | None = None,
    ) -> Call[MigrationResult]:
        """Switch the collection's query encoder to ``to`` (name@version), after the spec check and
        the compatibility gate (``Conflict`` when either refuses; ``force`` skips the gate's verdict).
        ``eval_set``: ``{"inputs": [...], "labels": [...]}`` for this gate only (texts or base64
        images). ``backfill="background"`` re-encodes kept sources as a job (``backfill_job``)."""
        body: dict[str, Any] = {"to": to, "force": force, "backfill": backfill}
        if eval_set is not None:
            body["eval"] = dict(eval_set)
        path = _collection(collection, "/migrations")
        return Call("POST", path, MigrationResult.model_validate, json=body, timeout=MIGRATION_TIMEOUT)

    @operation
    def start_migration(
        self,
        collection: str,
        to: str,
        method: Literal["auto", "fuse", "adapter", "transform"],
        *,
        calibration: Mapping[str, Any] | None = None,
        calibration_size: int | None = None,
        seed: int = 0,
        force: bool = False,
        backfill: Literal["none", "background"] = "none",
        eval_set: Mapping[str, Sequence[Any]] | None = None,
    ) -> Call[MigrationTask]:
        """Upgrade to an encoder nobody trained for compatibility: the server calibrates, fits ``method``
        and switches in a task (poll ``migration_task``). ``calibration``: a job source
        ``{"type": "directory" | "manifest", "path": ...}`` on the server (default: kept sources)."""
        body: dict[str, Any] = {"to": to, "method": method, "force": force, "backfill": backfill, "seed": seed}
        body.update(compact({"calibration": calibration, "calibration_size": calibration_size}))
        if eval_set is not None:
            body["eval"] = dict(eval_set)
        path = _collection(collection, "/migrations")
        return Call("POST", path, lambda b: MigrationTask.model_validate(b["task"]), json=body)

    @operation
    def migration_task(self, collection: str, task_id: str) -> Call[MigrationTask]:
        path = _collection(collection, f"/migrations/tasks/{segment(task_id)}")
        return Call("GET", path, MigrationTask.model_validate)

    @operation
    def rollback(self, collection: str) -> Call[MigrationResult]:
        """Return to the previous query encoder (cancelling a running backfill)."""
        return Call("POST", _collection(collection, "/migrations/rollback"), MigrationResult.model_validate)

    @operation
    def migrations(self, collection: str) -> Call[MigrationHistory]:
        """The active encoder, items per encoder version, the segments and the history with its reports."""
        return Call("GET", _collection(collection, "/migrations"), MigrationHistory.model_validate)

    @operation
    def put_eval_set(self, collection: str, inputs: Sequence[Any], labels: Sequence[Any]) -> Call[EvalSetInfo]:
        """Store the labelled inputs the collection's compatibility gate uses (one label per input)."""
        body = {"inputs": list(inputs), "labels": list(labels)}
        return Call("PUT", _collection(collection, "/eval-set"), EvalSetInfo.model_validate, json=body)

    @operation
    def get_eval_set(self, collection: str) -> Call[EvalSetInfo]:
        return Call("GET", _collection(collection, "/eval-set"), EvalSetInfo.model_validate)

    @operation
    def delete_eval_set(self, collection: str) -> Call[None]:
        return Call("DELETE", _collection(collection, "/eval-set"), nothing)
