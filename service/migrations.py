"""Backward-compatible upgrades of a collection's encoder: the spec check, the compatibility gate,
the atomic switch of the query encoder, rollback and the durable history.

``migrate`` runs, in order:

1. refuse unless the new model is compatible *by spec* with every encoder version in the gallery
   (``compatible_with`` followed transitively; its prefix must be exactly that version's width);
2. the gate: the BCT compatibility report (``models.compat.report``) of the new model against each
   version in the gallery, on the collection's labelled evaluation set (``PUT .../eval-set``, or one
   sent with the request); without one, a report in the new model's card against the active
   encoder. Refuse when the criterion M(new, old) > M(old, old) fails — unless ``force``;
3. switch the active query encoder (``Collection.set_active_encoder``: one atomic store write;
   searches already running finish on the encoder they started with; new writes use the new one).

Rollback returns to the encoder the last effective migration came from. Every switch is appended to
the history, with its reports, in the collection's encoder-state document in the metadata store.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from indexer.collection import Collection
from indexer.errors import ERSError, InvalidInput, LimitExceeded
from indexer.ingest import decode_base64_image
from indexer.segments import EVAL_NAMESPACE
from indexer.store.base import MetadataStore
from models.compat.report import compat_chain, compatibility_report
from models.core.encoder import Encoder
from models.core.errors import ArtifactError
from models.core.spec import EncoderSpec

MAX_EVAL_ITEMS = 20_000
StopBackfills = Callable[[], list[str]]
NEGATIVE_RETRY_S = 10.0


class MigrationRefused(ERSError):
    """The migration is not allowed: incompatible by spec, or the compatibility gate failed (409)."""

    code = "migration_refused"


class SpecCompat:
    """``CompatResolver`` over the specs in the models directory (read once each: an artefact's
    version is immutable). Versions the server has no spec for are labels on vectors clients made
    themselves: those are taken at their word and compared only at equal width."""

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = models_dir
        self._specs: dict[str, EncoderSpec] = {}
        self._missing: dict[str, float] = {}  # key -> when it was last looked for
        self._lock = threading.Lock()

    def spec(self, key: str) -> EncoderSpec | None:
        found = self._specs.get(key)
        if found is not None:
            return found
        with self._lock:
            missed = self._missing.get(key)
            if missed is not None and time.monotonic() - missed < NEGATIVE_RETRY_S:
                return None
            try:
                found = EncoderSpec.load(self.models_dir / key)
            except (ArtifactError, OSError, ValueError):
                self._missing[key] = time.monotonic()
                return None
            self._specs[key] = found
            self._missing.pop(key, None)
            return found

    def require(self, key: str) -> EncoderSpec:
        spec = self.spec(key)
        if spec is None:
            raise ArtifactError(f"no spec for encoder '{key}' in {self.models_dir}")
        return spec

    def chain(self, new: str, old: str) -> int | None:
        """``compat_chain`` over the installed specs; None when incompatible or a link is missing."""
        try:
            return compat_chain(self.require, new, old)
        except (ArtifactError, ValueError):
            return None

    def prefix(self, query: str | None, query_dim: int, segment: str | None, segment_dim: int) -> int | None:
        if query == segment:
            return segment_dim
        if query is None or segment is None or self.spec(query) is None or self.spec(segment) is None:
            return segment_dim if query_dim == segment_dim else None
        return self.chain(query, segment)

    def dim_of(self, version: str | None) -> int | None:
        spec = self.spec(version) if version is not None else None
        return spec.dim if spec is not None else None


@dataclass
class EvalSet:
    inputs: list[Any]
    labels: list[Any]
    source: str  # "request" | "collection"


def check_eval_set(inputs: Sequence[Any], labels: Sequence[Any]) -> None:
    if len(inputs) != len(labels):
        raise InvalidInput(f"evaluation set: {len(inputs)} inputs but {len(labels)} labels")
    if len(inputs) < 2:
        raise InvalidInput("evaluation set: at least 2 labelled inputs are needed")
    if len(inputs) > MAX_EVAL_ITEMS:
        raise LimitExceeded(f"evaluation set: at most {MAX_EVAL_ITEMS} items")
    if max(Counter(json.dumps(y, sort_keys=True) for y in labels).values()) < 2:
        raise InvalidInput("evaluation set: no label occurs twice, so no query can have a match")


def put_eval_set(store: MetadataStore, name: str, inputs: list[Any], labels: list[Any]) -> dict[str, Any]:
    check_eval_set(inputs, labels)
    store.put_doc(EVAL_NAMESPACE, name, {"inputs": inputs, "labels": labels, "updated_at": time.time()})
    return describe_eval_set(store, name)


def describe_eval_set(store: MetadataStore, name: str) -> dict[str, Any]:
    doc = store.get_doc(EVAL_NAMESPACE, name)
    if doc is None:
        return {"size": 0, "labels": 0}
    return {"size": len(doc["inputs"]), "labels": len(set(map(json.dumps, doc["labels"]))),
            "updated_at": doc.get("updated_at")}  # fmt: skip


def _model_inputs(values: Sequence[Any], modality: str) -> list[Any]:
    """Eval inputs as the encoder takes them: text as is, images from base64."""
    if modality in ("image", "face"):
        return [decode_base64_image(str(v), f"evaluation input {i}") for i, v in enumerate(values)]
    return list(values)


def card_report(models_dir: Path, new: str, old: str) -> dict[str, Any] | None:
    """A compatibility report of ``new`` against ``old`` written into ``new``'s model card, if any."""
    path = models_dir / new / "metrics.json"
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    candidates = [metrics, *(v for v in metrics.values() if isinstance(v, dict))]
    candidates += [v for c in list(candidates) for v in c.values() if isinstance(v, dict)]
    for doc in candidates:
        if doc.get("old") == old and doc.get("new") == new and "criterion_met" in doc:
            return dict(doc)
    return None


