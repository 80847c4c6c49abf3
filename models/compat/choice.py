"""The gate of a migration between independently trained encoders: which method, if any, may replace old/old.

``choose`` fits every method (``models.compat.pretrained``) on 80% of the calibration examples and measures
R@10 on the other 20%. The best method is taken only when it beats old/old *surely*: a paired bootstrap over
the held-out queries (the same queries scored both ways) must find it better in at least ``CONFIDENCE`` of
the resamples. A plain "mean above old/old" let noise through on small calibration sets (with 250 inputs the
held-out part is 50 queries, where one query is 2 points of R@10): the bench measured such choices losing
to old/old on the test set. Refusing keeps the old encoder serving, which is never worse.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.compat.pretrained import (
    METHODS,
    AdapterModel,
    Calibration,
    FuseModel,
    Pairs,
    TransformModel,
    fit_method,
    own_pair_r10,
    unit,
)

CONFIDENCE = 0.95  # share of bootstrap resamples in which the chosen method must beat old/old
RESAMPLES = 2000
Query = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (old side, new side) -> query vectors


@dataclass(frozen=True)
class Choice:
    figures: dict[str, float]  # setting -> R@10 on the held-out 20%: old/old, new/new, raw, fuse, adapter...
    own_pair: dict[str, float]  # method -> cross-model R@10 of an item's own pair (alignment diagnostic)
    best: str | None  # the chosen method, None when refused
    refused: bool
    reason: str
    model: FuseModel | AdapterModel | TransformModel | None = None  # the chosen method refitted on every pair
    confidence: float | None = None  # bootstrap share in which the best method beat old/old


def settings(fitted: dict[str, Any], held: Calibration) -> dict[str, tuple[Query, np.ndarray]]:
    """Every setting measured on ``held``: name -> (query vectors from both sides, gallery)."""
    g_old, g_new = unit(held.old), unit(held.new)
    out: dict[str, tuple[Query, np.ndarray]] = {"old/old": (lambda o, n: o, g_old), "new/new": (lambda o, n: n, g_new)}
    if g_old.shape[1] == g_new.shape[1]:
        out["raw new/old"] = (lambda o, n: n, g_old)
    if "fuse" in fitted:
        out["fuse"] = (fitted["fuse"].query, g_old)
    if "adapter" in fitted:
        adapter = fitted["adapter"]
        out["adapter"] = (lambda o, n: adapter.prefix(n), g_old)
        out["adapter (backfilled)"] = (lambda o, n: adapter.apply(n), adapter.apply(held.new))
    if "transform" in fitted:
        out["transform"] = (lambda o, n: n, fitted["transform"].apply(held.old))
    return out


def evaluate(fitted: dict[str, Any], held: Calibration, k: int = 10) -> tuple[dict[str, float], dict[str, float]]:
    """R@k of every setting on ``held`` (task) and own-pair cross-model R@10 of every fitted method."""
    figures = {name: held.r10(query, gallery, k) for name, (query, gallery) in settings(fitted, held).items()}
    g_old, g_new = unit(held.old), unit(held.new)
    own: dict[str, float] = {}
    if "fuse" in fitted:
        own["fuse"] = own_pair_r10(fitted["fuse"].procrustes.apply(held.new), g_old)
    if "adapter" in fitted:
        own["adapter"] = own_pair_r10(fitted["adapter"].prefix(held.new), g_old)
    if "transform" in fitted:
        own["transform"] = own_pair_r10(g_new, fitted["transform"].apply(held.old))
    return figures, own


def paired_confidence(better: np.ndarray, baseline: np.ndarray, seed: int, resamples: int = RESAMPLES) -> float:
    """Share of bootstrap resamples of the queries in which ``better``'s hit rate exceeds ``baseline``'s."""
    diff = better.astype(np.float64) - baseline.astype(np.float64)  # (n,) per query: -1, 0 or 1
    if not len(diff):
        return 0.0
    picks = np.random.default_rng(seed).integers(0, len(diff), size=(resamples, len(diff)))
    return float((diff[picks].mean(axis=1) > 0).mean())


def choose(cal: Calibration, seed: int = 0, held_out: float = 0.2, methods: tuple[str, ...] = METHODS,
           refit: bool = True, steps: int = 400, extra: Pairs | None = None,
           confidence: float = CONFIDENCE) -> Choice:  # fmt: skip
    """Fit ``methods`` on 80% of the items, measure R@10 on the other 20%, pick the best; refuse unless it
    beats old/old there in ``confidence`` of the paired bootstrap resamples (or when the calibration set has
    no task to measure old/old on)."""
    if not cal.has_task:
        return Choice({}, {}, None, True, "the calibration set has no query->item pairs or labels, so old/old "
                      "cannot be measured; nothing may replace it unmeasured")  # fmt: skip
    if len(cal.old) < 20:
        return Choice({}, {}, None, True, f"{len(cal.old)} calibration items are too few to hold out 20%")
    train, val = cal.split(held_out, seed)
    held = cal.subset(val)
    fitted = {m: fit_method(m, cal.subset(train), seed, steps, extra) for m in methods}
    figures, own = evaluate(fitted, held)
    best = max(methods, key=lambda m: figures[m])
    table = settings(fitted, held)
    sure = paired_confidence(held.hits(*table[best]), held.hits(*table["old/old"]), seed)
    if not (figures[best] > figures["old/old"] and sure >= confidence):
        return Choice(figures, own, None, True, f"no method surely beats old/old ({figures['old/old']:.3f}); "
                      f"the best, {best}, reaches {figures[best]:.3f}, better in {sure:.0%} of the paired "
                      f"bootstrap resamples (needed: {confidence:.0%})", confidence=sure)  # fmt: skip
    model = fit_method(best, cal, seed, steps, extra) if refit else fitted[best]
    return Choice(figures, own, best, False, f"{best}: {figures[best]:.3f} > old/old {figures['old/old']:.3f} "
                  f"in {sure:.0%} of the paired bootstrap resamples", model, sure)  # fmt: skip
