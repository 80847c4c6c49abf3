"""Run a recipe's training config over seeds and summarise it: ``ers eval ARTIFACT --seeds N``.

Every recipe records its training config beside the weights (``training.json``, written with the
metrics). Retraining it with seeds 0..N-1 (everything else equal, the same recipe code path as
``ers train``) gives each metric as mean ± 95% interval over seeds, and each trained figure paired
with every baseline the recipe measured on the same runs (``popularity_recall@10`` for
``recall@10``): the difference per seed, and its interval.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.eval.stats import bootstrap, interval, paired
from models.training.recipe import TrainingError, TrainRequest, recipe
from models.training.run import TRAINING_FILE

# metric-name prefixes under which the recipes report their baselines (the trained figure has none)
PER_QUERY = "_per_query"  # a metric kept per query too (``recall_at_1_per_query``): bootstrapped
BASELINE_PREFIXES = ("popularity", "untrained", "chance", "pixels", "thumbnails", "frozen_nn", "whitened_nn", "before")


@dataclass
class SeedSummary:
    recipe: str
    seeds: list[int]
    metrics: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> (mean, 95% half-width)
    versus: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)  # metric -> baseline -> paired
    runs: list[dict[str, float]] = field(default_factory=list)
    # metric -> (mean, 2.5%, 97.5%) bootstrapped over seeds and queries; and paired with each baseline
    bootstrapped: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    bootstrapped_versus: dict[str, dict[str, tuple[float, float, float]]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        def span(m: float, low: float, high: float) -> dict[str, float]:
            return {"mean": m, "low95": low, "high95": high}

        return {"recipe": self.recipe, "seeds": self.seeds, "runs": self.runs,
                "metrics": {k: {"mean": m, "ci95": h} for k, (m, h) in self.metrics.items()},
                "versus": {k: {b: {"mean_difference": m, "ci95": h} for b, (m, h) in v.items()}
                           for k, v in self.versus.items()},
                "bootstrap_seeds_and_queries": {k: span(*v) for k, v in self.bootstrapped.items()},
                "bootstrap_versus": {k: {b: span(*d) for b, d in v.items()}
                                     for k, v in self.bootstrapped_versus.items()}}  # fmt: skip


def training_config(artifact: Path) -> dict[str, Any]:
    path = artifact / TRAINING_FILE
    if not path.is_file():
        raise TrainingError(f"{artifact} has no {TRAINING_FILE}: it was trained before seeds were recorded; retrain it")
    return dict(json.loads(path.read_text()))


def numeric(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def per_query_scores(runs: list[dict[str, Any]]) -> dict[str, list[list[float]]]:
    """``key_per_query`` -> one list per run, for the keys every run kept per query (full metrics,
    as a recipe or ``recorded_run`` returns them, not ``numeric``'s)."""
    keys = [k for k, v in runs[0].items() if k.endswith(PER_QUERY) and isinstance(v, list)]
    return {k: [r[k] for r in runs] for k in keys if all(isinstance(r.get(k), list) for r in runs)}


def summarise(
    name: str, seeds: list[int], runs: list[dict[str, float]], per_query: dict[str, list[list[float]]] | None = None
) -> SeedSummary:
    """Each metric's interval over seeds and its paired differences with the baselines; with
    ``per_query`` (``key_per_query`` -> one list per seed, the same queries each) also the bootstrap
    over seeds and queries, paired query by query with the baselines' own per-query scores."""
    keys = [k for k in runs[0] if all(k in r for r in runs)]
    out = SeedSummary(name, seeds, runs=runs)
    queries = per_query or {}
    for key, scores in queries.items():
        metric = key.removesuffix(PER_QUERY)
        out.bootstrapped[metric] = bootstrap(scores)
        if any(metric.startswith(p + "_") for p in BASELINE_PREFIXES):
            continue
        for prefix in BASELINE_PREFIXES:
            if f"{prefix}_{key}" in queries:
                paired_scores = bootstrap(scores, queries[f"{prefix}_{key}"])
                out.bootstrapped_versus.setdefault(metric, {})[f"{prefix}_{metric}"] = paired_scores
    for key in keys:
        out.metrics[key] = interval([r[key] for r in runs])
    for key in keys:
        if any(key.startswith(p + "_") for p in BASELINE_PREFIXES):
            continue
        for prefix in BASELINE_PREFIXES:
            baseline = f"{prefix}_{key}"
            if baseline in keys:
                out.versus.setdefault(key, {})[baseline] = paired([r[key] for r in runs], [r[baseline] for r in runs])
    return out


def recorded_run(target: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The metrics (per-query lists included) of an artifact already trained into ``target`` with
    exactly ``config`` (a resumed ``--out``): seeded training is deterministic, so retraining it
    would give the same figures."""
    wanted = json.loads(json.dumps(config, sort_keys=True))
    for card in sorted(target.glob(f"*/{TRAINING_FILE}")):
        metrics = card.parent / "metrics.json"
        if metrics.is_file() and json.loads(card.read_text()) == wanted:
            return dict(json.loads(metrics.read_text()))
    return None


def evaluate_seeds(
    recipe_name: str,
    config: dict[str, Any],
    seeds: list[int],
    data_dir: Path | None,
    out: Path | None = None,
    on_run: Callable[[int, dict[str, float]], None] | None = None,
) -> SeedSummary:
    """Train ``config`` once per seed (into ``out``/seed-N, or a temporary directory) and summarise.
    A seed whose artifact ``out``/seed-N already holds (same config) is read back, not retrained."""
    if len(seeds) < 2:
        raise TrainingError("an interval needs at least two seeds (the protocol asks for five)")
    if "seed" not in config:
        raise TrainingError(f"the {recipe_name} config has no seed to vary")
    runs: list[dict[str, float]] = []
    full: list[dict[str, Any]] = []
    for seed in seeds:
        with tempfile.TemporaryDirectory(prefix="ers-eval-seeds-") as tmp:
            target = out / f"seed-{seed}" if out is not None else Path(tmp)
            seeded = {**config, "seed": seed}
            everything = recorded_run(target, seeded) if out is not None else None
            if everything is None:
                request = TrainRequest(config=seeded, out=target, data_dir=data_dir, progress=False)
                everything = dict(recipe(recipe_name).train(request).metrics)
        metrics = numeric(everything)
        runs.append(metrics)
        full.append(everything)
        if on_run is not None:
            on_run(seed, metrics)
    return summarise(recipe_name, seeds, runs, per_query_scores(full))
