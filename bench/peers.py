"""ERS beside its peers on real data, all at one recall@k target (issue 17, "Must show").

    bash bench/setup_chroma.sh      # once: .bench-venvs/chroma (chromadb 1.5.9, hnswlib 0.8.0), git-ignored
    .venv/bin/python bench/peers.py --prepare-only                 # data only (the 100k embeddings take ~10 min)
    .venv/bin/python bench/peers.py --workers 1,2 --wire json --doc docs/benchmarks.md

Data (``peerslib.data``, cached under ``--data-dir``, default ``.bench-data/``): Fashion-MNIST 60k x 784
(l2, ann-benchmarks' set) and 100k all-MiniLM-L6-v2 embeddings of real texts (cosine), each with
held-out queries and exact top-k from faiss flat.

Systems, per set:
* ERS REST: one ``ers serve`` per run with ``ERS_TARGET_RECALL`` = the target; index ``auto`` at each
  ``--workers`` value, and each ``--indexes`` spec by hand (at the fewest workers). ERS's own tuning
  picks nprobe / efSearch (``peerslib.ers``).
* Chroma server through REST v2, ef_search the smallest reaching the target (``peerslib.chroma``).
* hnswlib and faiss HNSW in-process, ef the smallest reaching the target (``peerslib.inproc``); hnswlib
  once more at ERS `auto`'s measured recall when that is higher: the batch goal's "same recall" row.

Each row: recall@k (all queries), single-query QPS (REST: closed loop, the best of ``--concurrency``,
one keep-alive connection per thread; in-process: one thread), batch QPS (``--batch`` queries per
call; REST at ``--batch-concurrency``, in-process on every core), p50/p99 per call, bytes of memory
per vector (server PSS over its process tree after load minus before, / n; in-process: RSS delta of a
fresh process), ingest rate through each system's normal ingest path, and time to ready (start of
ingest to the first query answered by the index that is then measured, builds included).

After the sets, ``--sq8-n`` x ``--sq8-dim`` synthetic vectors: IVF-SQ8 + exact re-rank against Flat, the
memory each holds per vector, built as ``auto`` builds them, through ``bench/index_choice.py`` in a fresh
process (``peerslib.sq8``).

Writes ``--out``/table.md and results.json; ``--doc FILE`` also replaces its
``<!-- peers:begin -->`` ... ``<!-- peers:end -->`` block. Exit 0 whatever the goals say; 1 if it
could not run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import faiss
from peerslib import report
from peerslib.chroma import CHROMA_VENV, SETUP_HINT, chroma_bin
from peerslib.data import DEFAULT_DATA_DIR, HELD_OUT, Dataset, load_dataset
from peerslib.ers import WIRES, ErsOptions, run_ers, serve_has_workers
from peerslib.inproc import run_inproc, save_arrays
from peerslib.sq8 import run_sq8_memory
from searchlib.data import load_average, machine_info
from searchlib.wrk import wrk_bin

ROOT = Path(__file__).resolve().parents[1]
SYSTEMS = ("ers", "chroma", "hnswlib", "faiss")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sets", default="fashion,minilm", help="comma-separated: fashion, minilm")
    p.add_argument("--n", type=int, help="base vectors per set (default: all: 60,000 / 100,000)")
    p.add_argument("--queries", type=int, default=HELD_OUT, help=f"held-out queries per set (<= {HELD_OUT})")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--target-recall", type=float, default=0.95)
    p.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated: " + ", ".join(SYSTEMS))
    p.add_argument("--indexes", default="HNSW32,Flat;IVF1024,Flat", help="hand-picked ERS specs, ';'-separated")
    p.add_argument("--workers", default="1,2", help="ers serve --workers values for `auto` (1 only: no flag needed)")
    p.add_argument("--wire", choices=WIRES, default="json", help="how vectors travel to ERS")
    p.add_argument(
        "--load",
        choices=("wrk", "python"),
        default="wrk",
        help="REST load generator: wrk (C, ~0.02 ms CPU per request; apt-get install wrk) or Python threads",
    )
    p.add_argument("--seconds", type=float, default=8.0, help="measured seconds per load row")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--concurrency", default="2,8", help="REST single-query client concurrencies (best is kept)")
    p.add_argument("--batch", type=int, default=32, help="queries per batch call")
    p.add_argument("--batch-concurrency", type=int, default=os.cpu_count() or 2)
    p.add_argument("--upsert-batch", type=int, default=1000, help="items per ERS upsert")
    p.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE", help="extra ERS env")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--embed-threads", type=int, default=2, help="ONNX threads for the text embeddings")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "peers", help="table.md and results.json go here")
    p.add_argument("--doc", type=Path, help="also replace the peers block of this markdown file")
    p.add_argument("--prepare-only", action="store_true", help="prepare and cache the data sets, then exit")
    p.add_argument("--keep", action="store_true", help="keep the throwaway server directories and logs")
    p.add_argument("--sq8-n", type=int, default=1_000_000, help="SQ8 vs Flat memory section's vectors; 0 skips it")
    p.add_argument("--sq8-dim", type=int, default=384, help="SQ8 vs Flat memory section's dimension")
    args = p.parse_args(argv)
    args.set_list = [s for s in args.sets.split(",") if s]
    args.system_list = [s for s in args.systems.split(",") if s]
    for bad in set(args.system_list) - set(SYSTEMS):
        p.error(f"unknown system '{bad}' (choose from {', '.join(SYSTEMS)})")
    for bad in set(args.set_list) - {"fashion", "minilm"}:
        p.error(f"unknown set '{bad}' (fashion, minilm)")
    args.worker_list, args.conc_list = _ints(args.workers), _ints(args.concurrency)
    args.index_list = [s.strip() for s in args.indexes.split(";") if s.strip()]
    if not args.worker_list or min(args.worker_list) < 1 or not args.conc_list:
        p.error("--workers and --concurrency need positive integers")
    if not 0 < args.queries <= HELD_OUT or args.batch < 1:
        p.error(f"--queries must be 1..{HELD_OUT}, --batch >= 1")
    if args.sq8_n != 0 and (args.sq8_n < 1000 or args.sq8_dim < 8):
        p.error("--sq8-n must be 0 (skip) or >= 1000, --sq8-dim >= 8")
    return args


def check_peers(args: argparse.Namespace) -> None:
    """Fail before any measurement when a requested peer or flag is missing."""
    if args.load == "wrk" and {"ers", "chroma"} & set(args.system_list):
        wrk_bin()
    if {"chroma", "hnswlib"} & set(args.system_list):
        chroma_bin()
        if not (CHROMA_VENV / "bin" / "python").exists():
            raise RuntimeError(SETUP_HINT)
    if "ers" in args.system_list and args.worker_list != [1] and not serve_has_workers():
        raise RuntimeError("this tree's `ers serve` has no --workers option (issue 17 part 4); run with --workers 1")


def run_set(ds: Dataset, args: argparse.Namespace, work: Path, workers_flag: bool, log: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    k, target = args.k, args.target_recall
    if "ers" in args.system_list:
        options = ErsOptions(
            k=k, target=target, seconds=args.seconds, warmup=args.warmup, concurrencies=args.conc_list,
            batch=args.batch, batch_concurrency=args.batch_concurrency, upsert_batch=args.upsert_batch,
            wire=args.wire, load=args.load, server_env=dict(kv.partition("=")[::2] for kv in args.server_env),
        )  # fmt: skip
        fewest = min(args.worker_list)
        runs = [("auto", w) for w in args.worker_list] + [(s, fewest) for s in args.index_list]
        for index, workers in runs:
            log(f"{ds.name}: ERS {index}, --workers {workers}, wire {args.wire}")
            slug = "".join(c if c.isalnum() else "_" for c in index)
            # `auto` at more workers serves the data directory the fewest workers built and tuned: the
            # same index and efSearch/nprobe (two fresh builds tune on their own timing, e.g. 42 vs 37).
            reuse = work / f"ers-{ds.name}-auto-w{fewest}" if index == "auto" and workers != fewest else None
            r = run_ers(
                ds, index, workers if workers_flag else None, options, work / f"ers-{ds.name}-{slug}-w{workers}", reuse
            )
            r["workers_flag"] = workers_flag
            rows.append(r)
            log(f"  recall {r['recall']:.3f} on {r['active_index']} {r['tuned']}, single {r['single']['qps']:.0f} "
                f"QPS, batch {r['batch']['qps']:.0f} QPS, ready {r['ready_s']:.1f} s")  # fmt: skip
    if "chroma" in args.system_list:
        from peerslib.chroma import run_chroma

        log(f"{ds.name}: Chroma")
        r = run_chroma(ds, k, target, args.seconds, args.warmup, args.conc_list, args.batch,
                       args.batch_concurrency, work / f"chroma-{ds.name}", args.load)  # fmt: skip
        rows.append(r)
        log(f"  recall {r['recall']:.3f} at ef_search {r['ef']}, single {r['single']['qps']:.0f} QPS")
    arrays = work / f"arrays-{ds.name}"
    pythons = {"hnswlib": CHROMA_VENV / "bin" / "python", "faiss": Path(sys.executable)}
    for lib in ("hnswlib", "faiss"):
        if lib in args.system_list:
            if not arrays.exists():
                save_arrays(arrays, ds.base, ds.queries, ds.truth)
            # At the target (the side-by-side row), and for hnswlib again at ERS `auto`'s measured recall:
            # the batch goal compares "at the same recall", and ERS's own tuning lands above the target
            # (it cannot pick its knob on these queries' ground truth, as the peers' ef ladder does here).
            matched = matched_recall(rows) if lib == "hnswlib" else None
            for want in [target] + ([matched] if matched is not None and matched > target else []):
                log(f"{ds.name}: {lib} in-process at recall >= {want:.3f}")
                r = run_inproc(pythons[lib], lib, arrays, ds.metric, k, want, args.seconds, args.batch)
                r["system"] = "in-process"
                if want != target:
                    r["matched_to_ers"] = want
                rows.append(r)
                log(f"  recall {r['recall']:.3f} at ef {r['ef']}, single {r['single']['qps']:.0f} QPS (1 thread), "
                    f"batch {r['batch']['qps']:.0f} QPS")  # fmt: skip
    return rows


def matched_recall(rows: list[dict[str, Any]]) -> float | None:
    """The recall of ERS `auto` at the most workers (rounded down to 3 places), when it is above the
    target row's; None when ERS did not run."""
    autos = sorted((r for r in rows if r["system"] == "ERS" and r["index"] == "auto"), key=lambda r: r["workers"])
    return math.floor(autos[-1]["recall"] * 1000) / 1000 if autos else None


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    command = ".venv/bin/python bench/peers.py" + ("" if len(sys.argv) < 2 else " " + shlex.join(sys.argv[1:]))

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - started:6.0f} s] {msg}", flush=True)

    datasets = {}
    for name in args.set_list:
        log(f"preparing {name}")
        datasets[name] = load_dataset(name, args.data_dir, args.n, args.queries, args.k, args.embed_threads)
        log(f"  {datasets[name].description}")
    if args.prepare_only:
        return 0
    check_peers(args)
    workers_flag = "ers" in args.system_list and serve_has_workers()
    info = machine_info()
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()  # fmt: skip
    load = " ".join(f"{x:.2f}" for x in load_average())
    work = Path(tempfile.mkdtemp(prefix="ers-peers-", dir="/tmp"))
    results: dict[str, list[dict[str, Any]]] = {}
    sq8_memory = None
    try:
        for name, ds in datasets.items():
            results[name] = run_set(ds, args, work, workers_flag, log)
        if args.sq8_n:
            sq8_memory = run_sq8_memory(args.sq8_n, args.sq8_dim, args.target_recall, work, log)
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    goal_lines = report.goals(results, args.target_recall, sq8_memory)
    when = dt.datetime.now().astimezone().isoformat(timespec="minutes")
    header = [
        f"Command: `{command}` (peers venv: `bash bench/setup_chroma.sh`)",
        "",
        f"Run {when}, ERS at {commit.stdout.strip()}{' + local changes' if dirty else ''}; {info['cores']} cores "
        f"({info['cpu']}), {info['mem_gib']} GiB; load average at start {load}; faiss {faiss.__version__}.",
        f"Target recall@{args.k} {args.target_recall}; {args.seconds:g} s per load row after {args.warmup:g} s "
        f"warm-up; REST single queries at client concurrency {args.concurrency} (best kept), batches of "
        f"{args.batch} at concurrency {args.batch_concurrency}; ERS wire `{args.wire}`; REST load from "
        f"{'wrk (one thread)' if args.load == 'wrk' else 'Python threads'}.",
        "",
        *[f"- `{name}`: {ds.description}" for name, ds in datasets.items()],
    ]
    notes = [
        "recall: all held-out queries against exact faiss-flat top-k; ✗ marks a row below the target.",
        "ERS: one `ers serve` per row, `ERS_TARGET_RECALL` set to the target; ERS's own tuning picks "
        "nprobe / efSearch (shown as the server reports them). A spec that needs more training points than "
        "the set has serves Flat (shown).",
        "Chroma, hnswlib, faiss: ef is the smallest of a fixed ladder reaching the target (sweep in results.json).",
        "bytes / vector: PSS of the server's process tree after load minus before, / n (REST); RSS delta of "
        "a fresh process around the build (in-process).",
        "ready: start of ingest to the first query answered by the index then measured (in-process: build "
        "+ first query; the ef sweep is not counted).",
        "ERS `auto` at more workers serves a copy of the data directory the fewest workers built (marked "
        '"served from"): the same index and efSearch/nprobe, so the workers ratio compares equal work. Its '
        "ingest is not measured (–) and its ready time is the restart's: process start to the first answer.",
        "in-process single queries run on 1 thread; batches on every core.",
    ]
    text = report.document(header, results, goal_lines, notes, args.target_recall, args.k, sq8_memory)
    print("\n" + text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(text)
    payload = {"command": command, "machine": info, "args": {k: str(v) for k, v in vars(args).items()},
               "results": results, "sq8_memory": sq8_memory, "goals": goal_lines}  # fmt: skip
    (args.out / "results.json").write_text(json.dumps(payload, indent=2, default=str))
    log(f"wrote {args.out / 'table.md'} and {args.out / 'results.json'}")
    if args.doc:
        report.replace_block(args.doc, text)
        log(f"replaced the peers block of {args.doc}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except Exception:
        print("peers benchmark could not run:\n" + traceback.format_exc(), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