class Migrations:
    """Runs migrations and rollbacks of the collections of one server (one at a time per collection)."""

    def __init__(self, store: MetadataStore, compat: SpecCompat, models_dir: Path) -> None:
        self.store = store
        self.compat = compat
        self.models_dir = models_dir
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock(self, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(name, threading.Lock())

    def gallery_versions(self, collection: Collection) -> dict[str, int]:
        return {v: n for v, n in collection.version_counts().items() if v is not None and n > 0}

    def incompatible(self, collection: Collection, to: str) -> list[str]:
        """Why ``to`` may not serve each version of the gallery (and the active one); empty if it may."""
        reasons = []
        versions = set(self.gallery_versions(collection)) | {collection.config.encoder} - {None}
        for version in sorted(v for v in versions if v is not None and v != to):
            dims = self.compat.chain(to, version)
            width = collection.dim_for(version)
            if self.compat.spec(version) is None:
                reasons.append(f"{version} (no spec for it on this server, so compatibility cannot be shown)")
            elif dims is None:
                reasons.append(f"{version} ({to} is not compatible_with it, directly or through a chain)")
            elif dims != width:
                reasons.append(f"{version} ({to} compares {dims} dims but {version} vectors have {width})")
        return reasons

    def migrate(
        self,
        collection: Collection,
        to: str,
        new_encoder: Encoder,
        old_encoders: dict[str, Encoder],
        force: bool = False,
        backfill: str = "none",
        eval_set: EvalSet | None = None,
        backfill_job: str | None = None,
        stop_backfills: StopBackfills | None = None,
    ) -> dict[str, Any]:
        """Check, gate and switch; the history entry (with its reports). Runs in a worker thread.
        ``backfill_job``: the background backfill job that starts after the switch (service.backfill);
        ``stop_backfills`` cancels the collection's running backfills just before it (their ids go in
        the entry)."""
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
            reasons = self.incompatible(collection, to)
            if reasons:
                raise MigrationRefused(
                    f"refusing to migrate '{collection.name}' to {to}: it is not compatible by spec with "
                    + "; ".join(reasons) + ". Re-embed into a new collection instead, or train the new model "
                    "with --compatible-with (BCT/BT²/OCA)."
                )  # fmt: skip
            reports, gate = self._gate(collection, to, new_encoder, old_encoders, eval_set)
            failed = [v for v, r in reports.items() if not r.get("criterion_met")]
            if gate == "missing" and not force:
                raise MigrationRefused(
                    f"no evaluation set to check {to} against {active}: PUT /v1/collections/{collection.name}"
                    "/eval-set (labelled inputs), send one with the migration, or pass force to skip the gate"
                )
            if failed and not force:
                detail = "; ".join(
                    f"vs {v}: new/old top-1 {reports[v]['new_old']['top1']:.4f} <= old/old "
                    f"{reports[v]['old_old']['top1']:.4f}" for v in failed
                )  # fmt: skip
                raise MigrationRefused(f"compatibility gate failed for {to} ({detail}); pass force to migrate anyway")
            entry: dict[str, Any] = {
                "id": len(collection.state.history) + 1,
                "kind": "migrate",
                "from": active,
                "to": to,
                "at": time.time(),
                "forced": bool(force and (failed or gate == "missing")),
                "gate": "forced" if force and (failed or gate == "missing") else "passed",
                "eval_source": gate,
                "reports": reports,
                "backfill": backfill,
                **({"backfill_job": backfill_job} if backfill_job else {}),
            }
            if stop_backfills is not None:
                entry["cancelled_backfills"] = stop_backfills()
            collection.set_active_encoder(to, new_encoder.spec.dim, entry)
            return entry

    def _gate(
        self,
        collection: Collection,
        to: str,
        new_encoder: Encoder,
        old_encoders: dict[str, Encoder],
        eval_set: EvalSet | None,
    ) -> tuple[dict[str, dict[str, Any]], str]:
        """Reports of ``to`` against each gallery version whose model is here, and where the data came from."""
        active = collection.config.encoder
        assert active is not None
        if eval_set is None:
            doc = self.store.get_doc(EVAL_NAMESPACE, collection.name)
            if doc is not None:
                eval_set = EvalSet(doc["inputs"], doc["labels"], "collection")
        if eval_set is None:
            from_card = card_report(self.models_dir, to, active)
            return ({active: from_card}, "card") if from_card is not None else ({}, "missing")
        inputs = _model_inputs(eval_set.inputs, new_encoder.spec.modality)
        labels = [json.dumps(y, sort_keys=True) for y in eval_set.labels]
        reports = {}
        for version, old in old_encoders.items():
            dims = self.compat.chain(to, version)
            report = compatibility_report(old, new_encoder, inputs, labels, compat_dims=dims)
            reports[version] = report.to_json()
        return reports, eval_set.source

    def rollback(self, collection: Collection, stop_backfills: StopBackfills | None = None) -> dict[str, Any]:
        """Back to the encoder the last effective migration came from. A background backfill still
        running is cancelled first (``stop_backfills``); the items it moved keep their new vectors and
        are listed in ``unsearchable`` like any other item the old encoder cannot compare with."""
        with self._lock(collection.name):
            stack: list[str] = []
            for entry in collection.state.history:
                if entry.get("kind") == "migrate":
                    stack.append(entry["from"])
                elif entry.get("kind") == "rollback" and stack:
                    stack.pop()
            if not stack:
                raise InvalidInput(f"collection '{collection.name}' has no migration to roll back")
            target, active = stack[-1], collection.config.encoder
            dim = self.compat.dim_of(target) or collection.dim_for(target)
            # first: items a backfill moves from now on would be missing from the count below (a batch
            # being written at this moment may still land; none can after the switch)
            cancelled = stop_backfills() if stop_backfills is not None else None
            lost = {
                v: n
                for v, n in self.gallery_versions(collection).items()
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
            }
            if cancelled is not None:
                entry["cancelled_backfills"] = cancelled
            collection.set_active_encoder(target, dim, entry)
            return entry
