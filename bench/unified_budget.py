"""Unified Embedding's trade-off across budgets (issue 19): recall@10 against parameters, over seeds.

    .venv/bin/python bench/unified_budget.py --seeds 5 --workers 2

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
paired difference per budget. Each run also keeps every test student's recall@10, so recall@10 is
bootstrapped over seeds × students (``models.eval.stats.bootstrap``; the students are the same for
every seed), and each arm is paired student by student with popularity and with the matrix
factorisation arm nearest to it in parameters (the strongest cheap baseline). Runs are cached in
``--out``/runs.json (figures) and per_query.json.gz (the students' scores), so an interrupted sweep
(or one with more seeds or budgets) resumes where it stopped; ``--workers`` trains that many runs at
once, one torch thread each. Writes ``results.json``, ``table.md`` and ``pareto.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shlex
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from plotlib import line_plot
from reportlib import training_args, write_text

from models.core.durable import atomic_write_bytes
from models.eval.stats import bootstrap, interval, paired
from models.training.recipe import TrainRequest, recipe
from models.training.run import load_config

KEEP = ("recall@10", "recall@50", "val_recall@10", "best_epoch", "parameters", "embedding_parameters",
        "popularity_recall@10", "train_seconds")  # fmt: skip
PER_QUERY = ("recall@10_per_query", "popularity_recall@10_per_query")  # kept apart: 2,902 students each


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


def train_one(run_key: str, config: dict[str, Any], data_dir: Path) -> tuple[str, dict[str, Any]]:
    import torch

    torch.set_num_threads(1)  # one core per run: ``--workers`` runs share the machine
    with tempfile.TemporaryDirectory(prefix="ers-unified-budget-") as tmp:
        request = TrainRequest(config=config, out=Path(tmp), data_dir=data_dir, progress=False)
        metrics = recipe("unified").train(request).metrics
    return run_key, {k: metrics[k] for k in (*KEEP, *PER_QUERY)}


def load_runs(out: Path) -> dict[str, dict[str, Any]]:
    """Finished runs: figures from runs.json, students' scores from per_query.json.gz. A run cached
    before scores were kept per student is trained again."""
    cache, scores = out / "runs.json", out / "per_query.json.gz"
    runs: dict[str, dict[str, Any]] = json.loads(cache.read_text())["runs"] if cache.is_file() else {}
    kept = json.loads(gzip.decompress(scores.read_bytes())) if scores.is_file() else {}
    return {key: {**run, **kept[key]} for key, run in runs.items() if key in kept}


def save_runs(out: Path, base: dict[str, Any], runs: dict[str, dict[str, Any]]) -> None:
    figures = {key: {k: v for k, v in run.items() if k not in PER_QUERY} for key, run in runs.items()}
    scores = {key: {k: run[k] for k in PER_QUERY} for key, run in runs.items()}
    out.mkdir(parents=True, exist_ok=True)
    # mtime 0: the same scores give the same bytes
    atomic_write_bytes(out / "per_query.json.gz", gzip.compress(json.dumps(scores).encode(), mtime=0))
    write_text(out / "runs.json", json.dumps({"base": base, "runs": figures}, indent=1))


def nearest_mf(summary: dict[str, Any], key: str) -> str | None:
    """The matrix factorisation arm closest to ``key`` in total parameters (log scale)."""
    mfs = [k for k in summary if k.startswith("mf/")]
    if key.startswith("mf/") or not mfs:
        return None
    size = summary[key]["parameters"]
    return min(mfs, key=lambda k: abs(np.log(summary[k]["parameters"] / size)))


def summarise(runs: dict[str, dict[str, Any]], keys: list[str], seeds: int) -> dict[str, Any]:
    """Per arm: mean ± CI of each figure over the seeds run so far; recall@10 bootstrapped over seeds
    × students, paired with popularity and the nearest MF arm; paired multiplexed − per-feature."""
    out: dict[str, Any] = {}
    scores: dict[str, list[list[float]]] = {}
    for key in keys:
        done = [runs[f"{key}#{s}"] for s in range(seeds) if f"{key}#{s}" in runs]
        if not done:
            continue
        out[key] = {"n": len(done), "parameters": done[0]["parameters"],
                    "embedding_parameters": done[0]["embedding_parameters"]}  # fmt: skip
        for metric in ("recall@10", "recall@50", "val_recall@10", "best_epoch", "popularity_recall@10"):
            out[key][metric] = interval([d[metric] for d in done])
        scores[key] = [d["recall@10_per_query"] for d in done]
        if len(done) >= 2:
            out[key]["recall@10_bootstrap"] = bootstrap(scores[key])
            popularity = [d["popularity_recall@10_per_query"] for d in done]
            out[key]["minus_popularity_bootstrap"] = bootstrap(scores[key], popularity)
    for key in out:
        layout, size = key.split("/")
        pairs = [(runs.get(f"{key}#{s}"), runs.get(f"per-feature/{size}#{s}")) for s in range(seeds)]
        both = [(a["recall@10"], b["recall@10"]) for a, b in pairs if a is not None and b is not None]
        if layout == "multiplexed" and both:
            out[key]["minus_per_feature"] = paired([a for a, _ in both], [b for _, b in both])
        mf = nearest_mf(out, key)
        if mf is not None and out[key]["n"] == out[mf]["n"] >= 2:
            out[key]["versus_mf"] = mf
            out[key]["minus_mf_bootstrap"] = bootstrap(scores[key], scores[mf])
    return out


def table(summary: dict[str, Any], command: str, emb_dim: int) -> str:
    lines = ["| arm | rows / rank | embedding params | total params | test recall@10 | recall@10, bootstrap "
             "| test recall@50 | val recall@10 | best epoch | multiplexed − per-feature (paired) "
             "| − nearest MF, bootstrap | seeds |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    cell = "{:.3f} ± {:.3f}".format
    boot = "{:.3f} [{:.3f}, {:.3f}]".format
    diff = "{:+.3f} [{:+.3f}, {:+.3f}]".format
    for key, s in summary.items():
        layout, size = key.split("/")
        if layout == "collision-free":  # the rows every known value (and unseen values) take
            size = f"{s['embedding_parameters'] // emb_dim:,} (a row per value)"
        paired = cell(*s["minus_per_feature"]) if "minus_per_feature" in s else ""
        versus = f"{diff(*s['minus_mf_bootstrap'])} vs {s['versus_mf']}" if "minus_mf_bootstrap" in s else ""
        booted = boot(*s["recall@10_bootstrap"]) if "recall@10_bootstrap" in s else ""
        lines.append(f"| {LABELS[layout]} | {size} | {s['embedding_parameters']:,} | {s['parameters']:,} "
                     f"| {cell(*s['recall@10'])} | {booted} | {cell(*s['recall@50'])} | {cell(*s['val_recall@10'])} "
                     f"| {s['best_epoch'][0]:.1f} | {paired} | {versus} | {s['n']} |")  # fmt: skip
    popularity = next(iter(summary.values()))["popularity_recall@10"]
    lines.append(f"| popularity (training positives per lecturer) | – | – | – | {cell(*popularity)} "
                 "| | | | | | | |")  # fmt: skip
    return (f"Command: `{command}`\n\nMean ± 95% Student-t interval over seeds; \"bootstrap\": mean [95% interval] "
            "resampling seeds, then test students (the same students for every seed), and for \"− nearest MF\" "
            "the difference paired student by student with the matrix factorisation arm nearest in parameters.\n\n"
            + "\n".join(lines) + "\n")  # fmt: skip


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
    p.add_argument("--workers", type=int, default=1, help="runs trained at once (one torch thread each)")
    p.add_argument("--report-only", action="store_true", help="train nothing: tables and plot from the cached runs")
    args = p.parse_args()
    if args.workers < 1:
        p.error("--workers must be at least 1")
    budgets = [int(b) for b in args.budgets.split(",")]
    ranks = [int(r) for r in args.mf_ranks.split(",")] if args.mf_ranks else []
    plan = arms(budgets, ranks)
    base = {**load_config("unified"), "epochs": args.epochs, "val_holdout": args.val_holdout}
    command = ".venv/bin/python bench/unified_budget.py " + shlex.join(training_args())
    runs = load_runs(args.out)
    # seed-major: a cut-short sweep has every arm
    todo = [(f"{key}#{seed}", {**base, **over, "seed": seed, "name": "ub-" + key.replace("/", "-")})
            for seed in range(0 if args.report_only else args.seeds) for key, over in plan.items()]  # fmt: skip
    todo = [(run_key, config) for run_key, config in todo if run_key not in runs]
    started = time.time()
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        pending: set[Future[tuple[str, dict[str, Any]]]] = set()
        while todo or pending:
            while todo and len(pending) < args.workers:
                pending.add(pool.submit(train_one, *todo.pop(0), args.data_dir))
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                run_key, got = future.result()
                runs[run_key] = got
                save_runs(args.out, base, runs)
                print(f"[{time.time() - started:5.0f} s] {run_key:<24} recall@10 {got['recall@10']:.3f} "
                      f"(val {got['val_recall@10']:.3f}, epoch {got['best_epoch']}); {len(todo) + len(pending)} "
                      "to go", flush=True)  # fmt: skip
    summary = summarise(runs, list(plan), args.seeds)
    if not summary:
        print(f"no runs in {args.out / 'runs.json'}: nothing to report", file=sys.stderr)
        return 1
    text = table(summary, command, int(base["emb_dim"]))
    print("\n" + text)
    write_text(args.out / "table.md", text)
    write_text(args.out / "results.json", json.dumps({"command": command, "base": base, "summary": summary},
                                                            indent=1))  # fmt: skip
    plot(summary, args.out / "pareto.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
