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

from models.eval.stats import interval, paired
from models.training.recipe import TrainingError, TrainRequest, recipe
from models.training.run import TRAINING_FILE

# metric-name prefixes under which the recipes report their baselines (the trained figure has none)
BASELINE_PREFIXES = ("popularity", "untrained", "chance", "pixels", "thumbnails", "frozen_nn", "whitened_nn", "before")


@dataclass
class SeedSummary:
    recipe: str
    seeds: list[int]
    metrics: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> (mean, 95% half-width)
    versus: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)  # metric -> baseline -> paired
    runs: list[dict[str, float]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"recipe": self.recipe, "seeds": self.seeds, "runs": self.runs,
                "metrics": {k: {"mean": m, "ci95": h} for k, (m, h) in self.metrics.items()},
                "versus": {k: {b: {"mean_difference": m, "ci95": h} for b, (m, h) in v.items()}
                           for k, v in self.versus.items()}}  # fmt: skip


def training_config(artifact: Path) -> dict[str, Any]:
    path = artifact / TRAINING_FILE
    if not path.is_file():
        raise TrainingError(f"{artifact} has no {TRAINING_FILE}: it was trained before seeds were recorded; retrain it")
    return dict(json.loads(path.read_text()))


def numeric(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def summarise(name: str, seeds: list[int], runs: list[dict[str, float]]) -> SeedSummary:
    keys = [k for k in runs[0] if all(k in r for r in runs)]
    out = SeedSummary(name, seeds, runs=runs)
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


def recorded_run(target: Path, config: dict[str, Any]) -> dict[str, float] | None:
    """The metrics of an artifact already trained into ``target`` with exactly ``config`` (a resumed
    ``--out``): seeded training is deterministic, so retraining it would give the same figures."""
    wanted = json.loads(json.dumps(config, sort_keys=True))
    for card in sorted(target.glob(f"*/{TRAINING_FILE}")):
        metrics = card.parent / "metrics.json"
        if metrics.is_file() and json.loads(card.read_text()) == wanted:
            return numeric(json.loads(metrics.read_text()))
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
    runs = []
    for seed in seeds:
        with tempfile.TemporaryDirectory(prefix="ers-eval-seeds-") as tmp:
            target = out / f"seed-{seed}" if out is not None else Path(tmp)
            seeded = {**config, "seed": seed}
            metrics = recorded_run(target, seeded) if out is not None else None
            if metrics is None:
                request = TrainRequest(config=seeded, out=target, data_dir=data_dir, progress=False)
                metrics = numeric(recipe(recipe_name).train(request).metrics)
        runs.append(metrics)
        if on_run is not None:
            on_run(seed, metrics)
    return summarise(recipe_name, seeds, runs)
