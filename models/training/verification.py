"""Face verification protocols: LFW-style 10-fold threshold selection, recall@1 on an identity
gallery, and the pairs they run on (LFW's ``pairs.txt``, or pairs drawn from labelled images).

Distances are Euclidean between embeddings, the quantity the service's ``/verify`` compares with
the threshold stored in the encoder spec.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from models.training.recipe import TrainingError


def best_threshold(dist: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """The threshold (distance < t means "same") with the best accuracy on these pairs, and that
    accuracy. Candidates lie midway between consecutive sorted distances (and beyond both ends)."""
    order = np.argsort(dist, kind="stable")
    d, s = dist[order], same[order].astype(np.int64)
    # Accepting the first i pairs (i = 0..n): correct = same among them + different among the rest.
    same_before = np.concatenate([[0], np.cumsum(s)])
    diff_after = (len(s) - s.sum()) - np.concatenate([[0], np.cumsum(1 - s)])
    correct = same_before + diff_after
    i = int(np.argmax(correct))
    edges = np.concatenate([[d[0] - 1e-6], (d[:-1] + d[1:]) / 2, [d[-1] + 1e-6]])
    return float(edges[i]), float(correct[i] / len(s))


def ten_fold_verification(dist: np.ndarray, same: np.ndarray, folds: np.ndarray) -> dict[str, float]:
    """LFW protocol: for each fold, pick the threshold on the other folds and score it on this one.
    Returns the mean and std of the fold accuracies and the mean chosen threshold."""
    accuracies, thresholds = [], []
    for fold in np.unique(folds):
        held = folds == fold
        threshold, _ = best_threshold(dist[~held], same[~held])
        accuracies.append(float(np.mean((dist[held] < threshold) == same[held])))
        thresholds.append(threshold)
    if len(accuracies) < 2:
        raise TrainingError("10-fold verification needs at least two folds")
    return {
        "verification_accuracy": float(np.mean(accuracies)),
        "verification_accuracy_std": float(np.std(accuracies)),
        "threshold": float(np.mean(thresholds)),
    }


def pair_distances(vectors: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """(N, D) vectors, (P, 2) row pairs -> (P,) Euclidean distances."""
    return np.linalg.norm(vectors[pairs[:, 0]] - vectors[pairs[:, 1]], axis=1).astype(np.float64)


def nearest_hits(
    gallery: np.ndarray, gallery_labels: np.ndarray, queries: np.ndarray, query_labels: np.ndarray
) -> np.ndarray:
    """(Q,) bool: whether each query's nearest gallery vector (Euclidean) has the query's identity."""
    d = (queries**2).sum(1)[:, None] - 2 * queries @ gallery.T + (gallery**2).sum(1)[None, :]  # (Q, G)
    return np.asarray(gallery_labels[np.argmin(d, axis=1)] == query_labels)


def distance_summary(dist: np.ndarray, same: np.ndarray) -> dict[str, float]:
    """Mean same / different distances and the gap between them (larger is better separated)."""
    same_mean, diff_mean = float(dist[same].mean()), float(dist[~same].mean())
    return {"same_distance": same_mean, "different_distance": diff_mean, "distance_gap": diff_mean - same_mean,
            "separation": float(dist[~same].min() - dist[same].max())}  # fmt: skip


def read_lfw_pairs(pairs_file: Path, root: Path) -> tuple[list[tuple[Path, Path]], np.ndarray, np.ndarray]:
    """LFW's ``pairs.txt``: a "folds count" header, then ``name i j`` (same person) or ``name1 i
    name2 j`` (different) lines naming ``root/<name>/<name>_<i:04d>.jpg``. Returns the pairs,
    ``same`` (n,) bool and ``fold`` (n,) int, folds in file order as the protocol defines them."""
    lines = [ln.split() for ln in pairs_file.read_text().splitlines() if ln.strip()]
    if not lines or len(lines[0]) != 2:
        raise TrainingError(f"{pairs_file}: the first line must be '<folds> <pairs per fold>'")
    folds, per_fold = int(lines[0][0]), int(lines[0][1])

    def path(name: str, number: str) -> Path:
        return root / name / f"{name}_{int(number):04d}.jpg"

    pairs, same = [], []
    for n, fields in enumerate(lines[1:], start=2):
        if len(fields) == 3:
            pairs.append((path(fields[0], fields[1]), path(fields[0], fields[2])))
            same.append(True)
        elif len(fields) == 4:
            pairs.append((path(fields[0], fields[1]), path(fields[2], fields[3])))
            same.append(False)
        else:
            raise TrainingError(f"{pairs_file}:{n}: expected 'name i j' or 'name1 i name2 j'")
    per_block = 2 * per_fold  # each fold: per_fold same pairs then per_fold different pairs
    if len(pairs) != folds * per_block:
        raise TrainingError(f"{pairs_file}: header says {folds} x 2 x {per_fold} pairs, found {len(pairs)}")
    missing = sorted({str(p) for pair in pairs for p in pair if not p.is_file()})
    if missing:
        raise TrainingError(f"{len(missing)} images named by {pairs_file} are missing, e.g. {missing[:3]}")
    return pairs, np.asarray(same), np.arange(len(pairs)) // per_block


def identity_pairs(labels: np.ndarray, rng: np.random.Generator, folds: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Balanced verification pairs: per identity with >= 2 images one same pair and one different
    pair. Returns (n, 2) row indices and (n,) fold ids (both pairs of an identity share a fold)."""
    by_identity = [np.flatnonzero(labels == i) for i in np.unique(labels)]
    usable = [rows for rows in by_identity if len(rows) >= 2]
    if len(usable) < folds:
        raise TrainingError(f"verification needs >= {folds} identities with two images, found {len(usable)}")
    pairs, fold_ids = [], []
    for n, rows in enumerate(usable):
        a, b = rng.choice(rows, 2, replace=False)
        other = usable[(n + 1 + int(rng.integers(len(usable) - 1))) % len(usable)]  # any other identity
        pairs += [(a, b), (a, int(rng.choice(other)))]
        fold_ids += [n % folds] * 2
    return np.asarray(pairs, np.int64), np.asarray(fold_ids, np.int64)


def gallery_split(labels: np.ndarray, views: Sequence[str], gallery_view: str | None) -> tuple[np.ndarray, np.ndarray]:
    """(gallery rows, query rows): one gallery image per identity (its ``gallery_view`` image, else
    its first), every other image of an identity that has a gallery image is a query."""
    gallery: dict[int, int] = {}
    for row, label in enumerate(labels.tolist()):
        if label not in gallery or (gallery_view is not None and views[row] == gallery_view):
            gallery[label] = row
    chosen = set(gallery.values())
    queries = [r for r in range(len(labels)) if r not in chosen]
    return np.asarray(sorted(chosen), np.int64), np.asarray(queries, np.int64)
