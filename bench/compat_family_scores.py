"""Each family's own metrics for ``compat_families.py`` (issue 14): old/old, new/old and new/new.

* facenet: verification accuracy (10-fold LFW protocol over balanced identity pairs) and R@1 (one
  Google drawing per identity is the gallery, the other drawings query it), as the recipe scores them;
* two-branch: t2i and i2t R@1/5/10 over the evaluation drawings and their captions, by concept;
* convirt: i2i P@5 (image queries against the gallery, by category) and t2i P@5 (the names);
* unified: R@10 of each held-out student's held-out lecturers (``models.training.unified``).

A *new/old* figure takes the query side from the new model, cut to its first ``compat_dims`` dims and
renormalised (what a cosine index of the old vectors computes), and the gallery side from the old one.
For a pair-based metric (verification) the first image of a pair is the query. ``split`` is ``test``
or ``val``: the same config keys the recipe reads decide which items are scored, so a model trained
with ``VALIDATION``'s keys is scored on items it never saw, and none of them is a test item.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from models.compat.pretrained import hits_at_k, unit
from models.compat.report import embed
from models.core.registry import load_encoder
from models.core.spec import EncoderSpec
from models.training.run import parse_config

# Over a family's config: the recipe holds a validation split out of training and the scores below use it.
VALIDATION: dict[str, dict[str, Any]] = {
    "facenet": {"evaluate_on": "val"},  # identities carved out of the training identities
    "two-branch": {"data": {"eval_split": "val"}},  # the odd half of the Twitter drawings (test: the even half)
    "convirt": {"val_percent": 20},  # concepts carved out of the training concepts by a second hash
    "unified": {"val_holdout": 0.2},  # ratings carved out of each student's training ratings
}
Scores = dict[str, dict[str, float]]  # metric -> {"old/old", "new/old", "new/new"}


def tower(artifact: Path, kind: str) -> Path:
    from service.cli.compat import query_tower

    return query_tower(artifact, kind)


def vectors(old: Path, new: Path, inputs: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(old, new prefix, new full) unit vectors of ``inputs``."""
    d = EncoderSpec.load(new).compat_dims or EncoderSpec.load(old).dim
    o, n = embed(load_encoder(old), inputs), embed(load_encoder(new), inputs)
    return unit(o), unit(n[:, :d]), unit(n)


def three(measure: Callable[[np.ndarray, np.ndarray], dict[str, float]], old: tuple[np.ndarray, np.ndarray],
          new: tuple[np.ndarray, np.ndarray], prefix: np.ndarray) -> Scores:  # fmt: skip
    """``measure(query vectors, gallery vectors)`` for old/old, new/old and new/new, regrouped by metric."""
    runs = {"old/old": measure(old[0], old[1]), "new/old": measure(prefix, old[1]), "new/new": measure(*new)}
    return {metric: {pair: float(r[metric]) for pair, r in runs.items()} for metric in runs["old/old"]}


def facenet(cfg: dict[str, Any], old: Path, new: Path, cache: Path, split: str) -> Scores:
    from models.data.identities import load_emoji_identities
    from models.training.facenet_config import FaceNetTrainConfig
    from models.training.facenet_steps import held_out
    from models.training.verification import gallery_split, identity_pairs, nearest_hits, ten_fold_verification

    c = parse_config(FaceNetTrainConfig, {**cfg, **VALIDATION["facenet"]} if split == "val" else cfg)
    _, test = held_out(c, load_emoji_identities(cache, c.image_size, c.limit))
    pairs, folds = identity_pairs(test.labels, np.random.default_rng(c.split_seed))
    same = test.labels[pairs[:, 0]] == test.labels[pairs[:, 1]]
    gallery, queries = gallery_split(test.labels, test.views, "google")
    o, prefix, n = vectors(old, new, list(test.crops))

    def measure(q: np.ndarray, g: np.ndarray) -> dict[str, float]:
        dist = np.linalg.norm(q[pairs[:, 0]] - g[pairs[:, 1]], axis=1).astype(np.float64)
        hits = nearest_hits(g[gallery], test.labels[gallery], q[queries], test.labels[queries])
        return {"verification": ten_fold_verification(dist, same, folds)["verification_accuracy"],
                "R@1": float(hits.mean())}  # fmt: skip

    return three(measure, (o, o), (n, n), prefix)


