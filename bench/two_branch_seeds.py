"""Two-branch image–text matching over seeds, against its strongest cheap baselines (issue 19).

    .venv/bin/python bench/two_branch_seeds.py --seeds 5 --jobs 2 --data-dir DIR

Config ``two-branch`` (frozen EfficientNet-Lite0 + whitened linear head, n-gram text tower), trained
by ``ers train two-branch``'s recipe once per seed under two protocols:

* **style**: train on the Google-style drawings of all 1,911 concepts, evaluate on the Twitter-style
  drawings of the same concepts (the shipped protocol: an unseen drawing style, seen concepts);
* **unseen concepts**: 20% of the concepts (split seed 0, the same for every training seed) never
  reach training; evaluate on their Twitter-style drawings only.

Both score the **test half** of their evaluation items (``data.eval_split: test``, the even-numbered
ones): the odd-numbered half is the validation split every setting of the config was chosen on.

Rows: the trained model; frozen-features NN (a caption goes to the training drawing it names, then
raw EfficientNet cosine); whitened-features NN (the same in the whitened PCA space the head starts
from, no training at all); untrained. Seeds change the initialisation and batch order only (the
splits are fixed). Mean ± 95% Student-t interval over seeds, and the trained model minus each
baseline paired by seed. Runs are cached in ``--out``/runs.json with their config (resumable; runs of
another config are refused, not mixed in). Writes ``table.md``,
``results.json`` and one recall@K PNG per protocol to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from itertools import repeat
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from plotlib import line_plot
from reportlib import training_args, write_text

from models.eval.seeds import numeric, per_query_scores, summarise
from models.training.recipe import TrainRequest, recipe
from models.training.run import load_config
from models.training.two_branch_eval import KS

PROTOCOLS = {"style": {"eval_split": "test"},
             "unseen-concepts": {"holdout_concepts": 0.2, "split_seed": 0, "eval_split": "test"}}  # fmt: skip
ROWS = {"trained": "", "whitened-features NN": "whitened_nn_", "frozen-features NN": "frozen_nn_",
        "untrained": "untrained_"}  # fmt: skip
TABLE_KS = (1, 5, 10)


def train_one(config: dict[str, Any], data_dir: Path, threads: int | None = None) -> dict[str, Any]:
    if threads:  # a parallel job: one thread each, so the jobs share the cores instead of fighting
        import torch

        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="ers-two-branch-seeds-") as tmp:
        request = TrainRequest(config=config, out=Path(tmp), data_dir=data_dir, progress=False)
        metrics = recipe("two-branch").train(request).metrics
    # the figures, and each R@1 hit per query (``*_per_query``: bootstrapped over seeds and queries)
    return {k: v for k, v in metrics.items() if "_r@" in k or k in ("eval_items", "train_items", "seconds")}


def table(protocol: str, summary: Any, command: str) -> str:
    m = summary.metrics
    cols = [f"{d} R@{k}" for d in ("i2t", "t2i") for k in TABLE_KS]
    lines = [f"### {protocol}: {int(m['eval_items'][0])} evaluation items, {int(m['train_items'][0])} training "
             f"concepts; mean ± 95% CI over {len(summary.seeds)} seeds", "",
             "| row | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]  # fmt: skip
    for row, prefix in ROWS.items():
        cells = [m[f"{prefix}{d}_r@{k}"] for d in ("i2t", "t2i") for k in TABLE_KS]
        lines.append(f"| {row} | " + " | ".join(f"{mean:.3f} ± {half:.3f}" for mean, half in cells) + " |")
    for row, prefix in list(ROWS.items())[1:3]:
        cells = [summary.versus[f"{d}_r@{k}"][f"{prefix}{d}_r@{k}"] for d in ("i2t", "t2i") for k in TABLE_KS]
        lines.append(f"| trained − {row} (paired) | " + " | ".join(f"{a:+.3f} ± {b:.3f}" for a, b in cells) + " |")
    boot = summary.bootstrapped_versus
    if boot:  # R@1 only: the runs keep each query's R@1 hit
        lines += ["", f"R@1 bootstrapped over seeds and queries (95% percentile interval, {len(summary.seeds)} seeds x "
                  f"{int(m['eval_items'][0])} queries; differences paired query by query):", "",
                  "| row | i2t R@1 | t2i R@1 |", "|---|---|---|"]  # fmt: skip
        for row, prefix in ROWS.items():
            cells = [summary.bootstrapped.get(f"{prefix}{d}_r@1") for d in ("i2t", "t2i")]
            if all(cells):
                spans = [f"{c[0]:.3f} [{c[1]:.3f}, {c[2]:.3f}]" for c in cells if c]
                lines.append(f"| {row} | " + " | ".join(spans) + " |")
        for row, prefix in list(ROWS.items())[1:3]:
            cells = [boot.get(f"{d}_r@1", {}).get(f"{prefix}{d}_r@1") for d in ("i2t", "t2i")]
            if all(cells):
                lines.append(f"| trained − {row} | " + " | ".join(f"{c[0]:+.3f} [{c[1]:+.3f}, {c[2]:+.3f}]"
                                                                 for c in cells if c) + " |")  # fmt: skip
    return "\n".join(lines) + f"\n\nCommand: `{command}`\n"


def plot(protocol: str, summary: Any, path: Path) -> None:
    series = {}
    for row, prefix in ROWS.items():
        if row == "untrained":
            continue
        for d, name in (("t2i", "text->image"), ("i2t", "image->text")):
            series[f"{row}, {name}"] = [(float(k), *summary.metrics[f"{prefix}{d}_r@{k}"]) for k in KS]
    line_plot(path, series, f"Two-branch, {protocol}: recall@K (mean and 95% interval over {len(summary.seeds)} "
              "seeds)", "K", "recall@K")  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--protocols", default=",".join(PROTOCOLS), help=f"of {list(PROTOCOLS)}")
    p.add_argument("--config", default="two-branch")
    p.add_argument("--data-dir", type=Path, default=Path(".ers-data"))
    p.add_argument("--out", type=Path, default=Path("docs/two_branch"))
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel, one thread each")
    p.add_argument("--report-only", action="store_true", help="train nothing: tables and plots from the cached runs")
    args = p.parse_args()
    protocols = args.protocols.split(",")
    unknown = sorted(set(protocols) - set(PROTOCOLS))
    if unknown:
        p.error(f"unknown protocols {unknown}; known: {list(PROTOCOLS)}")
    base = load_config(args.config)
    base["baselines"] = ["untrained", "frozen-nn", "whitened-nn"]
    command = ".venv/bin/python bench/two_branch_seeds.py " + shlex.join(training_args())
    cache = args.out / "runs.json"
    cached = json.loads(cache.read_text()) if cache.is_file() else {"base": base, "runs": {}}
    if cached.get("base") != base:  # runs of another config (or protocol) must not be mixed into this table
        p.error(f"{cache} holds runs of another config; pass another --out or move it away")
    runs: dict[str, Any] = cached["runs"]
    started = time.time()
    todo = {f"{args.config}/{protocol}#{seed}": {**base, "seed": seed, "data": {**base.get("data", {}),
                                                                                **PROTOCOLS[protocol]}}
            for seed in range(0 if args.report_only else args.seeds) for protocol in protocols}  # fmt: skip
    todo = {key: config for key, config in todo.items() if key not in runs}
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        threads = 1 if args.jobs > 1 else None
        done = pool.map(train_one, todo.values(), repeat(args.data_dir), repeat(threads))
        for key, got in zip(todo, done, strict=True):
            runs[key] = got
            write_text(cache, json.dumps({"base": base, "runs": runs}))  # compact: per-query lists
            print(f"[{time.time() - started:5.0f} s] {key:<32} t2i R@1 {got['t2i_r@1']:.3f} "
                  f"i2t R@1 {got['i2t_r@1']:.3f} (whitened NN {got['whitened_nn_t2i_r@1']:.3f} / "
                  f"{got['whitened_nn_i2t_r@1']:.3f})", flush=True)  # fmt: skip
    texts, results = [], {}
    for protocol in protocols:
        seeds = [s for s in range(args.seeds) if f"{args.config}/{protocol}#{s}" in runs]
        if not seeds:
            continue
        chosen = [runs[f"{args.config}/{protocol}#{s}"] for s in seeds]
        summary = summarise("two-branch", seeds, [numeric(r) for r in chosen], per_query_scores(chosen))
        texts.append(table(protocol, summary, command))
        results[protocol] = summary.to_json()
        plot(protocol, summary, args.out / f"recall_at_k_{protocol}.png")
    print("\n" + "\n".join(texts))
    write_text(args.out / "table.md", "\n".join(texts))
    write_text(args.out / "results.json", json.dumps({"command": command, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
