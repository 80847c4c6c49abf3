"""ConVIRT retrieval over seeds, against its strongest cheap baselines (issue 19).

    OMP_NUM_THREADS=1 .venv/bin/python bench/convirt_seeds.py --seeds 5 --data-dir DIR

Config ``convirt`` (the shipped ``convirt-emoji@1`` recipe), trained by ``ers train convirt``'s recipe with
seeds 0..N-1 through ``models.eval.seeds.evaluate_seeds`` (what ``ers eval --seeds`` runs). The concept
split is fixed by a hash of the emoji code: seeds change the heads' initialisation and the batch order only.

Rows: the trained towers; frozen-features NN (image->image: cosine on the frozen EfficientNet-Lite0
features ConVIRT starts from; text->image: each held-out name's nearest training name by TF-IDF, then
that concept's frozen features, ``nearest_text_features``); the same towers untrained; chance. Mean ±
95% Student-t interval over seeds, the trained towers minus each baseline paired by seed, and for P@5
the bootstrap over seeds × queries (each query's P@5 is kept, ``*_p@5_per_query``), paired query by
query. Each run's artifacts stay under ``--runs``/seed-N, so an interrupted sweep resumes. Writes
``seeds.md`` and ``seeds.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reportlib import command_line, write_text

from models.eval.seeds import SeedSummary, evaluate_seeds, recorded_run
from models.training.run import load_config

FROZEN = "frozen-features NN (t2i: nearest training name)"
ROWS = {"ConVIRT (trained)": "", FROZEN: "frozen_nn_", "untrained": "untrained_", "chance": "chance_"}
VERSUS = {"frozen-features NN": "frozen_nn_", "untrained": "untrained_"}  # the paired rows: trained − each
DIRECTIONS = ("i2i", "t2i")
KS = (5, 10, 50)
BOOTSTRAP_K = 5  # the runs keep each query's P@5


def span(mean: float, low: float, high: float, sign: str = "") -> str:
    return f"{mean:{sign}.3f} [{low:{sign}.3f}, {high:{sign}.3f}]"


def verdict(student: tuple[float, float], boot: tuple[float, float, float]) -> str:
    """Above (or below) only when both the Student-t and the bootstrap interval exclude zero."""
    (mean, half), (_, low, high) = student, boot
    if mean - half > 0 and low > 0:
        return "**above**, both intervals exclude 0"
    if mean + half < 0 and high < 0:
        return "**below**, both intervals exclude 0"
    return "**not separable**, an interval includes 0"


def apart(a: tuple[float, float], b: tuple[float, float]) -> str:
    """Whether two (low, high) intervals overlap."""
    return "apart" if a[0] > b[1] or b[0] > a[1] else "overlap"


def table(summary: SeedSummary, config: dict[str, Any], queries: dict[str, int], command: str) -> str:
    m, boot = summary.metrics, summary.bootstrapped
    cols = [f"{d} P@{k}" for d in DIRECTIONS for k in KS]
    lines = [f"ConVIRT, config `{config['name']}` (data: {config['data']}, label: {config['label']}): "
             f"{queries['i2i']} image and {queries['t2i']} text queries on the held-out split, "
             f"{int(m['train_pairs'][0])} training pairs. Mean ± 95% Student-t interval over {len(summary.seeds)} "
             f"seeds; P@5 also bootstrapped over seeds × queries (mean [2.5%, 97.5%], differences paired by query).",
             "", "| row | " + " | ".join(cols) + " | i2i P@5, bootstrap | t2i P@5, bootstrap |",
             "|---|" + "---|" * (len(cols) + 2)]  # fmt: skip
    for row, prefix in ROWS.items():
        cells = [f"{mean:.3f} ± {half:.3f}" for mean, half in (m[f"{prefix}{d}_p@{k}"] for d in DIRECTIONS for k in KS)]
        cells += [span(*boot[f"{prefix}{d}_p@{BOOTSTRAP_K}"]) for d in DIRECTIONS]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    for row, prefix in VERSUS.items():
        cells = [f"{a:+.3f} ± {b:.3f}" for a, b in (summary.versus[f"{d}_p@{k}"][f"{prefix}{d}_p@{k}"]
                                                      for d in DIRECTIONS for k in KS)]  # fmt: skip
        key = f"p@{BOOTSTRAP_K}"
        cells += [span(*summary.bootstrapped_versus[f"{d}_{key}"][f"{prefix}{d}_{key}"], sign="+") for d in DIRECTIONS]
        lines.append(f"| trained − {row} (paired) | " + " | ".join(cells) + " |")
    lines += ["", "Frozen-features NN: image->image ranks the gallery by cosine on the frozen EfficientNet-Lite0 "
              "features; text->image takes each query's nearest training text (TF-IDF cosine) and ranks the "
              "gallery by that training item's frozen features (mean over its drawings). No training: the same "
              "for every seed.", "", f"P@{BOOTSTRAP_K}, trained − frozen-features NN:"]  # fmt: skip
    for d in DIRECTIONS:
        key, base = f"{d}_p@{BOOTSTRAP_K}", f"frozen_nn_{d}_p@{BOOTSTRAP_K}"
        student, paired_boot = summary.versus[key][base], summary.bootstrapped_versus[key][base]
        t_rows = apart(
            (m[key][0] - m[key][1], m[key][0] + m[key][1]), (m[base][0] - m[base][1], m[base][0] + m[base][1])
        )
        b_rows = apart(boot[key][1:], boot[base][1:])
        lines.append(f"- {d}: {student[0]:+.3f} ± {student[1]:.3f}, bootstrap {span(*paired_boot, sign='+')}: "
                     f"{verdict(student, paired_boot)}; the two rows' own intervals: Student-t {t_rows}, "
                     f"bootstrap {b_rows}.")  # fmt: skip
    return "\n".join(lines) + f"\n\nCommand: `{command}`\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--config", default="convirt")
    p.add_argument("--data-dir", type=Path, default=Path(".ers-data"))
    p.add_argument("--runs", type=Path, help="each run's artifacts (default: DATA_DIR/bench/convirt-seeds)")
    p.add_argument("--out", type=Path, default=Path("docs/convirt"))
    args = p.parse_args()
    if args.seeds < 2:
        p.error("need --seeds >= 2 (the protocol asks for 5)")
    runs_dir = args.runs or args.data_dir / "bench" / "convirt-seeds"
    command = command_line("convirt_seeds.py")  # OMP_NUM_THREADS sets the threads of each run
    config = load_config(args.config)
    started = time.time()

    def progress(seed: int, m: dict[str, float]) -> None:
        print(f"[{time.time() - started:5.0f} s] seed {seed}: i2i P@5 {m['i2i_p@5']:.3f} (frozen NN "
              f"{m['frozen_nn_i2i_p@5']:.3f}), t2i P@5 {m['t2i_p@5']:.3f} (text NN {m['frozen_nn_t2i_p@5']:.3f}), "
              f"trained in {m['train_seconds']:.0f} s", flush=True)  # fmt: skip

    summary = evaluate_seeds("convirt", config, list(range(args.seeds)), args.data_dir, runs_dir, progress)
    first = recorded_run(runs_dir / f"seed-{summary.seeds[0]}", {**config, "seed": summary.seeds[0]}) or {}
    queries = {d: len(first[f"{d}_p@{BOOTSTRAP_K}_per_query"]) for d in DIRECTIONS}  # the same queries every seed
    text = table(summary, config, queries, command)
    print("\n" + text)
    write_text(args.out / "seeds.md", text)
    result: dict[str, Any] = {"command": command, "config": config, **summary.to_json()}
    write_text(args.out / "seeds.json", json.dumps(result, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
