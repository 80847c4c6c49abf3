"""The compatibility report: the BCT protocol (Shen et al. 2020) and, for chains, AC/AM (Biondi et al.).

Protocol. Every query is compared with a gallery by cosine similarity; a hit is an item of the
query's label. ``M(q, g)`` is the retrieval score (CMC top-1 and mAP) of queries embedded by model
``q`` against a gallery embedded by model ``g``:

* self-test ``M(new, new)``, cross-test ``M(new, old)``, baseline ``M(old, old)``;
* the empirical compatibility criterion: ``M(new, old) > M(old, old)`` (top-1);
* negative flips: the share of queries whose top-1 hit the old model got right and the new query
  gets wrong against the same (old) gallery — what users of a migrated collection lose.

Normalisation (a choice, documented in docs/compat.md): a new-model query compared with
old-model vectors is cut to its first ``compat_dims`` dimensions and *renormalised* before the
cosine; the gallery side is renormalised too. BT-2's public evaluation code normalises the full
vector and then slices it, which scores a different quantity; renormalising is what a cosine index
of the old vectors computes, so the service and this report agree.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import numpy as np

from models.core.encoder import Encoder, encode
from models.core.spec import EncoderSpec

QUERY_CHUNK = 512  # queries scored at once: bounds the (chunk, gallery) score matrix in memory
# inputs encoded at once: ONNX Runtime's arena grows with the batch; at 224 px 256 images peaked near
# 7 GB per session (BT² holds two: the old tower and the teacher), 32 about 1 GB
ENCODE_BATCH = 32


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _check(
    query: np.ndarray,
    query_labels: np.ndarray,
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    compat_dims: int | None,
    leave_self_out: bool,
    groups: np.ndarray | None = None,
) -> None:
    if query.ndim != 2 or gallery.ndim != 2:
        raise ValueError("query and gallery must be 2-d arrays (n, dim)")
    if len(query) != len(query_labels) or len(gallery) != len(gallery_labels):
        raise ValueError("every vector needs exactly one label")
    if len(query) == 0 or len(gallery) == 0:
        raise ValueError("query and gallery must not be empty")
    if compat_dims is not None:
        if compat_dims < 1 or compat_dims > query.shape[1] or compat_dims > gallery.shape[1]:
            raise ValueError(f"compat_dims {compat_dims} must be in 1..min(query dim {query.shape[1]}, "
                             f"gallery dim {gallery.shape[1]})")  # fmt: skip
    elif query.shape[1] != gallery.shape[1]:
        raise ValueError(f"query dim {query.shape[1]} != gallery dim {gallery.shape[1]}; "
                         "pass compat_dims to compare a prefix")  # fmt: skip
    if leave_self_out and len(query) != len(gallery):
        raise ValueError("leave_self_out needs query i and gallery i to be the same item (equal lengths)")
    if groups is not None and (not leave_self_out or len(groups) != len(query)):
        raise ValueError("groups needs leave_self_out and one group id per item")


def retrieval_hits(
    query: np.ndarray,
    query_labels: np.ndarray,
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    compat_dims: int | None = None,
    leave_self_out: bool = False,
    groups: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per query: (top-1 correct as bool, average precision; NaN when the gallery holds no match).

    ``groups`` (with ``leave_self_out``): item i belongs to group ``groups[i]`` (e.g. the several
    names of one emoji); a query then leaves its whole group out, not only itself, so that finding
    another copy of the same item does not count as retrieving its class.
    """
    query_labels, gallery_labels = np.asarray(query_labels), np.asarray(gallery_labels)
    _check(query, query_labels, gallery, gallery_labels, compat_dims, leave_self_out, groups)
    if compat_dims is not None:
        query, gallery = query[:, :compat_dims], gallery[:, :compat_dims]
    q, g = _unit(query), _unit(gallery)
    group_of = None if groups is None else np.asarray(groups)
    top1 = np.zeros(len(q), dtype=bool)
    ap = np.full(len(q), np.nan, dtype=np.float64)
    ranks = np.arange(1, len(g) + 1, dtype=np.float64)
    for start in range(0, len(q), QUERY_CHUNK):
        stop = min(start + QUERY_CHUNK, len(q))
        scores = q[start:stop] @ g.T  # (chunk, G)
        relevant = query_labels[start:stop, None] == gallery_labels[None, :]  # (chunk, G)
        if group_of is not None:
            same = group_of[start:stop, None] == group_of[None, :]  # (chunk, G)
            scores[same] = -np.inf
            relevant[same] = False
        elif leave_self_out:
            rows = np.arange(stop - start)
            scores[rows, rows + start] = -np.inf
            relevant[rows, rows + start] = False
        order = np.argsort(-scores, axis=1, kind="stable")  # (chunk, G) best first
        hits = np.take_along_axis(relevant, order, axis=1)  # (chunk, G) relevance in rank order
        top1[start:stop] = hits[:, 0]
        n_rel = hits.sum(axis=1)
        precision = np.cumsum(hits, axis=1) / ranks  # (chunk, G) precision at every rank
        with np.errstate(invalid="ignore", divide="ignore"):
            ap[start:stop] = np.where(n_rel > 0, (precision * hits).sum(axis=1) / n_rel, np.nan)
    return top1, ap


