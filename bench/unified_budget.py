"""Unified Embedding's trade-off across budgets (issue 19): recall@10 against parameters, over seeds.

    .venv/bin/python bench/unified_budget.py --seeds 5 --threads 1

Arms, each trained by ``ers train unified`` (config ``unified``, InstEval, 20 epochs at most):

* **multiplexed**: every feature of both towers hashed into one shared table of R rows;
* **one table per feature**: the same R rows split into a table per feature (equal parameters);
* **collision-free**: a row per known value of every feature (the vocabulary), the layouts' upper bound;
* **matrix factorisation**: student and lecturer ids only, collision-free, a linear tower (rank r).

Protocol: per seed, the test split holds out 20% of each student's lecturers rated >= 4 (as in
docs/models.md); a validation split holds out 20% of what is left the same way, and the epoch with
the best validation recall@10 is kept (early stopping on val: the test items are scored once, at
the end). Both splits are fixed (``split_seed`` 0): seeds change the initialisation and batch order
only. Mean ± 95% Student-t interval over seeds; multiplexed vs one table per feature also as a
paired difference per budget. Runs are cached in ``--out``/runs.json, so an interrupted sweep (or
one with more seeds or budgets) resumes where it stopped. Writes ``results.json``, ``table.md`` and
``pareto.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from plotlib import line_plot
from reportlib import training_args, write_text

from models.eval.stats import interval, paired
from models.training.recipe import TrainRequest, recipe
from models.training.run import load_config

KEEP = ("recall@10", "recall@50", "val_recall@10", "best_epoch", "parameters", "embedding_parameters",
        "popularity_recall@10", "train_seconds")  # fmt: skip


def arms(budgets: list[int], mf_ranks: list[int]) -> dict[str, dict[str, Any]]:
    """Arm key -> config over ``unified`` (key: layout/size, the same across runs so the cache finds it)."""
    out: dict[str, dict[str, Any]] = {}
    for rows in budgets:
        out[f"multiplexed/{rows}"] = {"multiplexed": True, "table_rows": rows}
        out[f"per-feature/{rows}"] = {"multiplexed": False, "table_rows": rows}
    out["collision-free/vocab"] = {"multiplexed": False, "table_rows": None, "collision_free": True}
    for rank in mf_ranks:
        ids = {"query": ["s"], "item": ["d"]}
        out[f"mf/{rank}"] = {"multiplexed": False, "table_rows": None, "collision_free": True, "chunks": {},
                             "features": ids, "hidden": 0, "emb_dim": rank, "dim": rank}  # fmt: skip
    return out


LABELS = {
    "multiplexed": "multiplexed (one shared table)",
    "per-feature": "one table per feature",
    "collision-free": "collision-free (full vocabularies)",
    "mf": "matrix factorisation (ids, rank r)",
}


def train_one(config: dict[str, Any], data_dir: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ers-unified-budget-") as tmp:
        request = TrainRequest(config=config, out=Path(tmp), data_dir=data_dir, progress=False)
        metrics = recipe("unified").train(request).metrics
    return {k: metrics[k] for k in KEEP}


def summarise(runs: dict[str, dict[str, Any]], keys: list[str], seeds: int) -> dict[str, Any]:
    """Per arm: mean ± CI of each figure over the seeds run so far; paired multiplexed − per-feature."""
    out: dict[str, Any] = {}
    for key in keys:
        done = [runs[f"{key}#{s}"] for s in range(seeds) if f"{key}#{s}" in runs]
        if not done:
            continue
        out[key] = {"n": len(done), "parameters": done[0]["parameters"],
                    "embedding_parameters": done[0]["embedding_parameters"]}  # fmt: skip
        for metric in ("recall@10", "recall@50", "val_recall@10", "best_epoch", "popularity_recall@10"):
            out[key][metric] = interval([d[metric] for d in done])
    for key in out:
        layout, size = key.split("/")
        pairs = [(runs.get(f"{key}#{s}"), runs.get(f"per-feature/{size}#{s}")) for s in range(seeds)]
        both = [(a["recall@10"], b["recall@10"]) for a, b in pairs if a is not None and b is not None]
        if layout == "multiplexed" and both:
            out[key]["minus_per_feature"] = paired([a for a, _ in both], [b for _, b in both])
    return out


def table(summary: dict[str, Any], command: str) -> str:
    lines = ["| arm | rows / rank | embedding params | total params | test recall@10 | test recall@50 "
             "| val recall@10 | best epoch | multiplexed − per-feature (paired) | seeds |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    cell = "{:.3f} ± {:.3f}".format
    for key, s in summary.items():
        layout, size = key.split("/")
        if layout == "collision-free":  # emb_dim 16: the rows every known value (and unseen values) take
            size = f"{s['embedding_parameters'] // 16:,} (a row per value)"
        paired = cell(*s["minus_per_feature"]) if "minus_per_feature" in s else ""
        lines.append(f"| {LABELS[layout]} | {size} | {s['embedding_parameters']:,} | {s['parameters']:,} "
                     f"| {cell(*s['recall@10'])} | {cell(*s['recall@50'])} | {cell(*s['val_recall@10'])} "
                     f"| {s['best_epoch'][0]:.1f} | {paired} | {s['n']} |")  # fmt: skip
    popularity = next(iter(summary.values()))["popularity_recall@10"]
    lines.append(f"| popularity (training positives per lecturer) | – | – | – | {cell(*popularity)} | | | | | |")
    return f"Command: `{command}`\n\n" + "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], path: Path) -> None:
    series: dict[str, list[tuple[float, float, float]]] = {}
    for key, s in summary.items():
        series.setdefault(LABELS[key.split("/")[0]], []).append((s["parameters"], *s["recall@10"]))
    popularity = next(iter(summary.values()))["popularity_recall@10"][0]
    line_plot(path, series, "Unified Embedding on InstEval: test recall@10 against parameters "
              "(mean and 95% interval over seeds; early stopping on val)", "parameters (embedding table + towers)",
              "recall@10", references={"popularity": popularity})  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--budgets", default="128,512,2048,8192,16384", help="table rows of the hashed layouts")
    p.add_argument("--mf-ranks", default="16,32,64", help="ranks of the matrix factorisation arm")
    p.add_argument("--val-holdout", type=float, default=0.2)
    p.add_argument("--epochs", type=int, default=20, help="at most; the best epoch on val is kept")
    p.add_argument("--data-dir", type=Path, default=Path(".ers-data"))
    p.add_argument("--out", type=Path, default=Path("docs/unified_budget"))
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--report-only", action="store_true", help="train nothing: tables and plot from the cached runs")
    args = p.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    budgets = [int(b) for b in args.budgets.split(",")]
    ranks = [int(r) for r in args.mf_ranks.split(",")] if args.mf_ranks else []
    plan = arms(budgets, ranks)
    base = {**load_config("unified"), "epochs": args.epochs, "val_holdout": args.val_holdout}
    command = ".venv/bin/python bench/unified_budget.py " + shlex.join(training_args())
    cache = args.out / "runs.json"
    runs: dict[str, Any] = json.loads(cache.read_text())["runs"] if cache.is_file() else {}
    started = time.time()
    for seed in range(0 if args.report_only else args.seeds):  # seed-major: a cut-short sweep has every arm
        for key, over in plan.items():
            run_key = f"{key}#{seed}"
            if run_key in runs:
                continue
            name = "ub-" + key.replace("/", "-")
            runs[run_key] = train_one({**base, **over, "seed": seed, "name": name}, args.data_dir)
            write_text(cache, json.dumps({"base": base, "runs": runs}, indent=1))
            got = runs[run_key]
            print(f"[{time.time() - started:5.0f} s] seed {seed} {key:<22} recall@10 {got['recall@10']:.3f} "
                  f"(val {got['val_recall@10']:.3f}, epoch {got['best_epoch']})", flush=True)  # fmt: skip
    summary = summarise(runs, list(plan), args.seeds)
    if not summary:
        print(f"no runs in {cache}: nothing to report", file=sys.stderr)
        return 1
    text = table(summary, command)
    print("\n" + text)
    write_text(args.out / "table.md", text)
    write_text(args.out / "results.json", json.dumps({"command": command, "base": base, "summary": summary},
                                                            indent=1))  # fmt: skip
    plot(summary, args.out / "pareto.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
