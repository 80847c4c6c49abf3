"""Upgrading between encoders nobody trained for compatibility, from calibration pairs alone.

A calibration set is n inputs encoded by both models: ``old`` (n, d_old) and ``new`` (n, d_new), unit rows.
Three ways to search an old gallery after switching to the new encoder, and an automatic choice:

* ``fuse`` (training-free): orthogonal Procrustes maps new vectors into the old space; a query encoded by
  both models becomes SLERP(old query, mapped new query, blend), scored against the old gallery. The blend
  is chosen on a validation part of the calibration set (0 is exactly old/old, so fuse never loses to it there).
* ``transform`` (FCT, Ramanujan et al. 2022): a learned map old -> new space rewrites the *stored* vectors,
  without raw inputs; new queries then search the rewritten gallery. A residual MLP (cosine + in-batch
  contrastive loss) starting at the ridge solution; ridge alone when it validates better.
* ``adapter`` (BT²/OCA-style): a head on the frozen new encoder outputs d_old + extra dims; the prefix is
  aligned to the old space (cosine + cross-model contrastive), the extra dims keep the new model's
  neighbourhoods (relational distillation), so the head can serve old and, after a backfill, new galleries.
* ``choose`` (``models.compat.choice``): fits each method on 80% of the calibration examples, measures R@10
  on the other 20% and refuses (a result, not an exception) unless the best beats old/old there, surely.

Measuring old/old needs a retrieval task inside the calibration set: either ``query_old``/``query_new``
(query i's answer is item i, e.g. an impression and its findings) or ``labels`` (same-label retrieval,
leave-self-out). Without one, "old query finds its own old vector" is trivially perfect, so no gate exists;
``choose`` then refuses and says so. Everything is seeded: the same inputs give the same maps and figures.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.compat.heads import DEFAULT_D_EXTRA, CompatModel
from models.losses.compat import alignment_loss, relational_distillation_loss
from models.losses.contrastive import in_batch_softmax

BLENDS = tuple(round(0.1 * i, 1) for i in range(11))  # SLERP weight of the mapped new query
RIDGE_ALPHAS = (1e-3, 1e-2, 1e-1, 1.0)  # relative to the mean eigenvalue of old^T old
METHODS = ("fuse", "adapter", "transform")
GROUP_SPLIT_MIN = 50  # label groups from which held-out parts are whole groups (Calibration.split)
Pairs = tuple[np.ndarray, np.ndarray]  # (old, new): inputs encoded by both models, one row each


def with_extra(pairs: Pairs, extra: Pairs | None) -> Pairs:
    """Calibration pairs plus fit-only pairs (inputs without a retrieval task: they fit maps, never score)."""
    if extra is None or not len(extra[0]):
        return pairs
    return np.concatenate([pairs[0], extra[0]]), np.concatenate([pairs[1], extra[1]])


def unit(x: Any) -> np.ndarray:
    a = np.asarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float32)
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def recall_at_k(query: np.ndarray, gallery: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray,
                k: int = 10, leave_self_out: bool = False) -> float:  # fmt: skip
    """Fraction of queries with a same-label gallery item among their k nearest (cosine)."""
    hits = hits_at_k(query, gallery, query_labels, gallery_labels, k, leave_self_out)
    return float(hits.mean()) if len(hits) else 0.0


def hits_at_k(query: np.ndarray, gallery: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray,
              k: int = 10, leave_self_out: bool = False) -> np.ndarray:  # fmt: skip
    """(n_queries,) bool: a same-label gallery item among the query's k nearest (cosine); with
    ``leave_self_out`` query i is gallery item i and cannot find itself."""
    q, g = unit(query), unit(gallery)
    hits = np.zeros(len(q), dtype=bool)
    for start in range(0, len(q), 1024):
        scores = q[start : start + 1024] @ g.T  # (chunk, G)
        if leave_self_out:
            rows = np.arange(len(scores))
            scores[rows, rows + start] = -np.inf
        top = np.argpartition(-scores, min(k, g.shape[0] - 1), axis=1)[:, :k]  # (chunk, k), unordered
        hits[start : start + 1024] = (gallery_labels[top] == query_labels[start : start + 1024, None]).any(axis=1)
    return hits


def slerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """Row-wise spherical interpolation from unit ``a`` (t=0) to unit ``b`` (t=1)."""
    a, b = unit(a), unit(b)
    omega = np.arccos(np.clip(np.sum(a * b, axis=1, keepdims=True), -1.0, 1.0))  # (n, 1)
    sin = np.sin(omega)
    near = sin < 1e-6  # (anti)parallel rows: the arc is undefined, interpolate linearly
    wa = np.where(near, 1.0 - t, np.sin((1.0 - t) * omega) / np.where(near, 1.0, sin))
    wb = np.where(near, t, np.sin(t * omega) / np.where(near, 1.0, sin))
    return unit(wa * a + wb * b)


# ---- Procrustes and fuse -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcrustesMap:
    weight: np.ndarray  # (d_new, d_old), orthonormal rows or columns (whichever side is smaller)

    def apply(self, new: np.ndarray) -> np.ndarray:
        return unit(unit(new) @ self.weight)


def fit_procrustes(new: np.ndarray, old: np.ndarray) -> ProcrustesMap:
    """The semi-orthogonal W minimising ||new W - old||_F: U V^T of the SVD of the cross-covariance new^T old.
    With d_new != d_old it keeps the min(d_new, d_old) best-aligned directions (pads or truncates)."""
    u, _, vt = np.linalg.svd(unit(new).T.astype(np.float64) @ unit(old), full_matrices=False)
    return ProcrustesMap((u @ vt).astype(np.float32))


@dataclass(frozen=True)
class FuseModel:
    procrustes: ProcrustesMap
    blend: float  # 0: the old query alone; 1: the mapped new query alone
    validation_r10: dict[float, float] = field(default_factory=dict)  # blend -> R@10 it was chosen on

    def query(self, old_query: np.ndarray, new_query: np.ndarray) -> np.ndarray:
        """The fused query, in the old space."""
        return slerp(old_query, self.procrustes.apply(new_query), self.blend)


def fuse_scores(model: FuseModel, old_query: np.ndarray, new_query: np.ndarray, old_gallery: np.ndarray) -> np.ndarray:
    """(q, G) cosine scores of the fused queries against the stored old gallery."""
    return model.query(old_query, new_query) @ unit(old_gallery).T


# ---- transform (old -> new) -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TransformModel:
    kind: str  # "ridge" | "mlp"
    linear: np.ndarray  # (d_old, d_new), the ridge map (the MLP's residual path starts here)
    mlp: nn.Module | None = None
    validation: dict[str, tuple[float, float]] = field(default_factory=dict)  # candidate -> (R@10, mean cos)

    def apply(self, old: np.ndarray) -> np.ndarray:
        """Stored old vectors rewritten into the new space (unit rows)."""
        if self.mlp is None:
            return unit(unit(old) @ self.linear)
        with torch.no_grad():
            return unit(self.mlp(torch.from_numpy(unit(old))))


class ResidualMap(nn.Module):
    """x -> x A + MLP(x): A starts at the ridge solution and the MLP's last layer at zero."""

    def __init__(self, linear: np.ndarray, hidden: int) -> None:
        super().__init__()
        self.linear = nn.Linear(linear.shape[0], linear.shape[1], bias=False)
        out = nn.Linear(hidden, linear.shape[1])
        self.mlp = nn.Sequential(nn.Linear(linear.shape[0], hidden), nn.GELU(), out)
        with torch.no_grad():
            self.linear.weight.copy_(torch.from_numpy(linear.T))
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.mlp(x)