def cross_test(
    query: np.ndarray,
    query_labels: np.ndarray,
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    compat_dims: int | None = None,
    leave_self_out: bool = False,
) -> dict[str, float]:
    """CMC top-1 and mAP of cosine retrieval of ``query`` against ``gallery``.

    With ``compat_dims`` both sides are cut to their first ``compat_dims`` dims and renormalised.
    ``leave_self_out``: query i is gallery item i (the test set as query and gallery) and is
    excluded from its own results. Queries whose label has no other gallery item count as misses in
    top-1 and are left out of mAP (their AP is undefined).
    """
    top1, ap = retrieval_hits(query, query_labels, gallery, gallery_labels, compat_dims, leave_self_out)
    defined = ap[~np.isnan(ap)]
    return {"top1": float(top1.mean()), "mAP": float(defined.mean()) if len(defined) else 0.0}


def embed(encoder: Encoder, inputs: Sequence[Any] | np.ndarray, batch: int = ENCODE_BATCH) -> np.ndarray:
    """All inputs through ``encoder`` in batches (bounded memory for a whole test set)."""
    parts = [encode(encoder, cast(Sequence[Any], inputs[i : i + batch])) for i in range(0, len(inputs), batch)]
    return np.concatenate(parts) if parts else np.zeros((0, encoder.spec.dim), np.float32)


@dataclass
class CompatReport:
    old: str  # name@version
    new: str
    compat_dims: int | None  # prefix of the new vector compared with old vectors (None: full vectors)
    n: int  # evaluation items (query = gallery, leave-self-out)
    old_old: dict[str, float]
    new_old: dict[str, float]
    new_new: dict[str, float]
    criterion_met: bool  # new/old top-1 > old/old top-1
    negative_flips: float  # share of queries right at top-1 with old/old and wrong with new/old
    negative_flips_new_new: float  # the same against a fully re-embedded gallery (after backfill)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True)

    def markdown(self) -> str:
        rows = [("old/old", self.old_old), ("new/old", self.new_old), ("new/new", self.new_new)]
        table = "\n".join(f"| {name} | {m['top1']:.4f} | {m['mAP']:.4f} |" for name, m in rows)
        verdict = "met" if self.criterion_met else "NOT met"
        return (f"Compatibility of `{self.new}` with `{self.old}` ({self.n} items, query = gallery, "
                f"leave-self-out, cosine; compat dims {self.compat_dims or 'all'})\n\n"
                f"| test | top-1 | mAP |\n|---|---|---|\n{table}\n\n"
                f"Criterion new/old > old/old: **{verdict}**. Negative flips: {self.negative_flips:.4f} "
                f"(after backfill: {self.negative_flips_new_new:.4f}).\n")  # fmt: skip


def report_from_vectors(
    old_vecs: np.ndarray,
    new_vecs: np.ndarray,
    labels: Sequence[Any] | np.ndarray,
    compat_dims: int | None,
    old: str = "old",
    new: str = "new",
    leave_self_out: bool = True,
    groups: np.ndarray | None = None,
) -> CompatReport:
    """The report from precomputed embeddings of the same items (row i of both = item i); ``groups``
    as in ``retrieval_hits``."""
    y = np.asarray(labels)
    hits = (retrieval_hits(old_vecs, y, old_vecs, y, None, leave_self_out, groups),
            retrieval_hits(new_vecs, y, old_vecs, y, compat_dims, leave_self_out, groups),
            retrieval_hits(new_vecs, y, new_vecs, y, None, leave_self_out, groups))  # fmt: skip
    return _report(hits, compat_dims, len(y), old, new)


Hits = tuple[np.ndarray, np.ndarray]  # per query: top-1 correct, average precision


