"""Backward-compatible upgrades of a collection's encoder: the spec check and the compatibility gate
(``indexer.upgrade.gate``), the atomic switch of the query encoder, rollback and the durable history.

``Migrations.migrate`` runs, in order:

1. refuse unless the new model is compatible *by spec* with every encoder version in the gallery
   (``compatible_with`` followed transitively; its prefix must be exactly that version's width);
2. the gate: the BCT compatibility report (``models.compat.report``) of the new model against each
   version in the gallery, on the collection's labelled evaluation set (``PUT .../eval-set``, or one
   sent with the request); without one, a report in the new model's card against the active
   encoder. Refuse when the criterion M(new, old) > M(old, old) fails — unless ``force``;
3. switch the active query encoder (``Collection.set_active_encoder``: one atomic store write;
   searches already running finish on the encoder they started with; new writes use the new one).

With ``backfill: "background"`` a backfill job is stored before the switch and started after it
(``indexer.upgrade.backfill``). Rollback returns to the encoder the last effective migration came
from. Every switch is appended to the history, with its reports, in the collection's encoder-state
document in the metadata store. The service builds one ``Migrations`` at start-up.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np

from indexer.collection import Collection
from indexer.errors import InvalidInput
from indexer.store.base import MetadataStore
from indexer.upgrade import eval_set as eval_sets
from indexer.upgrade.backfill import BackfillJobs, check_backfill, migrate_with_backfill
from indexer.upgrade.bridging import (
    BridgeRequest,
    MigrationTask,
    RefusedWithReport,
    TaskBoard,
    build_views,
    calibration_inputs,
    check_request,
    encode_both,
    fit_bridge,
    labelled_part,
    no_stored_vectors,
)
from indexer.upgrade.compat import SpecCompat
from indexer.upgrade.errors import MigrationRefused, MigrationTaskNotFound
from indexer.upgrade.eval_set import EvalSet
from indexer.upgrade.gate import (
    EncoderGetter,
    Reports,
    describe_failures,
    gallery_versions,
    gate_failures,
    gate_reports,
    spec_incompatibilities,
)
from indexer.vector_cache import VectorCache
from models.core.encoder import Encoder
from models.core.errors import ERSError

Backfill = Literal["none", "background"]
log = logging.getLogger(__name__)


class Migrations:
    """Runs migrations and rollbacks of the collections of one server (one at a time per collection),
    and keeps their evaluation sets. ``get_encoder`` loads installed models (the service's encoder
    hub); ``jobs`` stores, starts and cancels background backfills (the service's job runner)."""

    def __init__(
        self,
        store: MetadataStore,
        compat: SpecCompat,
        models_dir: Path,
        get_encoder: EncoderGetter,
        jobs: BackfillJobs,
        roots: Sequence[Path] = (),
        max_pixels: int = 40_000_000,
        cache: VectorCache | None = None,  # the server's embedding cache: calibration vectors kept for a rerun
    ) -> None:
        self.store = store
        self.roots = list(roots)  # where a calibration source may be read from (ERS_ALLOWED_ROOTS)
        self.max_pixels, self.cache = max_pixels, cache
        self.tasks = TaskBoard()
        self.compat = compat
        self.models_dir = models_dir
        self.get_encoder = get_encoder
        self.jobs = jobs
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock(self, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(name, threading.Lock())

    # -- migrate / rollback (blocking: the service runs them in a worker thread) -------------
    def migrate(
        self,
        collection: Collection,
        to: str,
        *,
        force: bool = False,
        backfill: Backfill = "none",
        eval_set: EvalSet | None = None,
    ) -> dict[str, Any]:
        """Check, gate and switch to ``to``; the history entry (with its reports). ``eval_set``: data
        for this gate only (else the collection's stored one)."""
        self._refuse_while_task_runs(collection)
        if backfill == "background":
            check_backfill(collection)  # before loading models or running the gate
        new_encoder = self.get_encoder(to)  # EncoderNotFound (422) names `ers zoo pull` when missing
        switch = partial(self._switch, collection, to, new_encoder, force, backfill, eval_set)
        if backfill == "background":
            return migrate_with_backfill(self.jobs, collection, to, switch)
        return switch(None)

    def _switch(
        self,
        collection: Collection,
        to: str,
        new_encoder: Encoder,
        force: bool,
        backfill: Backfill,
        eval_set: EvalSet | None,
        backfill_job: str | None,
        bridged: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """``backfill_job``: the background backfill job that starts after the switch; the
        collection's other running backfills are cancelled just before it (their ids go in the entry)."""
        with self._lock(collection.name):
            active = collection.config.encoder
            if active is None:
                raise InvalidInput(f"collection '{collection.name}' has no encoder: nothing to migrate from")
            if to == active:
                raise InvalidInput(f"collection '{collection.name}' already serves {to}")
            old_spec = self.compat.spec(active)
            if old_spec is not None and old_spec.modality != new_encoder.spec.modality:
                raise MigrationRefused(f"{to} takes {new_encoder.spec.modality} input; {active} takes "
                                       f"{old_spec.modality}")  # fmt: skip
            reasons = spec_incompatibilities(self.compat, collection, to)
            if reasons:
                raise MigrationRefused(
                    f"refusing to migrate '{collection.name}' to {to}: it is not compatible by spec with "
                    + "; ".join(reasons) + ". Re-embed into a new collection instead, or train the new model "
                    "with --compatible-with (BCT/BT²/OCA)."
                )  # fmt: skip
            if bridged is not None:  # measured on calibration (indexer.upgrade.bridging): refused there if it failed
                reports: Reports = {}
                gate = "calibration"
                failed = [] if bridged["pretrained"].get("criterion_met") else [active]
            else:
                if eval_set is None:
                    eval_set = eval_sets.stored_eval_set(self.store, collection.name)
                reports, gate = gate_reports(
                    self.compat, self.models_dir, collection, to, new_encoder, self.get_encoder, eval_set
                )
                failed = gate_failures(reports)
            if gate == "missing" and not force:
                raise MigrationRefused(
                    f"no evaluation set to check {to} against {active}: PUT /v1/collections/{collection.name}"
                    "/eval-set (labelled inputs), send one with the migration, or pass force to skip the gate"
                )
            if failed and not force and bridged is None:
                raise MigrationRefused(
                    f"compatibility gate failed for {to} ({describe_failures(reports, failed)}); "
                    "pass force to migrate anyway"
                )
            forced = bool(force and (failed or gate == "missing"))
            entry: dict[str, Any] = {
                "id": len(collection.state.history) + 1,
                "kind": "migrate",
                "from": active,
                "to": to,
                "at": time.time(),
                "forced": forced,
                "gate": "forced" if forced else "passed",
                "eval_source": gate,
                "reports": reports,
                "backfill": backfill,
                **({"backfill_job": backfill_job} if backfill_job else {}),
                **(bridged or {}),
            }
            entry["cancelled_backfills"] = self.jobs.cancel_backfills(collection.name, backfill_job)
            collection.set_active_encoder(to, new_encoder.spec.dim, entry)
            return entry

    def rollback(self, collection: Collection) -> dict[str, Any]:
        """Back to the encoder the last effective migration came from: the history entry at once, or
        ``{"task": ...}`` when a backfill replaced vectors. A background backfill still running is cancelled
        first. The vectors its batches replaced were archived (``indexer.moved_vectors``); the task writes
        them back *while the newer encoder still serves* (its queries find restored items through the
        prefix, or a transform's rewritten view, so no search comes back empty), then switches, so the
        collection returns to exactly the vectors and results it had. Items of versions the old encoder
        cannot compare with are listed in ``unsearchable``."""
        with self._lock(collection.name):
            self._refuse_while_task_runs(collection)
            target, active = self._rollback_target(collection)
            cancelled = self.jobs.cancel_backfills(collection.name)
            jobs = collection.moved.jobs_moving_to(active) if active is not None else []
            if not jobs:
                return self._switch_back(collection, target, cancelled, {})
            task = self.tasks.new(collection.name, target, "rollback")
        run = partial(self._run_restore, collection, target, jobs, task, cancelled)
        threading.Thread(target=run, name=f"rollback-{task.id}", daemon=True).start()
        return {"task": task.to_json()}

    def _refuse_while_task_runs(self, collection: Collection) -> None:
        running = self.tasks.running(collection.name)
        if running is not None:
            raise MigrationRefused(f"collection '{collection.name}' has a migration task running ({running.id}, "
                                   f"{running.method}); see GET .../migrations/tasks/{running.id}")  # fmt: skip

    @staticmethod
    def _rollback_target(collection: Collection) -> tuple[str, str | None]:
        stack: list[str] = []
        for entry in collection.state.history:
            if entry.get("kind") == "migrate":
                stack.append(entry["from"])
            elif entry.get("kind") == "rollback" and stack:
                stack.pop()
        if not stack:
            raise InvalidInput(f"collection '{collection.name}' has no migration to roll back")
        return stack[-1], collection.config.encoder

    def _switch_back(self, collection: Collection, target: str, cancelled: list[str],
                     restored: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
        """The rollback's switch (caller holds the collection's migration lock)."""
        active = collection.config.encoder
        dim = self.compat.dim_of(target) or collection.dim_for(target)
        lost = {
            v: n
            for v, n in gallery_versions(collection).items()
            if self.compat.prefix(target, dim, v, collection.dim_for(v)) is None
        }
        entry = {
            "id": len(collection.state.history) + 1,
            "kind": "rollback",
            "from": active,
            "to": target,
            "at": time.time(),
            # items of these versions cannot be compared with the old encoder's queries: they stay
            # stored, but are not found until a migration forward again (or a re-embed with it)
            "unsearchable": lost,
            "cancelled_backfills": cancelled,
            **restored,
        }
        collection.set_active_encoder(target, dim, entry)
        collection.views.invalidate()  # derived data of the encoder left: rebuilt if it comes back
        return entry

    def _run_restore(self, collection: Collection, target: str, jobs: list[str], task: MigrationTask,
                     cancelled: list[str]) -> None:  # fmt: skip
        """Write back the archived vectors batch by batch (items a client rewrote or deleted since keep the
        client's write), once more under the lock for a batch that landed meanwhile, then switch back."""
        task.phase, task.total = "restoring", sum(collection.moved.count(job) for job in jobs)
        try:
            restored = self._restore(collection, target, jobs, task)
            task.phase = "switching"
            with self._lock(collection.name):
                if self._rollback_target(collection) != (target, collection.config.encoder):
                    raise MigrationRefused("the collection migrated meanwhile; nothing was switched")
                restored += self._restore(collection, target, jobs, None)
                for job in jobs:
                    collection.moved.drop(job)
                task.migration = self._switch_back(collection, target, cancelled, {"restored": restored})
            task.state = "succeeded"
        except ERSError as exc:  # the archive stays for a later rollback
            task.state, task.error = "failed", exc.message
        except Exception as exc:
            log.exception("rollback task %s failed", task.id)
            task.state, task.error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            task.finished_at, task.phase = time.time(), "done"

    @staticmethod
    def _restore(collection: Collection, target: str, jobs: list[str], task: MigrationTask | None) -> int:
        written = 0
        for job in jobs:
            for batch in collection.moved.batches(job):
                with collection.locks.reading():
                    payloads = [collection.payloads.get(collection.id_to_int.get(i, -1)) for i in batch.ids]
                written += collection.upsert(batch.ids, batch.vectors, payloads, batch.versions,
                                             only_moving_to=target, expected=batch.moved_int_ids.tolist())  # fmt: skip
                if task is not None:
                    task.done += len(batch.ids)
        return written

    # -- bridged migrations: encoders nobody trained for compatibility (indexer.upgrade.bridging) --
    def start_bridged(self, collection: Collection, req: BridgeRequest, backfill: Backfill = "none") -> dict[str, Any]:
        """Check the request (4xx now), then calibrate, fit, gate and switch in a task; the task's view."""
        if collection.config.encoder is None:
            raise InvalidInput(f"collection '{collection.name}' has no encoder: nothing to migrate from")
        if req.to == collection.config.encoder:
            raise InvalidInput(f"collection '{collection.name}' already serves {req.to}")
        req = check_request(req, collection, self.roots)
        if backfill == "background":
            check_backfill(collection)
        self.get_encoder(req.to)  # EncoderNotFound (422) before the task starts
        task = self.tasks.new(collection.name, req.to, req.method)
        run = partial(self._run_bridged, collection, req, backfill, task)
        threading.Thread(target=run, name=f"migration-{task.id}", daemon=True).start()
        return task.to_json()

    def task(self, collection: Collection, task_id: str) -> dict[str, Any]:
        found = self.tasks.tasks.get(task_id)
        if found is None or found.collection != collection.name:
            raise MigrationTaskNotFound(collection.name, task_id)
        return found.to_json()

    def _run_bridged(self, collection: Collection, req: BridgeRequest, backfill: Backfill, task: MigrationTask) -> None:
        try:
            task.migration = self._bridge(collection, req, backfill, task)
            task.state = "succeeded"
        except RefusedWithReport as exc:
            task.state, task.report, task.error = "refused", exc.report, exc.message
        except ERSError as exc:
            task.state, task.error = ("refused" if isinstance(exc, MigrationRefused) else "failed"), exc.message
        except Exception as exc:
            log.exception("migration task %s failed", task.id)
            task.state, task.error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            task.finished_at, task.phase = time.time(), "done"

    def _bridge(
        self, collection: Collection, req: BridgeRequest, backfill: Backfill, task: MigrationTask
    ) -> dict[str, Any]:
        # torch-backed: imported on the first bridged migration, so a server start does not load torch
        from models.compat.bridges import write_bridge
        from models.compat.pretrained import Calibration

        active = collection.config.encoder
        assert active is not None
        old, new = self.get_encoder(active), self.get_encoder(req.to)
        if old.spec.modality != new.spec.modality:
            raise MigrationRefused(f"{req.to} takes {new.spec.modality} input; {active} takes {old.spec.modality}")
        task.phase = "collecting"
        eval_set = req.eval_set or eval_sets.stored_eval_set(self.store, collection.name)
        task_inputs, task_labels = labelled_part(eval_set, new.spec.modality)
        inputs, labels, stored = calibration_inputs(collection, req, self.roots, new.spec.modality, self.max_pixels)
        fit_only, task_stored = inputs, no_stored_vectors(len(task_inputs))
        if labels is not None:  # a labelled calibration source is part of the task
            task_inputs, task_stored = task_inputs + inputs, task_stored + stored
            task_labels = task_labels + [json.dumps(y, sort_keys=True) for y in labels]
            fit_only, stored = [], []
        task.phase, task.total = "encoding", len(task_inputs) + len(fit_only)

        def tick(n: int) -> None:
            task.done += n

        t_old, t_new, kept = encode_both(old, new, task_inputs, tick, task_stored, self.cache)
        cal = Calibration(t_old, t_new, labels=np.asarray(task_labels)[kept]) if len(t_old) else None
        e_old, e_new, _ = encode_both(old, new, fit_only, tick, stored, self.cache)
        task.phase = "fitting"
        method, model, report = fit_bridge(req.method, cal, (e_old, e_new), req.seed, req.force)
        report["calibration"] = {
            "inputs": len(t_old) + len(e_old), "labelled": len(t_old), "seed": req.seed,
            "source": req.calibration["type"] if req.calibration else "kept sources",
        }  # fmt: skip
        task.report = report
        task.phase = "publishing"
        spec = write_bridge(self.models_dir, method, old.spec, new.spec, model, {"pretrained": report})
        bridge = self.get_encoder(spec.key)
        if method == "transform":
            task.done, task.total = 0, sum(collection.version_counts().values())
            build_views(collection, spec.key, lambda done, total: setattr(task, "done", done))
        task.phase = "switching"
        bridged = {"method": method, "asked": req.method, "new_encoder": req.to, "pretrained": report}
        switch = partial(self._switch, collection, spec.key, bridge, req.force, backfill, None, bridged=bridged)
        if backfill == "background":
            return migrate_with_backfill(self.jobs, collection, spec.key, switch)
        return switch(None)

    def status(self, collection: Collection) -> dict[str, Any]:
        """The active encoder, the items per version and the history, each entry with its reports."""
        return {
            "active": collection.config.encoder,
            "dim": collection.config.dim,
            "versions": {str(k): v for k, v in collection.version_counts().items()},
            "segments": collection.stats()["segments"],  # one index per encoder version
            "history": collection.state.history,
            "views": collection.views.describe(),
            "tasks": [t.to_json() for t in self.tasks.of(collection.name)],
        }

    # -- the collection's evaluation set (indexer.upgrade.eval_set) --------------------------
    def put_eval_set(self, collection: Collection, inputs: list[Any], labels: list[Any]) -> dict[str, Any]:
        return eval_sets.put_eval_set(self.store, collection.name, inputs, labels)

    def describe_eval_set(self, collection: Collection) -> dict[str, Any]:
        return eval_sets.describe_eval_set(self.store, collection.name)

    def delete_eval_set(self, collection: Collection) -> None:
        eval_sets.delete_eval_set(self.store, collection.name)
