"""The tables and the chain plot of ``bench/compat_fmnist.py``, from its cache.

    .venv/bin/python bench/compat_fmnist_report.py --out /tmp/ers-compat-fmnist [--docs docs/compat_fmnist]

Writes ``table.md`` (the validation sweep, the 5-seed table with paired differences, the chain's
matrix with AC and AM), ``results.json`` (every seed's scores) and ``chain.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compat_fmnist import ROWS
from plotlib import line_plot
from reportlib import write_text

from models.eval.stats import interval, paired, separated


def cell(values: list[float], digits: int = 4) -> str:
    mean, half = interval(values)
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


def diff(a: list[float], b: list[float]) -> str:
    mean, half = paired(a, b)
    return f"{mean:+.4f} [{mean - half:+.4f}, {mean + half:+.4f}]"


def load(out: Path, pattern: str) -> list[dict[str, Any]]:
    found = sorted(out.glob(pattern), key=lambda p: p.name)
    if not found:
        raise SystemExit(f"no {pattern} under {out}: run bench/compat_fmnist.py first")
    return [json.loads(p.read_text()) for p in found]


def sweep_section(out: Path, chosen: dict[str, Any]) -> str:
    rows: dict[str, Any] = {}
    for part in load(out / "sweep", "table-seed0-*.json"):
        rows.update(part["rows"])
    ind = rows["Independent"]
    lines = ["| run | old/old | new/old | new/new | new/new − Independent | chosen |", "|---|---|---|---|---|---|"]
    for label, r in rows.items():
        method, _, setting = label.partition(" ")
        knob, _, value = setting.partition("=")
        mark = "**yes**" if method in chosen and float(value or "nan") == chosen[method].get(knob) else ""
        gap = r["new_new"]["top1"] - ind["new_new"]["top1"]
        lines.append(f"| {label} | {r['old_old']['top1']:.4f} | {r['new_old']['top1']:.4f} | "
                     f"{r['new_new']['top1']:.4f} | {gap:+.4f} | {mark} |")  # fmt: skip
    chain: dict[str, Any] = {}
    for part in load(out / "sweep", "chain-seed0-w*.json"):
        chain.update(part["weights"])
    lines += ["", "| chain weight (feature = anchor = root_feature) | AC | AM | v2→v1 | v1/v1 | v3→v1 | v3→v2 "
              "| v2/v2 | chosen |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for w, r in sorted(chain.items(), key=lambda kv: float(kv[0])):
        m = r["all"]["matrix"]
        mark = "**yes**" if float(w) == chosen["chain"] else ""
        lines.append(f"| {w} | {r['all']['AC']:.3f} | {r['all']['AM']:.4f} | {m[1][0]:.4f} | {m[0][0]:.4f} | "
                     f"{m[2][0]:.4f} | {m[2][1]:.4f} | {m[1][1]:.4f} | {mark} |")  # fmt: skip
    return "\n".join(lines)


def table_section(runs: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    def col(row: str, test: str, metric: str = "top1") -> list[float]:
        return [r["rows"][row][test][metric] for r in runs]

    old = col("Independent", "old_old")
    lines = ["| row | new/old top-1 | new/old mAP | new/new top-1 | new/new mAP | negative flips | new/old − old/old "
             "(paired) | new/new − Independent (paired) | criterion |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    lines.append(f"| old/old (v1, classes 0–4) | {cell(old)} | {cell(col('Independent', 'old_old', 'mAP'), 3)} | – | – "
                 f"| – | – | – | – |")  # fmt: skip
    verdicts = {}
    for row in ROWS:
        new_old, new_new = col(row, "new_old"), col(row, "new_new")
        above = separated(interval(new_old), interval(old))
        within = paired(new_new, col("Independent", "new_new"))[0] >= -0.03
        verdicts[row] = {"new_old_above_old_old": above, "new_new_within_3_points": within}
        flips = [r["rows"][row]["negative_flips"] for r in runs]
        compare = "–" if row == "Independent" else diff(new_new, col("Independent", "new_new"))
        ok = "**met**" if above and within else ("new/old not above" if not above else "new/new > 3 points lower")
        lines.append(f"| {row} | {cell(new_old)} | {cell(col(row, 'new_old', 'mAP'), 3)} | {cell(new_new)} | "
                     f"{cell(col(row, 'new_new', 'mAP'), 3)} | {cell(flips)} | {diff(new_old, old)} | {compare} | "
                     f"{'–' if row == 'Independent' else ok} |")  # fmt: skip
    lines += ["", "The basis's own effect (paired over seeds, same weights on both sides):", "",
              "| comparison | new/old top-1 | new/new top-1 |", "|---|---|---|"]  # fmt: skip
    for a, b in (("OCA", "OCA, no basis"), ("OCA, no basis", "BCT + extra dims, no basis"),
                 ("BCT + extra dims, no basis", "BCT")):  # fmt: skip
        lines.append(f"| {a} − {b} | {diff(col(a, 'new_old'), col(b, 'new_old'))} | "
                     f"{diff(col(a, 'new_new'), col(b, 'new_new'))} |")  # fmt: skip
    return "\n".join(lines), verdicts


def chain_section(runs: list[dict[str, Any]], weight: str, plot: Path) -> str:
    text = []
    for subset in ("all", "classes 0-6"):
        mats = np.array([r["weights"][weight][subset]["matrix"] for r in runs])  # (S, 3, 3)
        acs = [r["weights"][weight][subset]["AC"] for r in runs]
        ams = [r["weights"][weight][subset]["AM"] for r in runs]
        n = runs[0]["weights"][weight][subset]["n"]
        lines = [f"Test items: {subset} (n = {n}); rows = query model, columns = gallery model, top-1 mean ± 95% "
                 "CI:", "",
                 "| query \\ gallery | v1 (0–3) | v2 (0–6) | v3 (0–9) |", "|---|---|---|---|"]  # fmt: skip
        for i in range(3):
            cells = [cell(mats[:, i, j].tolist()) if j <= i else "" for j in range(3)]
            lines.append(f"| v{i + 1} | " + " | ".join(cells) + " |")
        pairs = {"v2→v1": (1, 0), "v3→v1": (2, 0), "v3→v2": (2, 1)}
        met = [[bool(mats[s, i, j] > mats[s, j, j]) for s in range(len(runs))] for i, j in ((1, 0), (2, 0), (2, 1))]
        lines += ["", f"AC per seed: {', '.join(f'{a:.3f}' for a in acs)}; AC = {cell(acs, 3)}; AM = {cell(ams)}.",
                  "Cross-tests that beat the gallery model's own self-test, seeds out of " + str(len(runs)) + ": "
                  + ", ".join(f"{name} {sum(m)}" for name, m in zip(("v2→v1", "v3→v1", "v3→v2"), met, strict=True))
                  + ". Paired cross-test − self-test: "
                  + "; ".join(f"{name} {diff(mats[:, i, j].tolist(), mats[:, j, j].tolist())}"
                              for name, (i, j) in pairs.items())
                  + "."]  # fmt: skip
        text.append("\n".join(lines))
        if subset == "all":
            series = {f"gallery v{j + 1}": [(float(i + 1), *interval(mats[:, i, j].tolist())) for i in range(j, 3)]
                      for j in range(3)}  # fmt: skip
            line_plot(plot, series, "Fashion-MNIST chain, every stage trained: top-1 of model vX's queries on "
                      "each gallery", "query model version", "top-1 (10,000 test images)", log_x=False)  # fmt: skip
    return "\n\n".join(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="bench/compat_fmnist.py's --out")
    parser.add_argument("--docs", type=Path, default=Path("docs/compat_fmnist"))
    args = parser.parse_args()
    chosen = json.loads((args.out / "chosen.json").read_text())
    command = (args.out / "command.txt").read_text().strip()
    tables = load(args.out / "final", "table-seed*.json")
    chains = load(args.out / "final", "chain-seed*.json")
    weight = f"{chosen['chain']:g}"
    table, verdicts = table_section(tables)
    args.docs.mkdir(parents=True, exist_ok=True)
    chain = chain_section(chains, weight, args.docs / "chain.png")
    text = (f"# Fashion-MNIST: BT² table and chain, {len(tables)} seeds (generated by "
            f"bench/compat_fmnist_report.py)\n\n"
            f"Command: `{command}`, then `.venv/bin/python bench/compat_fmnist_report.py --out {args.out}`.\n\n"
            f"## Validation sweep (seed 0; 54,000 training images, 6,000 held out)\n\n"
            f"{sweep_section(args.out, chosen)}\n\n"
            f"Chosen: {json.dumps(chosen)}.\n\n"
            f"## Test split: all 60,000 training images, 10,000 test images, mean ± 95% CI over {len(tables)} seeds\n\n"
            f"{table}\n\n## Chain v1 → v2 → v3, every stage trained (alignment weight {weight})\n\n{chain}\n\n"
            f"![chain](chain.png)\n")  # fmt: skip
    write_text(args.docs / "table.md", text)
    results = {"command": command, "chosen": chosen, "verdicts": verdicts, "tables": tables, "chains": chains}
    write_text(args.docs / "results.json", json.dumps(results, indent=1))
    print(text)


if __name__ == "__main__":
    main()
