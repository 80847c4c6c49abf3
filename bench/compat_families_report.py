"""The markdown table of a ``compat_families.py`` run, from its JSON (also rerunnable on its own).

    .venv/bin/python bench/compat_families_report.py docs/compat_families/unified-unified.json

Rows: old/old (v1 against itself), then per model new/old (its queries, first ``compat_dims`` dims,
against v1's gallery) and new/new; columns: the family's metrics, mean ± 95% Student-t CI over seeds.
Below it, issue 14's criterion per method and metric, from paired per-seed differences: new/old above
old/old with non-overlapping intervals, and new/new no more than 3 points below Independent's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from plotlib import line_plot

from models.eval.stats import interval, paired, separated

ROWS = ("Independent", "BCT", "BT²", "OCA")
WITHIN = 0.03  # new/new may fall this far below Independent's (issue 14)


def cell(values: list[float]) -> str:
    mean, half = interval(values)
    return f"{mean:.3f} ± {half:.3f}"


def points(diff: tuple[float, float]) -> str:
    return f"{100 * diff[0]:+.1f} [{100 * (diff[0] - diff[1]):+.1f}, {100 * (diff[0] + diff[1]):+.1f}]"


def test_table(runs: list[dict[str, Any]]) -> list[str]:
    metrics = list(runs[0]["Independent"])
    lines = ["| model | pair | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics)]
    lines.append("| v1 | old/old | " + " | ".join(cell([r["Independent"][m]["old/old"] for r in runs])
                                                 for m in metrics) + " |")  # fmt: skip
    for row in ROWS:
        for pair in ("new/old", "new/new"):
            lines.append(f"| {row} | {pair} | " + " | ".join(cell([r[row][m][pair] for r in runs])
                                                            for m in metrics) + " |")  # fmt: skip
    return lines


def criterion(runs: list[dict[str, Any]]) -> list[str]:
    metrics = list(runs[0]["Independent"])
    lines = ["| method | metric | new/old − old/old (points) | intervals apart | new/new − Independent (points) "
             "| within 3 | meets |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in ROWS[1:]:
        for m in metrics:
            new_old, old_old = ([r[row][m]["new/old"] for r in runs], [r["Independent"][m]["old/old"] for r in runs])
            new_new, ind = [r[row][m]["new/new"] for r in runs], [r["Independent"][m]["new/new"] for r in runs]
            apart = separated(interval(new_old), interval(old_old))
            gap = paired(new_new, ind)
            within = gap[0] >= -WITHIN
            lines.append(
                f"| {row} | {m} | {points(paired(new_old, old_old))} | {'yes' if apart else 'no'} | "
                f"{points(gap)} | {'yes' if within else 'no'} | {'**yes**' if apart and within else 'no'} |"
            )
    return lines


def sweep_table(result: dict[str, Any]) -> list[str]:
    sweep = result["sweep"]
    metric = next(iter(sweep["Independent"]))
    lines = [f"| model | {metric} new/old | {metric} new/new | chosen |", "|---|---|---|---|"]
    lines.append(f"| v1 (old/old) | {sweep['Independent'][metric]['old/old']:.3f} | – | |")
    chosen = {f"{row} {knob}={value:g}" for row, w in result["chosen"].items() for knob, value in w.items()}
    for row, s in sweep.items():
        mark = "✓" if row in chosen else ""
        lines.append(f"| {row} | {s[metric]['new/old']:.3f} | {s[metric]['new/new']:.3f} | {mark} |")
    return lines


def sweep_plot(result: dict[str, Any], path: Path) -> None:
    """The validation trade-off: each method's new/old and new/new against its weight (seed 0)."""
    sweep = result["sweep"]
    metric = next(iter(sweep["Independent"]))
    series: dict[str, list[tuple[float, float, float]]] = {}
    for row, s in sweep.items():
        if row == "Independent":
            continue
        method, setting = row.split(" ")
        knob, value = setting.split("=")
        for pair in ("new/old", "new/new"):
            label = f"{method.replace('²', '2')} {pair} ({knob})"  # the PNG font has no superscript two
            series.setdefault(label, []).append((float(value), s[metric][pair], 0.0))
    old_old, floor = sweep["Independent"][metric]["old/old"], sweep["Independent"][metric]["new/new"] - WITHIN
    refs = {f"v1 old/old ({old_old:.3f})": old_old, f"Independent new/new - 3 points ({floor:.3f})": floor}
    line_plot(path, series, f"{result['family']}: validation {metric} against the compat weight (seed 0)",
              "compat weight", metric, references=refs)  # fmt: skip


def report(result: dict[str, Any]) -> str:
    runs = result["runs"]
    chosen = ", ".join(f"{row} {k}={v:g}" for row, w in result["chosen"].items() for k, v in w.items())
    return "\n".join([
        f"### {result['family']}: {len(runs)} seeds, test split, mean ± 95% CI",
        "",
        f"Command: `{result['command']}` ({result['seconds']} s). "
        f"v1 = the config with `{json.dumps(result.get('v1', {}))}`, "
        f"v2 = the config with `{json.dumps(result['v2'])}`.",
        f"Compat weights chosen on validation (`{json.dumps(result['validation'])}`, seed 0): {chosen}."
        if result["sweep"]
        else f"Compat weights fixed in advance (a one-weight `--grid`; no validation sweep): {chosen}.",
        "",
        *test_table(runs),
        "",
        "Issue 14's criterion, paired over the seeds (mean [95% CI]):",
        "",
        *criterion(runs),
        "",
        *(sweep_section(result) if result["sweep"] else []),
    ])  # fmt: skip


def sweep_section(result: dict[str, Any]) -> list[str]:
    return [
        "Validation sweep (seed 0; the rule: the highest new/old whose new/new is within 3 points of "
        "Independent's, on the first metric):",
        "",
        *sweep_table(result),
        "",
        f"![validation sweep]({result['family']}-sweep.png)",
        "",
    ]


def write(result: dict[str, Any], json_path: Path) -> str:
    """The markdown beside the JSON, and the sweep's PNG (where there was a sweep) beside both."""
    text = report(result)
    json_path.with_suffix(".md").write_text(text)
    if result["sweep"]:
        sweep_plot(result, json_path.parent / f"{result['family']}-sweep.png")
    return text


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print(write(json.loads(Path(name).read_text()), Path(name)))
