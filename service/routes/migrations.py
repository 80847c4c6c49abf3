"""Encoder migrations of a collection (backward-compatible upgrades) and its labelled evaluation set.

- ``POST /v1/collections/{name}/migrations`` ``{"to": "name@version", "force": false, "backfill": "none",
  "eval": {"inputs": [...], "labels": [...]}}`` checks compatibility by spec (409 when not), runs the
  compatibility gate (409 when the criterion fails, unless ``force``) and switches the query encoder.
- ``POST /v1/collections/{name}/migrations`` ``{"to": ..., "method": "auto" | "fuse" | "adapter" | "transform",
  "calibration": <job source>?}``: an upgrade between independently trained encoders, calibrated and fitted
  in a task (202; ``GET .../migrations/tasks/{id}``), see ``indexer.upgrade.bridging``.
- ``POST /v1/collections/{name}/migrations`` ``{"rollback": true}`` — or ``POST .../migrations/rollback``
  — returns to the previous query encoder.
- ``GET /v1/collections/{name}/migrations``: the active encoder and the history, each with its reports.
- ``PUT|GET|DELETE /v1/collections/{name}/eval-set``: the labelled inputs the gate uses.

The upgrade domain is ``indexer.upgrade``: these handlers only translate HTTP to its calls, and its
errors reach HTTP through ``service/errors.py``.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Literal

import anyio.to_thread
from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from indexer.collection import Collection
from indexer.errors import InvalidInput
from indexer.upgrade.bridging import DEFAULT_CALIBRATION, MAX_CALIBRATION, BridgeRequest
from indexer.upgrade.eval_set import EvalSet
from service.deps import CollectionDep, MigrationsDep

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
    method: Literal["prefix", "auto", "fuse", "adapter", "transform"] = Field(
        default="prefix",
        description="prefix: the new model is compatible_with the old one by spec (BT²/OCA-trained); for "
        "independently trained encoders, fitted on calibration inputs: fuse (both encoders encode the query, "
        "scores fused), adapter (a head on the frozen new encoder), transform (the stored vectors rewritten "
        "into the new space), auto (the best of the three on held-out labelled inputs; refused unless it "
        "beats old/old in 95% of paired bootstrap resamples). Those run as a task: 202 with its id, progress "
        "at GET .../migrations/tasks/{id}",
    )
    calibration: dict[str, Any] | None = Field(
        default=None,
        description="raw inputs to fit on, as a job source {type: directory | manifest, path} under the "
        "allowed roots (a manifest item's payload 'label' makes it part of the measured task); default: a "
        "sample of the collection's kept sources",
    )
    calibration_size: int = Field(default=DEFAULT_CALIBRATION, description=f"inputs sampled (20 to {MAX_CALIBRATION})")
    seed: int = Field(default=0, description="seed of the calibration sample and the fits")


@router.post("/{name}/migrations", status_code=201)
async def create_migration(body: MigrationCreate, collection: CollectionDep, migrations: MigrationsDep) -> Any:
    if body.rollback:
        if body.to is not None:
            raise InvalidInput("give either 'to' or 'rollback', not both")
        return _rolled_back(await anyio.to_thread.run_sync(migrations.rollback, collection), collection)
    elif body.to is None:
        raise InvalidInput("give 'to' (name@version of the new encoder) or 'rollback': true")
    elif body.method == "prefix" and body.model_fields_set & {"calibration", "calibration_size", "seed"}:
        raise InvalidInput("calibration, calibration_size and seed are for method auto, fuse, adapter or transform")
    elif body.method != "prefix":
        eval_set = EvalSet(body.eval.inputs, body.eval.labels, "request") if body.eval is not None else None
        request = BridgeRequest(body.to, body.method, body.calibration, body.calibration_size, body.seed, body.force,
                                eval_set)  # fmt: skip
        start = partial(migrations.start_bridged, collection, request, body.backfill)
        task = await anyio.to_thread.run_sync(start)
        return JSONResponse({"task": task, "active": collection.config.encoder}, status_code=202)
    else:
        eval_set = EvalSet(body.eval.inputs, body.eval.labels, "request") if body.eval is not None else None
        migrate = partial(
            migrations.migrate, collection, body.to, force=body.force, backfill=body.backfill, eval_set=eval_set
        )
        entry = await anyio.to_thread.run_sync(migrate)  # loads models and runs the gate: blocking
    return {"migration": entry, "active": collection.config.encoder}


@router.post("/{name}/migrations/rollback", status_code=201)
async def rollback(collection: CollectionDep, migrations: MigrationsDep) -> Any:
    return _rolled_back(await anyio.to_thread.run_sync(migrations.rollback, collection), collection)


def _rolled_back(result: dict[str, Any], collection: Collection) -> Any:
    """201 with the history entry, or 202 with the task that restores a backfill's vectors first."""
    if "task" in result:
        return JSONResponse({"task": result["task"], "active": collection.config.encoder}, status_code=202)
    return {"migration": result, "active": collection.config.encoder}


@router.get("/{name}/migrations/tasks/{task_id}")
def get_task(task_id: str, collection: CollectionDep, migrations: MigrationsDep) -> dict[str, Any]:
    return migrations.task(collection, task_id)


@router.get("/{name}/migrations")
def list_migrations(collection: CollectionDep, migrations: MigrationsDep) -> dict[str, Any]:
    return migrations.status(collection)


@router.put("/{name}/eval-set")
def put_eval(body: EvalSetIn, collection: CollectionDep, migrations: MigrationsDep) -> dict[str, Any]:
    return migrations.put_eval_set(collection, body.inputs, body.labels)


@router.get("/{name}/eval-set")
def get_eval(collection: CollectionDep, migrations: MigrationsDep) -> dict[str, Any]:
    return migrations.describe_eval_set(collection)


@router.delete("/{name}/eval-set", status_code=204)
def delete_eval(collection: CollectionDep, migrations: MigrationsDep) -> Response:
    migrations.delete_eval_set(collection)
    return Response(status_code=204)
