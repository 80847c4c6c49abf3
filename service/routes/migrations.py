"""Encoder migrations of a collection (backward-compatible upgrades) and its labelled evaluation set.

- ``POST /v1/collections/{name}/migrations`` ``{"to": "name@version", "force": false, "backfill": "none",
  "eval": {"inputs": [...], "labels": [...]}}`` checks compatibility by spec (409 when not), runs the
  compatibility gate (409 when the criterion fails, unless ``force``) and switches the query encoder.
- ``POST /v1/collections/{name}/migrations`` ``{"rollback": true}`` — or ``POST .../migrations/rollback``
  — returns to the previous query encoder.
- ``GET /v1/collections/{name}/migrations``: the active encoder and the history, each with its reports.
- ``PUT|GET|DELETE /v1/collections/{name}/eval-set``: the labelled inputs the gate uses.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Literal

import anyio.to_thread
from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from indexer.errors import InvalidInput
from models.core.encoder import Encoder
from service.backfill import check_backfill, migrate_with_backfill
from service.deps import CollectionDep, HubDep, MigrationsDep, RunnerDep
from service.migrations import (
    EVAL_NAMESPACE,
    EvalSet,
    describe_eval_set,
    put_eval_set,
)

router = APIRouter(prefix="/v1/collections", tags=["migrations"])


class EvalSetIn(BaseModel):
    inputs: list[Any] = Field(description="texts, or base64 images, as the collection's encoders take them")
    labels: list[Any] = Field(description="one label per input; items of one label are relevant to each other")


class MigrationCreate(BaseModel):
    to: str | None = Field(default=None, description="name@version of the new query encoder")
    force: bool = Field(default=False, description="migrate even when the compatibility gate fails or has no data")
    backfill: Literal["none", "background"] = Field(
        default="none",
        description="none: old items stay as they are, searched through the compatible prefix; background: "
        "a job re-encodes their kept sources with the new encoder (collections created with keep_sources; "
        "progress at GET /v1/jobs/{backfill_job})",
    )
    eval: EvalSetIn | None = Field(default=None, description="evaluation set for this gate only")
    rollback: bool = Field(default=False, description="return to the previous query encoder instead")


@router.post("/{name}/migrations", status_code=201)
async def create_migration(
    body: MigrationCreate, collection: CollectionDep, hub: HubDep, migrations: MigrationsDep, runner: RunnerDep
) -> Any:
    stop = partial(runner.cancel_backfills, collection.name)
    if body.rollback:
        if body.to is not None:
            raise InvalidInput("give either 'to' or 'rollback', not both")
        entry = await anyio.to_thread.run_sync(migrations.rollback, collection, stop)
        return {"migration": entry, "active": collection.config.encoder}
    if body.to is None:
        raise InvalidInput("give 'to' (name@version of the new encoder) or 'rollback': true")
    if body.backfill == "background":
        check_backfill(collection)  # before loading models or running the gate
    new = await anyio.to_thread.run_sync(hub.get, body.to)  # 422 naming `ers zoo pull` when missing
    eval_set = EvalSet(body.eval.inputs, body.eval.labels, "request") if body.eval is not None else None
    old: dict[str, Encoder] = {}
    has_data = eval_set is not None or migrations.store.get_doc(EVAL_NAMESPACE, collection.name) is not None
    if has_data:
        versions = set(migrations.gallery_versions(collection)) | {collection.config.encoder or ""}
        for version in sorted(v for v in versions if v and v != body.to and migrations.compat.spec(v) is not None):
            old[version] = await anyio.to_thread.run_sync(hub.get, version)
    to = body.to

    def migrate(job: str | None) -> dict[str, Any]:
        stop_others = partial(runner.cancel_backfills, collection.name, job)
        return migrations.migrate(collection, to, new, old, body.force, body.backfill, eval_set, job, stop_others)

    if body.backfill == "background":
        entry = await anyio.to_thread.run_sync(lambda: migrate_with_backfill(runner, collection, to, migrate))
    else:
        entry = await anyio.to_thread.run_sync(migrate, None)
    return {"migration": entry, "active": collection.config.encoder}


@router.post("/{name}/migrations/rollback", status_code=201)
async def rollback(collection: CollectionDep, migrations: MigrationsDep, runner: RunnerDep) -> Any:
    stop = partial(runner.cancel_backfills, collection.name)
    entry = await anyio.to_thread.run_sync(migrations.rollback, collection, stop)
    return {"migration": entry, "active": collection.config.encoder}


@router.get("/{name}/migrations")
def list_migrations(collection: CollectionDep) -> dict[str, Any]:
    return {
        "active": collection.config.encoder,
        "dim": collection.config.dim,
        "versions": {str(k): v for k, v in collection.version_counts().items()},
        "segments": collection.stats()["segments"],  # one index per encoder version
        "history": collection.state.history,
    }


@router.put("/{name}/eval-set")
def put_eval(body: EvalSetIn, collection: CollectionDep, migrations: MigrationsDep) -> dict[str, Any]:
    return put_eval_set(migrations.store, collection.name, body.inputs, body.labels)


@router.get("/{name}/eval-set")
def get_eval(collection: CollectionDep, migrations: MigrationsDep) -> dict[str, Any]:
    return describe_eval_set(migrations.store, collection.name)


@router.delete("/{name}/eval-set", status_code=204)
def delete_eval(collection: CollectionDep, migrations: MigrationsDep) -> Response:
    migrations.store.delete_doc(EVAL_NAMESPACE, collection.name)
    return Response(status_code=204)