def two_branch(cfg: dict[str, Any], old: Path, new: Path, cache: Path, split: str) -> Scores:
    from models.data.pairs import load_pair_data

    d = {**cfg.get("data", {}), "eval_split": split}
    items = load_pair_data(d.get("source", "emoji"), cache, d.get("limit"), d.get("eval_source"),
                           d.get("eval_fraction", 0.1), cfg["seed"], d.get("holdout_concepts", 0.0),
                           d.get("split_seed", 0), d["eval_split"]).eval  # fmt: skip
    labels = np.asarray([it.key for it in items])
    images = vectors(old, new, [it.image for it in items])
    texts = vectors(tower(old, "text"), tower(new, "text"), [it.captions[0] for it in items])
    out: Scores = {}
    for direction, (q, g) in {"t2i": (texts, images), "i2t": (images, texts)}.items():

        def measure(qv: np.ndarray, gv: np.ndarray, direction: str = direction) -> dict[str, float]:
            return {f"{direction} R@{k}": float(hits_at_k(qv, gv, labels, labels, k).mean()) for k in (1, 5, 10)}

        out.update(three(measure, (q[0], g[0]), (q[2], g[2]), q[1]))
    return out


def convirt(cfg: dict[str, Any], old: Path, new: Path, cache: Path, split: str) -> Scores:
    from models.data.convirt_pairs import load_pairs, precision_at_k

    val = VALIDATION["convirt"]["val_percent"] if split == "val" else 0
    data = load_pairs(cfg["data"], cfg.get("limit"), cfg["test_percent"], cfg["label"], cache.parent, val_percent=val)
    gallery = vectors(old, new, data.gallery)
    queries = vectors(old, new, data.image_queries)
    texts = vectors(tower(old, "text"), tower(new, "text"), data.texts)
    out: Scores = {}
    for name, q, labels in (("i2i", queries, data.query_labels), ("t2i", texts, data.text_labels)):

        def measure(qv: np.ndarray, gv: np.ndarray, name: str = name, labels: list[str] = labels) -> dict[str, float]:
            return {f"{name} P@5": precision_at_k(qv, gv, labels, data.gallery_labels, False, [5])["p@5"]}

        out.update(three(measure, (q[0], gallery[0]), (q[2], gallery[2]), q[1]))
    return out


def unified(cfg: dict[str, Any], old: Path, new: Path, cache: Path, split: str) -> Scores:
    from models.training.unified import UnifiedTrainConfig, load_data, recall_at_k, seen_matrix, splits

    c = parse_config(UnifiedTrainConfig, {**cfg, **VALIDATION["unified"]} if split == "val" else cfg)
    data = load_data(c.data, c.columns, c.limit, cache)
    test, val, _ = splits(data, c)
    target = val if split == "val" and val is not None else test
    evaluated = np.asarray(sorted(target.held_out), dtype=np.int64)
    seen = seen_matrix(data, target.train)  # what the model trained on is left out of its ranking
    records = [data.queries[int(r)] for r in evaluated]
    q = vectors(tower(old, "record"), tower(new, "record"), records)
    i = vectors(old, new, data.items)

    def measure(qv: np.ndarray, iv: np.ndarray) -> dict[str, float]:
        return {"R@10": recall_at_k(qv @ iv.T, evaluated, target, seen, [10])["recall@10"]}

    return three(measure, (q[0], i[0]), (q[2], i[2]), q[1])


FAMILIES = {"facenet": facenet, "two-branch": two_branch, "convirt": convirt, "unified": unified}
