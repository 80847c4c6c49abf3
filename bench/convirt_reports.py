"""ConVIRT's report side with intervals: report->report precision@k by MeSH heading (issue 19).

    OMP_NUM_THREADS=1 .venv/bin/python bench/convirt_reports.py --data-dir DIR

The protocol of ``ers eval ... --data iu-reports`` (``models.data.convirt_pairs.report_retrieval``):
single-heading Indiana University chest X-ray reports, "normal" and each heading capped at 100,
leave-one-out retrieval by cosine. Rows: chance; TF-IDF bag of words; MiniLM-L6 (the zoo's
``minilm-l6@1``, the text tower's initialisation); the ConVIRT text tower of each seed trained by
``bench/convirt_seeds.py`` (its artifacts under ``--runs``/seed-N; run that first). Every encoder is
loaded and run as ``ers eval`` runs it: the served ONNX model, ``load_encoder(..., backend="onnx")``.

Chance, TF-IDF and MiniLM are deterministic (one run): mean [2.5%, 97.5%] of a bootstrap over the
reports. The ConVIRT tower: mean ± 95% Student-t over seeds, and the bootstrap over seeds × reports.
Differences against TF-IDF are bootstrapped paired by report (and by seed for ConVIRT).
``models.eval.stats.bootstrap`` resamples seeds, then queries; a deterministic row enters it as two
identical seeds, so its resamples draw reports only. Writes ``reports.md`` and ``reports.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from convirt_seeds import span
from reportlib import command_line, write_text

from models.core.artifact import MANIFEST, verify_artifact
from models.core.registry import load_encoder
from models.data.convirt_pairs import KS, encode_all, report_retrieval, zoo_artifact
from models.eval.stats import bootstrap, interval

MINILM = "minilm-l6@1"
ONE_RUN = {"chance": "chance_r2r", "TF-IDF bag of words": "bow_r2r", "MiniLM-L6 (`minilm-l6@1`, the text tower's "
           "initialisation)": "r2r"}  # fmt: skip
CONVIRT = "ConVIRT text tower (trained on emoji names)"
VERSUS = "bow_r2r"  # the paired differences: each model − TF-IDF


def text_tower(run: Path) -> Path:
    """The text-tower artifact of one seed's run (``convirt-emoji-text@1``): the one whose family is convirt-text
    (the run also holds the image tower, and ``.checkpoints``, which is no artifact)."""
    artifacts = [d for d in sorted(run.iterdir()) if (d / MANIFEST).is_file()]
    towers = [d for d in artifacts if verify_artifact(d).family == "convirt-text"]
    if len(towers) != 1:
        raise SystemExit(f"{run}: expected one convirt-text artifact, found {[t.name for t in towers]}")
    return towers[0]


def scored(artifact: Path, data_dir: Path) -> dict[str, Any]:
    encoder = load_encoder(artifact, backend="onnx")
    return report_retrieval(lambda texts: encode_all(encoder, texts), data_dir, per_query=True)


def each(runs: Sequence[dict[str, Any]], prefix: str, k: int) -> list[list[float]]:
    """Per-report P@k of one row, one list per run (seeds × reports)."""
    return [run[f"{prefix}_p@{k}_per_query"] for run in runs]


def boot(scores: list[list[float]], baseline: list[list[float]] | None = None) -> tuple[float, float, float]:
    """``bootstrap`` over seeds × reports; one run (deterministic) enters as two identical seeds: reports only."""

    def twice(rows: list[list[float]]) -> list[list[float]]:
        return rows * 2 if len(rows) == 1 else rows

    return bootstrap(twice(scores), None if baseline is None else twice(baseline))


def table(
    fixed: dict[str, Any], seeds: list[dict[str, Any]], seed_ids: list[int], command: str
) -> tuple[str, dict[str, Any]]:
    cols = [f"r2r P@{k}" for k in KS]
    result: dict[str, Any] = {"rows": {}, "versus_tfidf": {}}
    lines = [f"Report->report precision@k by MeSH heading, {fixed['reports']} Indiana University chest X-ray reports "
             f"({fixed['mesh_labels']} headings, leave-one-out). One-run rows: mean [2.5%, 97.5%] of a bootstrap over "
             f"the reports; ConVIRT: {len(seeds)} seeds, mean ± 95% Student-t over seeds and the bootstrap over "
             "seeds × reports; differences paired by report.",
             "", "| row | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]  # fmt: skip
    for row, prefix in ONE_RUN.items():
        cells = {k: boot(each([fixed], prefix, k)) for k in KS}
        result["rows"][row] = {f"p@{k}": fixed[f"{prefix}_p@{k}"] for k in KS} | {
            f"p@{k}_bootstrap": cells[k] for k in KS}  # fmt: skip
        lines.append(f"| {row}, bootstrap over reports | " + " | ".join(span(*cells[k]) for k in KS) + " |")
    student = {k: interval([s[f"r2r_p@{k}"] for s in seeds]) for k in KS}
    over = {k: boot(each(seeds, "r2r", k)) for k in KS}
    result["rows"][CONVIRT] = {f"p@{k}_per_seed": [s[f"r2r_p@{k}"] for s in seeds] for k in KS} | {
        f"p@{k}_student_t": student[k] for k in KS} | {f"p@{k}_bootstrap": over[k] for k in KS}  # fmt: skip
    lines.append(f"| {CONVIRT}, Student-t over seeds | " + " | ".join(
        f"{mean:.3f} ± {half:.3f}" for mean, half in student.values()) + " |")  # fmt: skip
    lines.append(f"| {CONVIRT}, bootstrap over seeds × reports | " + " | ".join(span(*over[k]) for k in KS) + " |")
    versus = {"ConVIRT text tower − TF-IDF": (seeds, "r2r"), "MiniLM-L6 − TF-IDF": ([fixed], "r2r")}
    for row, (runs, prefix) in versus.items():
        diff = {k: boot(each(runs, prefix, k), each(runs, VERSUS, k)) for k in KS}
        result["versus_tfidf"][row] = {f"p@{k}_bootstrap": diff[k] for k in KS}
        lines.append(f"| {row}, paired bootstrap | " + " | ".join(span(*diff[k], sign="+") for k in KS) + " |")
    lines += ["", "TF-IDF: cosine on TF-IDF vectors of the lower-cased words of each report (fitted on the "
              f"{fixed['reports']} reports). MiniLM-L6 and the ConVIRT text towers (seeds "
              f"{', '.join(map(str, seed_ids))} of `bench/convirt_seeds.py`, trained on emoji names) run as `ers eval "
              "--data iu-reports` runs them, through the served ONNX model. Chance: a random ranking's expectation, "
              "the share of the other reports that carry the query's heading. The one-run rows are bootstrapped "
              "over the reports only; the ConVIRT rows' bootstrap draws seeds, then reports, and its difference "
              "from TF-IDF takes both rows at the same draw.", ""]  # fmt: skip
    for row, diff in result["versus_tfidf"].items():
        mean, low, high = diff["p@5_bootstrap"]
        side = "above" if low > 0 else "below" if high < 0 else "not separable from"
        lines.append(f"- P@5, {row}: {span(mean, low, high, sign='+')}: **{side}** TF-IDF"
                     f"{'' if side.startswith('not') else ', the interval excludes 0'}.")  # fmt: skip
    return "\n".join(lines) + f"\n\nCommand: `{command}`\n", result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--data-dir", type=Path, default=Path(".ers-data"))
    p.add_argument("--runs", type=Path, help="bench/convirt_seeds.py's runs (default: DATA_DIR/bench/convirt-seeds)")
    p.add_argument("--out", type=Path, default=Path("docs/convirt"))
    args = p.parse_args()
    if args.seeds < 2:
        p.error("need --seeds >= 2 (the protocol asks for 5)")
    runs_dir = args.runs or args.data_dir / "bench" / "convirt-seeds"
    command = command_line("convirt_reports.py")
    started = time.time()
    fixed = scored(zoo_artifact(MINILM, args.data_dir), args.data_dir)
    print(f"[{time.time() - started:5.0f} s] {MINILM}: P@5 {fixed['r2r_p@5']:.3f}, TF-IDF {fixed['bow_r2r_p@5']:.3f}, "
          f"chance {fixed['chance_r2r_p@5']:.3f} on {fixed['reports']} reports", flush=True)  # fmt: skip
    seed_ids, seeds, towers = list(range(args.seeds)), [], []
    for seed in seed_ids:
        tower = text_tower(runs_dir / f"seed-{seed}")
        towers.append(str(tower.relative_to(runs_dir)))
        seeds.append(scored(tower, args.data_dir))
        elapsed = time.time() - started
        print(f"[{elapsed:5.0f} s] seed {seed} ({tower.name}): P@5 {seeds[-1]['r2r_p@5']:.3f}", flush=True)
        for key in ("bow_r2r_p@5_per_query", "chance_r2r_p@5_per_query"):  # the pairing holds: the same reports
            if seeds[-1][key] != fixed[key]:
                raise SystemExit(f"seed {seed}: {key} differs from the MiniLM run: not the same reports")
    text, result = table(fixed, seeds, seed_ids, command)
    print("\n" + text)
    write_text(args.out / "reports.md", text)
    meta = {"command": command, "reports": fixed["reports"], "mesh_labels": fixed["mesh_labels"], "seeds": seed_ids,
            "towers": towers,
            "seconds": round(time.time() - started, 1)}  # fmt: skip
    write_text(args.out / "reports.json", json.dumps(meta | result, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