def _report(hits: tuple[Hits, Hits, Hits], compat_dims: int | None, n: int, old: str, new: str,
            extra: dict[str, Any] | None = None) -> CompatReport:  # fmt: skip
    """The report of the (old/old, new/old, new/new) per-query hits."""

    def summary(hit: np.ndarray, ap: np.ndarray) -> dict[str, float]:
        defined = ap[~np.isnan(ap)]
        return {"top1": float(hit.mean()), "mAP": float(defined.mean()) if len(defined) else 0.0}

    (oo_hit, oo_ap), (no_hit, no_ap), (nn_hit, nn_ap) = hits
    old_old, new_old, new_new = summary(oo_hit, oo_ap), summary(no_hit, no_ap), summary(nn_hit, nn_ap)
    return CompatReport(
        old=old, new=new, compat_dims=compat_dims, n=n, old_old=old_old, new_old=new_old, new_new=new_new,
        criterion_met=new_old["top1"] > old_old["top1"],
        negative_flips=float((oo_hit & ~no_hit).mean()),
        negative_flips_new_new=float((oo_hit & ~nn_hit).mean()), extra=extra or {},
    )  # fmt: skip


def compatibility_report(
    old: Encoder,
    new: Encoder,
    inputs: Sequence[Any] | np.ndarray,
    labels: Sequence[Any] | np.ndarray,
    leave_self_out: bool = True,
    compat_dims: int | None = None,
) -> CompatReport:
    """Embed ``inputs`` with both encoders and run the BCT protocol.

    The prefix compared with old vectors is ``compat_dims`` when given, else ``new.spec.compat_dims``
    (for a chain v3→v1 pass ``compat_chain(...)``); a pair with neither must have equal dims and is
    compared raw (the "Independent" baseline: two unrelated spaces, expected near chance).
    """
    if len(inputs) != len(labels):
        raise ValueError(f"{len(inputs)} inputs but {len(labels)} labels")
    dims = compat_dims if compat_dims is not None else new.spec.compat_dims
    report = report_from_vectors(embed(old, inputs), embed(new, inputs), labels, dims, old.spec.key, new.spec.key,
                                 leave_self_out)  # fmt: skip
    return report


def tower_report_from_vectors(
    old_queries: np.ndarray,
    new_queries: np.ndarray,
    query_labels: Sequence[Any] | np.ndarray,
    old_gallery: np.ndarray,
    new_gallery: np.ndarray,
    gallery_labels: Sequence[Any] | np.ndarray,
    compat_dims: int | None,
    old: str = "old",
    new: str = "new",
) -> CompatReport:
    """The report of a two-tower model, queries apart from the gallery (text → image, user → item):
    old/old is the old query tower against the old gallery, new/old the new query tower's prefix
    against the old gallery, new/new both new towers; no item is left out."""
    q, g = np.asarray(query_labels), np.asarray(gallery_labels)
    hits = (retrieval_hits(old_queries, q, old_gallery, g), retrieval_hits(new_queries, q, old_gallery, g, compat_dims),
            retrieval_hits(new_queries, q, new_gallery, g))  # fmt: skip
    return _report(hits, compat_dims, len(q), old, new, {"gallery": len(g), "queries": "tower"})


def compat_chain(spec_of: Callable[[str], EncoderSpec], new_key: str, old_key: str) -> int | None:
    """The prefix length to compare a ``new_key`` query with ``old_key`` vectors, or None.

    Follows ``compatible_with`` from ``new_key`` down to ``old_key``; the answer is the smallest
    ``compat_dims`` along the way (v3's first 160 dims match v2, v2's first 128 match v1: v3→v1 uses
    128). ``new_key == old_key`` gives the full dimension. A model that declares ``compatible_with``
    without ``compat_dims`` is compatible on the old model's full width. Errors of ``spec_of`` (an
    unknown model) propagate: the caller decides whether that means "refuse".
    """
    if new_key == old_key:
        return spec_of(new_key).dim
    dims: int | None = None
    seen = {new_key}
    key = new_key
    while key != old_key:
        spec = spec_of(key)
        if spec.compatible_with is None:
            return None
        parent = spec.compatible_with
        if parent in seen:
            raise ValueError(f"compatible_with forms a cycle at {parent}")
        seen.add(parent)
        step = spec.compat_dims if spec.compat_dims is not None else spec_of(parent).dim
        dims = step if dims is None else min(dims, step)
        key = parent
    return dims
