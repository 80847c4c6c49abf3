"""Run every atheris harness for a fixed time, one after the other, and record what each did.

    .venv/bin/python tests/fuzz/run_all.py --seconds 600            # the recorded 10-minute runs
    .venv/bin/python tests/fuzz/run_all.py --seconds 90 --targets json,multipart --nice 10

Per harness it records the duration, executions (and per second), the corpus at the end (files,
and how many the run added), libFuzzer's coverage counters, and the failures: distinct ones with
how often each was hit (``--keep-going``, see ``entry.py``), plus any libFuzzer artifact (timeout,
out-of-memory). Everything lands in ``--out`` (default ``tests/fuzz/runs/<timestamp>``, ignored by git): per harness its
log, its new inputs (``corpus/``) and its failures (``crashes/``); and ``results.json`` and
``results.md``, a table to paste under "Fuzzing" in ``docs/reliability.md``.

The saved seeds (``tests/fuzz/corpus/<target>``) are read, never written: new inputs go to the run's
own folder. To keep the ones that add coverage, merge them in (libFuzzer minimises the set):
``python tests/fuzz/fuzz_json.py -merge=1 tests/fuzz/corpus/json tests/fuzz/runs/<ts>/json/corpus``
(and keep the replay under 30 s: a few dozen small files per target).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TARGETS = ("images", "json", "multipart", "manifests")
MAX_LEN = {"images": 16384, "json": 32768, "multipart": 32768, "manifests": 32768}
ARTIFACT = re.compile(r"^(crash|timeout|oom|leak|slow-unit)-[0-9a-f]+$")
STATUS = re.compile(r"#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/(\S+)")
STAT = re.compile(r"stat::(\w+):\s+(\d+)")


def run_one(target: str, seconds: int, out: Path, niceness: int, timeout_s: int) -> dict[str, Any]:
    folder = out / target
    corpus, crashes, scratch = folder / "corpus", folder / "crashes", folder / "tmp"
    for path in (corpus, crashes, scratch):
        path.mkdir(parents=True, exist_ok=True)
    seeds = HERE / "corpus" / target
    command = [
        *(["nice", "-n", str(niceness)] if niceness else []),
        sys.executable, str(HERE / f"fuzz_{target}.py"), str(corpus), str(seeds),
        f"-max_total_time={seconds}", f"-max_len={MAX_LEN[target]}", f"-timeout={timeout_s}",
        "-rss_limit_mb=6144", "-print_final_stats=1", f"-artifact_prefix={crashes}/",
        "--keep-going", f"--crash-dir={crashes}",
    ]  # fmt: skip
    # The app's data directories go under the run's scratch folder (removed after), not /tmp.
    env = {**os.environ, "TMPDIR": str(scratch), "PYTHONHASHSEED": "0"}
    log = folder / "fuzz.log"
    started = time.monotonic()
    with log.open("wb") as sink:
        try:
            code = subprocess.run(command, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                  timeout=seconds + 600, check=False).returncode  # fmt: skip
        except subprocess.TimeoutExpired:
            code = -1
    wall = time.monotonic() - started
    shutil.rmtree(scratch, ignore_errors=True)
    return summarise(target, log, corpus, seeds, crashes, code, wall)


def summarise(
    target: str, log: Path, corpus: Path, seeds: Path, crashes: Path, code: int, wall: float
) -> dict[str, Any]:
    text = log.read_text(errors="replace")
    stats = {name: int(value) for name, value in STAT.findall(text)}
    status = STATUS.findall(text)
    last = status[-1] if status else None
    summary_file = crashes / "summary.json"
    failures = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    recorded = {entry["file"] for entry in failures.values()}
    artifacts = sorted(p.name for p in crashes.iterdir() if ARTIFACT.match(p.name) and p.name not in recorded)
    return {
        "harness": target,
        "exit_code": code,
        "wall_s": round(wall, 1),
        "fuzzing_s": _fuzzing_seconds(text),
        "executions": stats.get("number_of_executed_units", int(last[0]) if last else 0),
        "exec_per_s": stats.get("average_exec_per_sec"),
        "coverage": int(last[1]) if last else None,
        "features": int(last[2]) if last else None,
        "corpus_files": int(last[3]) if last else None,
        "corpus_bytes": last[4] if last else None,
        "seeds": len([p for p in seeds.iterdir() if p.is_file()]),
        "new_inputs": stats.get("new_units_added"),  # inputs that added coverage (some later replaced by smaller)
        "peak_rss_mb": stats.get("peak_rss_mb"),
        "failures": {sig: entry["count"] for sig, entry in failures.items()},
        "failure_files": {sig: str(crashes / entry["file"]) for sig, entry in failures.items()},
        "artifacts": artifacts,
        "log": str(log),
    }


def _fuzzing_seconds(text: str) -> int | None:
    """libFuzzer's own clock: 'Done N runs in S second(s)'."""
    match = re.search(r"Done \d+ runs in (\d+) second", text)
    return int(match.group(1)) if match else None


def markdown(results: list[dict[str, Any]], label: str) -> str:
    lines = [
        f"{label}",
        "",
        "| Harness | Fuzzing time | Executions | exec/s | Corpus at end (files, size) | New coverage found (inputs) "
        "| Coverage (cov / ft) | Distinct failures (hits) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        hits = sum(r["failures"].values())
        distinct = len(r["failures"]) + len(r["artifacts"])
        seconds = r["fuzzing_s"] if r["fuzzing_s"] is not None else r["wall_s"]
        lines.append(
            f"| {r['harness']} | {seconds} s | {r['executions']:,} | {r['exec_per_s']} | "
            f"{r['corpus_files']} ({r['corpus_bytes']}) | {r['new_inputs']} | {r['coverage']} / {r['features']} "
            f"| {distinct} ({hits}) |"
        )
    for r in results:
        for sig, count in r["failures"].items():
            lines.append(f"- {r['harness']}: `{sig}` × {count} — `{r['failure_files'][sig]}`")
        for name in r["artifacts"]:
            lines.append(f"- {r['harness']}: libFuzzer artifact `{name}` (see {r['log']})")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=600, help="fuzzing time per harness (default 600)")
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated subset of {TARGETS}")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default tests/fuzz/runs/<timestamp>)")
    parser.add_argument("--nice", type=int, default=0, help="niceness of the fuzzers (shared machines: 10)")
    parser.add_argument("--timeout", type=int, default=30, help="seconds one input may take before it is a hang")
    parser.add_argument("--label", default=None, help="the heading line of results.md")
    args = parser.parse_args()
    targets = [t for t in args.targets.split(",") if t]
    unknown = set(targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}; choose from {TARGETS}")
    out = args.out or HERE / "runs" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for target in targets:
        print(f"fuzzing {target} for {args.seconds} s ...", flush=True)
        result = run_one(target, args.seconds, out, args.nice, args.timeout)
        results.append(result)
        print(json.dumps({k: v for k, v in result.items() if k != "failure_files"}, indent=1), flush=True)
    label = args.label or f"Runs of {args.seconds} s per harness, {time.strftime('%Y-%m-%d')}, `tests/fuzz/run_all.py`:"
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(markdown(results, label))
    print(f"\n{markdown(results, label)}\nwritten to {out}")


if __name__ == "__main__":
    main()
