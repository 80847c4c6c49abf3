"""Query → document text retrieval sets built from data we already fetch, with a fixed val/test split.

Two sets, each a list of queries and a gallery of documents, both labelled with the id of the item
they come from; a query's relevant documents are the gallery entries with its label.

* ``xray``: Indiana University chest X-ray reports (``models.data.xray_reports``). Query = the
  report's IMPRESSION, document = its FINDINGS. Reports missing either are dropped (3,419 of 3,927
  have both). Many texts are boilerplate shared by hundreds of reports ("No acute cardiopulmonary
  abnormality." 302 times), and a repeated text cannot tell which partner is right, so the set is
  made one-to-one: walking the reports in uid order, a report is kept only when neither its
  impression nor its findings (lower-cased, whitespace-collapsed) was seen in a kept report before.
  1,380 pairs remain; label = report uid.
* ``emoji``: the emoji-data names (``models.data.emoji``). Query = the Unicode name in lower case
  ("smiling face with sunglasses"), documents = the emoji's short names with ``_`` as spaces
  ("sunglasses"). A short name equal to the query once ``_``/``-`` become spaces is the same name and
  is left out; emoji with no other name are dropped, as are repeated query names (first kept). 888
  emoji, 917 short names; label = the emoji's code points.

Split (both sets): items are shuffled by ``numpy.random.default_rng(SPLIT_SEED)`` (seed 0);
the first ``VAL_FRACTION`` (40%) of the shuffled items form ``val``, the rest ``test`` (xray 552 / 828,
emoji 355 / 533). Each split is retrieved within itself: its queries against its own documents.
Choices (quantisation options and the like) are made on ``val``; figures are reported on ``test``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from models.core.fetch import Fetcher

SPLIT_SEED = 0
VAL_FRACTION = 0.4
SETS = ("xray", "emoji")
Split = Literal["val", "test", "all"]


@dataclass(frozen=True)
class RetrievalSet:
    name: str
    queries: list[str]
    query_labels: np.ndarray  # (Q,) item id of each query
    documents: list[str]
    document_labels: np.ndarray  # (D,) item id of each document


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def xray_pairs(cache_dir: Path, fetcher: Fetcher | None = None) -> list[tuple[str, str, str]]:
    """``(uid, impression, findings)`` of the one-to-one report set described in the module doc."""
    from models.data.xray_reports import load_reports

    seen_queries: set[str] = set()
    seen_documents: set[str] = set()
    pairs = []
    for report in load_reports(cache_dir, fetcher):
        query, document = _norm(report.impression), _norm(report.findings)
        if not query or not document or query in seen_queries or document in seen_documents:
            continue
        seen_queries.add(query)
        seen_documents.add(document)
        pairs.append((report.uid, report.impression, report.findings))
    return pairs


def emoji_names(cache_dir: Path, fetcher: Fetcher | None = None) -> list[tuple[str, str, list[str]]]:
    """``(code, name, other names)`` of every emoji with a name besides its Unicode one."""
    from models.data.emoji import load_emoji

    def spaced(name: str) -> str:
        return _norm(name.replace("_", " ").replace("-", " "))

    seen: set[str] = set()
    out = []
    for emoji in load_emoji(cache_dir, fetcher=fetcher):
        query = emoji.text
        others = [s.replace("_", " ") for s in emoji.short_names if spaced(s) != spaced(query)]
        if others and spaced(query) not in seen:
            seen.add(spaced(query))
            out.append((emoji.code, query, others))
    return out


def _split_ids(ids: list[str], split: Split) -> set[str]:
    if split == "all":
        return set(ids)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(ids))
    n_val = round(VAL_FRACTION * len(ids))
    chosen = order[:n_val] if split == "val" else order[n_val:]
    return {ids[i] for i in chosen}


def load_retrieval_set(name: str, split: Split, cache_dir: Path, fetcher: Fetcher | None = None) -> RetrievalSet:
    """The ``val``, ``test`` or ``all`` part of set ``name`` (``xray`` or ``emoji``)."""
    items: list[tuple[str, str, list[str]]]
    if name == "xray":
        items = [(uid, query, [document]) for uid, query, document in xray_pairs(cache_dir, fetcher)]
    elif name == "emoji":
        items = emoji_names(cache_dir, fetcher)
    else:
        raise ValueError(f"unknown retrieval set '{name}'; known: {SETS}")
    keep = _split_ids([item_id for item_id, _, _ in items], split)
    items = [item for item in items if item[0] in keep]
    documents = [(item_id, doc) for item_id, _, docs in items for doc in docs]
    return RetrievalSet(
        name=f"{name}:{split}",
        queries=[query for _, query, _ in items],
        query_labels=np.array([item_id for item_id, _, _ in items]),
        documents=[doc for _, doc in documents],
        document_labels=np.array([item_id for item_id, _ in documents]),
    )


def recall_hits(
    query: np.ndarray, query_labels: np.ndarray, gallery: np.ndarray, gallery_labels: np.ndarray, ks: tuple[int, ...]
) -> dict[int, np.ndarray]:
    """Per k, per query: whether a relevant document is among the ``k`` most cosine-similar (bool (Q,)).

    Ties are broken by gallery order (stable sort), as in ``models.compat.report.retrieval_hits``.
    """
    q = query / np.maximum(np.linalg.norm(query, axis=1, keepdims=True), 1e-12)
    g = gallery / np.maximum(np.linalg.norm(gallery, axis=1, keepdims=True), 1e-12)
    top = max(ks)
    hits = {k: np.zeros(len(q), dtype=bool) for k in ks}
    for start in range(0, len(q), 512):  # bounds the (chunk, G) score matrix
        scores = q[start : start + 512] @ g.T  # (chunk, G)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :top]  # (chunk, top) best first
        relevant = gallery_labels[order] == query_labels[start : start + 512, None]  # (chunk, top)
        for k in ks:
            hits[k][start : start + 512] = relevant[:, :k].any(axis=1)
    return hits


def bootstrap_ci(
    per_query: np.ndarray, resamples: int = 1000, seed: int = 0, statistic: Callable[[np.ndarray], float] = np.mean
) -> tuple[float, float]:
    """95% percentile bootstrap interval of ``statistic`` over queries (``per_query`` (Q,) or (Q, ...))."""
    rng = np.random.default_rng(seed)
    n = len(per_query)
    values = [float(statistic(per_query[rng.integers(0, n, n)])) for _ in range(resamples)]
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)
