"""FaceNet on emoji identities over seeds, against its strongest cheap baselines (issue 19).

    .venv/bin/python bench/facenet_seeds.py --seeds 5 --jobs 2 --data-dir DIR

Config ``facenet`` (the shipped ``facenet-emoji@1`` recipe), trained by ``ers train facenet``'s recipe
once per seed and variant. The identity split is fixed (``split_seed`` 0): seeds change the
initialisation, augmentation and batch order only.

* **test**: the shipped config, scored once on the 300 held-out concepts;
* **val-small-thumbnail16** / **val-small-no-thumbnail**: the thumbnail-branch ablation, scored on a
  validation split of 300 *training* concepts (``evaluate_on: val``; the test concepts are neither
  trained nor scored), at 1/8 width and 16 epochs. The branch is not FaceNet's own, so it ships only
  if it wins here.

Rows: the trained model; raw pixels (64 × 64 RGB); 16 × 16 thumbnails (box-averaged pixels, the
stronger pixel baseline); the same network untrained (BatchNorm statistics set on the data). Mean ±
95% Student-t interval over seeds, and the trained model minus each baseline paired by seed. Each
run's artifact is kept under ``--runs``/<variant>/seed-N, so an interrupted sweep resumes. Writes
``table.md``, ``results.json`` and ``recall_at_1.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from plotlib import line_plot
from reportlib import training_args, write_text

from models.eval.seeds import SeedSummary, numeric, per_query_scores, recorded_run, summarise
from models.eval.stats import bootstrap, paired
from models.training.facenet_config import FaceNetTrainConfig
from models.training.recipe import TrainRequest, recipe
from models.training.run import config_dict, load_config, parse_config

# The ablation runs a smaller, shorter network (1/8 width, 16 epochs: about a sixth of the CPU of the
# shipped config, whose runs take ~13 CPU-minutes each): the same question at a price that fits 5 seeds.
SMALL = {"width": 0.125, "epochs": 16}
VARIANTS = {
    "test": {},
    "val-small-thumbnail16": {"evaluate_on": "val", **SMALL},
    "val-small-no-thumbnail": {"evaluate_on": "val", "thumbnail": 0, **SMALL},
}
ROWS = {"trained": "", "16 × 16 thumbnails": "thumbnails_", "raw pixels": "pixels_", "untrained": "before_"}
METRICS = {"recall_at_1": "R@1 (one gallery drawing per concept)",
           "verification_accuracy": "verification acc. (10-fold)"}  # fmt: skip


def train_seed(job: tuple[str, dict[str, Any], int, Path, Path]) -> tuple[str, int, dict[str, Any]]:
    """One (variant, seed) in its own process, on one thread (two jobs share the two cores)."""
    import torch

    torch.set_num_threads(1)
    variant, config, seed, runs, data_dir = job
    # the full config (defaults filled in), as the recipe records it: what a finished run is matched on
    target = runs / variant / f"seed-{seed}"
    seeded = config_dict(parse_config(FaceNetTrainConfig, {**config, "seed": seed}))
    metrics = recorded_run(target, seeded)  # a run finished before an interruption is read back
    if metrics is None:
        request = TrainRequest(config=seeded, out=target, data_dir=data_dir, progress=False)
        metrics = dict(recipe("facenet").train(request).metrics)
    return variant, seed, metrics  # with the per-query hits (numeric() drops them)


def per_query(runs: dict[int, dict[str, Any]], prefix: str) -> list[list[float]]:
    return [runs[s][f"{prefix}recall_at_1_per_query"] for s in sorted(runs)]


def table(variant: str, summary: SeedSummary, command: str) -> str:
    """Student-t over seeds for every column; for R@1 also the bootstrap over seeds and queries."""
    m, n = summary.metrics, len(summary.seeds)
    lines = [f"### {variant}: {int(m['test_identities'][0])} concepts scored, {int(m['train_identities'][0])} "
             f"trained on; mean ± 95% CI over {n} seeds", "",
             "| row | " + " | ".join(METRICS.values()) + " | R@1, 95% bootstrap over seeds × queries |",
             "|---|" + "---|" * (len(METRICS) + 1)]  # fmt: skip
    for row, prefix in ROWS.items():
        cells = " | ".join(f"{mean:.3f} ± {half:.3f}" for mean, half in (m[f"{prefix}{k}"] for k in METRICS))
        mean, low, high = summary.bootstrapped[f"{prefix}recall_at_1"]
        lines.append(f"| {row} | {cells} | {mean:.3f} [{low:.3f}, {high:.3f}] |")
    for row, prefix in list(ROWS.items())[1:]:
        cells = " | ".join(f"{a:+.3f} ± {b:.3f}" for a, b in (summary.versus[k][f"{prefix}{k}"] for k in METRICS))
        mean, low, high = summary.bootstrapped_versus["recall_at_1"][f"{prefix}recall_at_1"]
        lines.append(f"| trained − {row} (paired) | {cells} | {mean:+.3f} [{low:+.3f}, {high:+.3f}] |")
    return "\n".join(lines) + f"\n\nCommand: `{command}`\n"


def ablation(summaries: dict[str, SeedSummary], results: dict[str, dict[int, dict[str, Any]]]) -> str:
    """Thumbnail 16 minus no thumbnail on validation, paired by seed (and for R@1 by query too)."""
    on, off = summaries.get("val-small-thumbnail16"), summaries.get("val-small-no-thumbnail")
    if on is None or off is None or on.seeds != off.seeds:
        return ""
    lines = ["### Thumbnail ablation on validation: thumbnail 16 − no thumbnail, paired by seed", "",
             "| metric | difference (Student-t over seeds) | verdict |", "|---|---|---|"]  # fmt: skip
    for key, name in METRICS.items():
        mean, half = paired([r[key] for r in on.runs], [r[key] for r in off.runs])
        verdict = "the branch wins" if mean - half > 0 else "the branch loses" if mean + half < 0 else "no difference"
        lines.append(f"| {name} | {mean:+.3f} ± {half:.3f} | {verdict} |")
    mean, low, high = bootstrap(
        per_query(results["val-small-thumbnail16"], ""), per_query(results["val-small-no-thumbnail"], "")
    )
    lines.append(
        f"| R@1, bootstrap over seeds × queries | {mean:+.3f} [{low:+.3f}, {high:+.3f}] | "
        f"{'the branch wins' if low > 0 else 'the branch loses' if high < 0 else 'no difference'} |"
    )
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"of {list(VARIANTS)}")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel, one thread each")
    p.add_argument("--config", default="facenet")
    p.add_argument("--data-dir", type=Path, default=Path(".ers-data"))
    p.add_argument("--runs", type=Path, help="each run's artifact (default: DATA_DIR/bench/facenet-seeds)")
    p.add_argument("--out", type=Path, default=Path("docs/facenet"))
    args = p.parse_args()
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or args.seeds < 2 or args.jobs < 1:
        p.error(f"need --seeds >= 2, --jobs >= 1 and variants of {list(VARIANTS)} (unknown: {unknown})")
    runs_dir = args.runs or args.data_dir / "bench" / "facenet-seeds"
    base = load_config(args.config)
    command = ".venv/bin/python bench/facenet_seeds.py " + shlex.join(training_args())
    jobs = [(v, {**base, **VARIANTS[v]}, s, runs_dir, args.data_dir) for s in range(args.seeds) for v in variants]
    results: dict[str, dict[int, dict[str, Any]]] = {v: {} for v in variants}
    started = time.time()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for variant, seed, metrics in pool.map(train_seed, jobs):
            results[variant][seed] = metrics
            print(f"[{time.time() - started:5.0f} s] {variant:<22} seed {seed}: R@1 {metrics['recall_at_1']:.3f} "
                  f"(thumbnails {metrics['thumbnails_recall_at_1']:.3f}, pixels {metrics['pixels_recall_at_1']:.3f})",
                  flush=True)  # fmt: skip
    summaries = {v: summarise("facenet", sorted(r), [numeric(r[s]) for s in sorted(r)],
                              per_query_scores([r[s] for s in sorted(r)]))
                 for v, r in results.items()}  # fmt: skip
    texts = [table(v, s, command) for v, s in summaries.items()] + [ablation(summaries, results)]
    series = {row.replace("×", "x"): [(float(i), *summaries[v].metrics[f"{prefix}recall_at_1"])  # the font has no ×
                                      for i, v in enumerate(variants)]
              for row, prefix in ROWS.items()}  # fmt: skip
    line_plot(args.out / "recall_at_1.png", series, f"FaceNet on emoji: R@1 per variant (mean and 95% interval, "
              f"{args.seeds} seeds)", "variant (" + ", ".join(f"{i}: {v}" for i, v in enumerate(variants)) + ")",
              "R@1", log_x=False)  # fmt: skip
    print("\n" + "\n".join(texts))
    write_text(args.out / "table.md", "\n".join(t for t in texts if t))
    write_text(
        args.out / "results.json",
        json.dumps({"command": command, "results": {v: s.to_json() for v, s in summaries.items()}}, indent=1),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