def fit_ridge(old: np.ndarray, new: np.ndarray, alpha: float) -> np.ndarray:
    x, y = unit(old).astype(np.float64), unit(new).astype(np.float64)
    gram = x.T @ x
    ridge = alpha * np.trace(gram) / len(gram)
    return np.linalg.solve(gram + ridge * np.eye(len(gram)), x.T @ y).astype(np.float32)


def _train(module: nn.Module, loss_fn: Callable[[torch.Tensor], torch.Tensor], n: int, steps: int, seed: int,
           lr: float = 1e-3, batch: int = 256) -> nn.Module:  # fmt: skip
    optimizer = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=1e-4)
    rng = np.random.default_rng(seed)
    module.train()
    for _ in range(steps):
        idx = torch.from_numpy(rng.choice(n, min(batch, n), replace=False))
        loss = loss_fn(idx)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return module.eval()


def _split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices: a seeded permutation, ``fraction`` of it held out (at least one each)."""
    order = np.random.default_rng(seed).permutation(n)
    cut = min(max(1, round(n * fraction)), n - 1)
    return np.sort(order[cut:]), np.sort(order[:cut])


def own_pair_r10(query: np.ndarray, gallery: np.ndarray) -> float:
    ids = np.arange(len(query))
    return recall_at_k(query, gallery, ids, ids)


def _transform_score(new: np.ndarray, rewritten: np.ndarray) -> tuple[float, float]:
    """(own-pair R@10, mean cosine): R@10 first, the cosine decides when R@10 saturates."""
    return own_pair_r10(new, rewritten), float(np.mean(np.sum(unit(new) * unit(rewritten), axis=1)))


def _fit_mlp(old: np.ndarray, new: np.ndarray, linear: np.ndarray, seed: int, steps: int, hidden: int,
             contrastive: float, temperature: float) -> nn.Module:  # fmt: skip
    torch.manual_seed(seed)
    module = ResidualMap(linear, hidden)
    x, y = torch.from_numpy(unit(old)), torch.from_numpy(unit(new))

    def loss(idx: torch.Tensor) -> torch.Tensor:
        out = F.normalize(module(x[idx]), dim=1)
        cosine = 1.0 - (out * y[idx]).sum(dim=1).mean()
        return cosine + contrastive * in_batch_softmax(out, y[idx], temperature)

    return _train(module, loss, len(x), steps, seed)


def fit_transform(old: np.ndarray, new: np.ndarray, seed: int = 0, steps: int = 400, hidden: int = 1024,
                  contrastive: float = 0.5, temperature: float = 0.05,
                  validation: float = 0.2) -> TransformModel:  # fmt: skip
    """FCT-style map old -> new. Ridge (alpha from ``RIDGE_ALPHAS``) and the residual MLP are compared on a
    held-out ``validation`` part by own-pair R@10 (new vector i finds rewritten old vector i), then by mean
    cosine; the winner is refitted on every pair."""
    train, val = _split(len(old), validation, seed)
    scored: dict[str, tuple[float, float]] = {}
    for alpha in RIDGE_ALPHAS:
        ridge = fit_ridge(old[train], new[train], alpha)
        scored[f"ridge:{alpha:g}"] = _transform_score(new[val], unit(old[val]) @ ridge)
    best_alpha = max(RIDGE_ALPHAS, key=lambda a: scored[f"ridge:{a:g}"])
    mlp = _fit_mlp(old[train], new[train], fit_ridge(old[train], new[train], best_alpha), seed, steps, hidden,
                   contrastive, temperature)  # fmt: skip
    scored["mlp"] = _transform_score(new[val], TransformModel("mlp", np.zeros(0), mlp).apply(old[val]))
    linear = fit_ridge(old, new, best_alpha)
    if scored["mlp"] > scored[f"ridge:{best_alpha:g}"]:
        return TransformModel("mlp", linear, _fit_mlp(old, new, linear, seed, steps, hidden, contrastive,
                                                      temperature), scored)  # fmt: skip
    return TransformModel("ridge", linear, None, scored)


# ---- adapter (frozen new encoder + head) ----------------------------------------------------------------


@dataclass(frozen=True)
class AdapterModel:
    module: nn.Module  # (B, d_new) -> (B, d_old + d_extra)
    d_old: int

    def apply(self, new: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return unit(self.module(torch.from_numpy(unit(new))))

    def prefix(self, new: np.ndarray) -> np.ndarray:
        """The old-compatible part, renormalised: what searches an old gallery."""
        return unit(self.apply(new)[:, : self.d_old])


def fit_adapter(new: np.ndarray, old: np.ndarray, d_extra: int = DEFAULT_D_EXTRA, seed: int = 0, steps: int = 400,
                hidden: int = 1024, contrastive: float = 1.0, distill: float = 1.0,
                temperature: float = 0.05) -> AdapterModel:  # fmt: skip
    """BT²-style head on frozen new vectors: a residual map whose linear path starts at the Procrustes map
    (prefix = old space from step 0), in a ``CompatModel`` without the orthogonal basis: the free linear path
    already mixes every direction, and the basis would cost a (dim x dim) matrix function per step (minutes
    at 1312 dims on a CPU) for nothing. Loss: BT²'s alignment
    ``1 - cos(prefix, old)`` + contrastive prefix -> old retrieval + relational distillation of the whole
    output to the new vectors (the extra dims keep what the new model knows)."""
    d_old, d_new = old.shape[1], new.shape[1]
    dim = d_old + d_extra
    init = np.zeros((d_new, dim), dtype=np.float32)
    init[:, :d_old] = fit_procrustes(new, old).weight
    if d_extra:  # the extra dims start on the most used new-space directions the Procrustes map leaves out
        w, x64 = init[:, :d_old].astype(np.float64), unit(new).astype(np.float64)
        outside = np.eye(d_new) - w @ w.T  # projector off the map's input directions (zero when d_new <= d_old)
        _, vectors = np.linalg.eigh(outside @ (x64.T @ x64) @ outside)  # ascending eigenvalues
        init[:, d_old:] = vectors[:, ::-1][:, :d_extra].astype(np.float32)
    torch.manual_seed(seed)
    model = CompatModel(ResidualMap(init, hidden), None)
    x, y = torch.from_numpy(unit(new)), torch.from_numpy(unit(old))

    def loss(idx: torch.Tensor) -> torch.Tensor:
        z = model(x[idx])  # (B, dim)
        prefix = F.normalize(z[:, :d_old], dim=1)
        terms = alignment_loss(prefix, y[idx]) + contrastive * in_batch_softmax(prefix, y[idx], temperature)
        return terms + distill * relational_distillation_loss(z, x[idx], 0.1)

    _train(model, loss, len(x), steps, seed)
    return AdapterModel(model.eval(), d_old)


# ---- fit on a calibration set, choose -------------------------------------------------------------------


@dataclass(frozen=True)
class Calibration:
    """Items encoded by both models, and the retrieval task that lets old/old be measured (see module doc)."""

    old: np.ndarray  # (n, d_old)
    new: np.ndarray  # (n, d_new)
    query_old: np.ndarray | None = None  # (n, d_old): query i's answer is item i
    query_new: np.ndarray | None = None  # (n, d_new)
    labels: np.ndarray | None = None  # (n,): same-label retrieval, leave-self-out

    def __post_init__(self) -> None:
        n = len(self.old)
        if len(self.new) != n or any(a is not None and len(a) != n for a in (self.query_old, self.query_new,
                                                                            self.labels)):  # fmt: skip
            raise ValueError("every calibration array needs one row per item")
        if (self.query_old is None) != (self.query_new is None):
            raise ValueError("give query_old and query_new together")

    @property
    def has_task(self) -> bool:
        return self.query_old is not None or self.labels is not None

    def subset(self, idx: np.ndarray) -> Calibration:
        pick = lambda a: None if a is None else a[idx]  # noqa: E731
        return Calibration(self.old[idx], self.new[idx], pick(self.query_old), pick(self.query_new), pick(self.labels))

    def split(self, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(fit, held-out) rows. With many small label groups (an eval set of query/answer pairs) whole
        groups are held out, so a held-out query still has its answers among the held-out items."""
        if self.labels is None or self.query_old is not None:
            return _split(len(self.old), fraction, seed)
        groups, inverse = np.unique(self.labels, return_inverse=True)
        if len(groups) < GROUP_SPLIT_MIN:
            return _split(len(self.old), fraction, seed)
        _, held_groups = _split(len(groups), fraction, seed)
        held = np.isin(inverse, held_groups)
        return np.flatnonzero(~held), np.flatnonzero(held)

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """Every input seen by both models (queries too): what the maps are fitted on."""
        if self.query_old is None or self.query_new is None:
            return self.old, self.new
        return np.concatenate([self.old, self.query_old]), np.concatenate([self.new, self.query_new])

    def r10(self, query: Callable[[np.ndarray, np.ndarray], np.ndarray], gallery: np.ndarray, k: int = 10) -> float:
        """R@k of ``query(old_side, new_side)`` vectors against ``gallery`` (one row per item) on the task."""
        hits = self.hits(query, gallery, k)
        return float(hits.mean()) if len(hits) else 0.0

    def hits(
        self, query: Callable[[np.ndarray, np.ndarray], np.ndarray], gallery: np.ndarray, k: int = 10
    ) -> np.ndarray:
        """Per task query: found within the top k (what ``r10`` averages; paired tests compare these)."""
        if self.query_old is not None and self.query_new is not None:
            ids = self.labels if self.labels is not None else np.arange(len(self.old))
            return hits_at_k(query(self.query_old, self.query_new), gallery, ids, ids, k)
        if self.labels is None:
            raise ValueError("no retrieval task: give query_old/query_new or labels")
        return hits_at_k(query(self.old, self.new), gallery, self.labels, self.labels, k, leave_self_out=True)


