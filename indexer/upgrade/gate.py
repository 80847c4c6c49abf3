"""What a migration must pass before it switches the query encoder.

1. The spec check: the new model must be compatible *by spec* with every encoder version in the
   gallery (``compatible_with`` followed transitively; its prefix must be exactly that version's
   width): ``spec_incompatibilities``.
2. The gate: the BCT compatibility report (``models.compat.report``) of the new model against each
   version in the gallery whose model is installed, on the collection's labelled evaluation set
   (``indexer.upgrade.eval_set``); without one, a report in the new model's card against the
   active encoder (``card_report``). ``Migrations`` refuses when the criterion
   M(new, old) > M(old, old) fails — unless forced.

The models come from the service's encoder hub, passed in as a plain ``EncoderGetter``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from indexer.collection import Collection
from indexer.upgrade.compat import SpecCompat
from indexer.upgrade.eval_set import EvalSet, model_inputs
from models.compat.report import compatibility_report
from models.core.encoder import Encoder

# The installed encoder of a ``name@version`` key (loads it when needed; ``EncoderNotFound`` if absent).
EncoderGetter = Callable[[str], Encoder]
Reports = dict[str, dict[str, Any]]  # version -> compatibility report (JSON)


def gallery_versions(collection: Collection) -> dict[str, int]:
    """The encoder versions that have items in the collection, with their counts."""
    return {v: n for v, n in collection.version_counts().items() if v is not None and n > 0}


def spec_incompatibilities(compat: SpecCompat, collection: Collection, to: str) -> list[str]:
    """Why ``to`` may not serve each version of the gallery (and the active one); empty if it may."""
    reasons = []
    versions = set(gallery_versions(collection)) | {collection.config.encoder} - {None}
    for version in sorted(v for v in versions if v is not None and v != to):
        if compat.rewriter(to, version) is not None:
            continue  # a transform bridge: its segment is searched through a rewritten view
        dims = compat.chain(to, version)
        width = collection.dim_for(version)
        if compat.spec(version) is None:
            reasons.append(f"{version} (no spec for it on this server, so compatibility cannot be shown)")
        elif dims is None:
            reasons.append(f"{version} ({to} is not compatible_with it, directly or through a chain)")
        elif dims != width:
            reasons.append(f"{version} ({to} compares {dims} dims but {version} vectors have {width})")
    return reasons


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


def old_encoders(compat: SpecCompat, collection: Collection, to: str, get_encoder: EncoderGetter) -> dict[str, Encoder]:
    """The models the gate measures ``to`` against: every gallery version (and the active one) the
    server has a spec for — one without a spec was refused by the spec check already."""
    versions = set(gallery_versions(collection)) | {collection.config.encoder or ""}
    wanted = sorted(v for v in versions if v and v != to and compat.spec(v) is not None)
    return {version: get_encoder(version) for version in wanted}


def gate_reports(
    compat: SpecCompat,
    models_dir: Path,
    collection: Collection,
    to: str,
    new_encoder: Encoder,
    get_encoder: EncoderGetter,
    eval_set: EvalSet | None,
) -> tuple[Reports, str]:
    """Reports of ``to`` (``new_encoder``) against each gallery version whose model is here, and where
    the data came from: the eval set's source, ``"card"``, or ``"missing"`` (no data: no report)."""
    active = collection.config.encoder
    assert active is not None
    if eval_set is None:
        from_card = card_report(models_dir, to, active)
        return ({active: from_card}, "card") if from_card is not None else ({}, "missing")
    inputs = model_inputs(eval_set.inputs, new_encoder.spec.modality)
    labels = [json.dumps(y, sort_keys=True) for y in eval_set.labels]
    reports = {}
    for version, old in old_encoders(compat, collection, to, get_encoder).items():
        dims = compat.chain(to, version)
        report = compatibility_report(old, new_encoder, inputs, labels, compat_dims=dims)
        reports[version] = report.to_json()
    return reports, eval_set.source


def gate_failures(reports: Reports) -> list[str]:
    """The versions whose report fails the criterion M(new, old) > M(old, old)."""
    return [v for v, r in reports.items() if not r.get("criterion_met")]


def describe_failures(reports: Reports, failed: list[str]) -> str:
    return "; ".join(
        f"vs {v}: new/old top-1 {reports[v]['new_old']['top1']:.4f} <= old/old {reports[v]['old_old']['top1']:.4f}"
        for v in failed
    )
