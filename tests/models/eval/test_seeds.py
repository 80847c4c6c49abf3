"""``ers eval ARTIFACT --seeds N``: the artifact's own training config retrained over seeds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from models.data.insteval import insteval_csv
from models.eval.seeds import summarise
from models.eval.stats import bootstrap
from service.cli.main import app

torch.set_num_threads(1)


def test_summary_pairs_each_figure_with_the_baselines_of_the_same_runs() -> None:
    runs = [{"recall@10": 0.5 + d, "popularity_recall@10": 0.1 + d, "val_recall@10": 0.4, "untrained_loss": 1.0}
            for d in (0.0, 0.01, 0.02)]  # fmt: skip
    summary = summarise("unified", [0, 1, 2], runs)
    assert summary.metrics["recall@10"] == pytest.approx((0.51, 4.303 * 0.01 / 3**0.5))
    assert summary.versus == {"recall@10": {"popularity_recall@10": pytest.approx((0.4, 0.0))}}


def test_per_query_scores_are_bootstrapped_and_paired_by_query_with_each_baseline() -> None:
    rng = np.random.default_rng(0)
    hits = (rng.random((3, 50)) < 0.7).astype(int).tolist()
    pixels = (rng.random((3, 50)) < 0.4).astype(int).tolist()
    runs = [
        {"recall_at_1": float(np.mean(h)), "pixels_recall_at_1": float(np.mean(p))}
        for h, p in zip(hits, pixels, strict=True)
    ]
    summary = summarise("facenet", [0, 1, 2], runs, {"recall_at_1_per_query": hits,
                                                    "pixels_recall_at_1_per_query": pixels})  # fmt: skip
    assert summary.bootstrapped["recall_at_1"] == bootstrap(hits)
    assert summary.bootstrapped["pixels_recall_at_1"] == bootstrap(pixels)
    assert summary.bootstrapped_versus == {"recall_at_1": {"pixels_recall_at_1": bootstrap(hits, pixels)}}
    low = summary.to_json()["bootstrap_versus"]["recall_at_1"]["pixels_recall_at_1"]["low95"]
    assert low == bootstrap(hits, pixels)[1] > 0  # 0.7 against 0.4 over 150 query scores: surely above


def test_eval_seeds_retrains_the_recorded_config(zoo_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    (data_dir / "cache" / "insteval").mkdir(parents=True)
    (data_dir / "cache" / "insteval" / "InstEval.csv").symlink_to(insteval_csv(zoo_dirs[1]))
    models = tmp_path / "models"
    args = ["--data-dir", str(data_dir)]
    trained = CliRunner().invoke(app, ["train", "unified", "--config", "unified-tiny", "--out", str(models), *args])
    assert trained.exit_code == 0, trained.output
    artifact = models / "unified-tiny-item@1"
    recorded = json.loads((artifact / "metrics.json").read_text())
    assert json.loads((artifact / "training.json").read_text())["seed"] == 0
    command = ["eval", str(artifact), "--seeds", "2", "--json", "--out", str(tmp_path / "s"), *args]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["seeds"] == [0, 1] and len(summary["runs"]) == 2
    assert summary["runs"][0]["recall@10"] == recorded["recall@10"]  # seed 0 is the recorded run, bit for bit
    assert summary["runs"][1]["recall@10"] != recorded["recall@10"]
    assert set(summary["versus"]["recall@10"]) == {"popularity_recall@10", "untrained_recall@10"}
    seed_1 = tmp_path / "s" / "seed-1" / "unified-tiny-item@1" / "spec.json"
    published = seed_1.stat().st_mtime_ns
    again = CliRunner().invoke(app, command)  # a resumed --out reads its runs back instead of retraining
    assert again.exit_code == 0 and json.loads(again.stdout)["runs"] == summary["runs"], again.output
    assert seed_1.stat().st_mtime_ns == published
    for extra, message in ((["--seeds", "1"], "at least 2"), (["--out", str(tmp_path / "o")], "--out goes with"),
                           (["--seeds", "2", "--data", "insteval"], "--data goes without")):  # fmt: skip
        refused = CliRunner().invoke(app, ["eval", str(artifact), *extra, *args])
        assert refused.exit_code == 2 and message in refused.output, refused.output