def fit_fuse(
    cal: Calibration,
    seed: int = 0,
    validation: float = 0.25,
    blends: tuple[float, ...] = BLENDS,
    extra: Pairs | None = None,
) -> FuseModel:
    """Procrustes on every calibration pair; the blend that maximises R@10 on a held-out part (Procrustes
    refitted without it for the choice). Without a task the blend is 1 (the mapped new query alone)."""
    scores: dict[float, float] = {}
    if cal.has_task and len(cal.old) >= 8:
        train, val = cal.split(validation, seed)
        fit_old, fit_new = with_extra(cal.subset(train).pairs(), extra)
        procrustes, held = fit_procrustes(fit_new, fit_old), cal.subset(val)
        for blend in blends:
            fuse = FuseModel(procrustes, blend)
            scores[blend] = held.r10(fuse.query, unit(held.old))
    best = max(blends, key=lambda b: (scores[b], b)) if scores else 1.0  # ties go to the newer model
    old, new = with_extra(cal.pairs(), extra)
    return FuseModel(fit_procrustes(new, old), best, scores)


def fit_method(method: str, cal: Calibration, seed: int, steps: int = 400,
               extra: Pairs | None = None) -> FuseModel | AdapterModel | TransformModel:  # fmt: skip
    """One method on every pair of ``cal`` (and the fit-only ``extra`` pairs); ``steps``: training steps of
    the adapter and the transform MLP."""
    old, new = with_extra(cal.pairs(), extra)
    if method == "fuse":
        return fit_fuse(cal, seed, extra=extra)
    if method == "adapter":
        return fit_adapter(new, old, seed=seed, steps=steps)
    if method == "transform":
        return fit_transform(old, new, seed=seed, steps=steps)
    raise ValueError(f"unknown method '{method}'; known: {METHODS}")
