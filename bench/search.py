"""Search benchmark: in-process FAISS vs the ERS REST API, on the same data, side by side in one run.

    .venv/bin/python bench/search.py [--n 100000 --dim 128 --seconds 8 --concurrency 2 --high-concurrency 16 ...]

Data: ``--n`` float32 vectors of ``--dim`` dimensions drawn around ``--clusters`` Gaussian centres
(like embeddings of items in categories), L2-normalised, seeded. Queries are fresh draws from the
same distribution, never the stored vectors themselves.

Table 1, exact search (metric cosine, ``Flat`` index), single queries and batches of ``--batch``:
  in-process ``IndexIDMap2(IndexFlatIP)`` with ``faiss.omp_set_num_threads(1)`` in every thread and
  the server's BLAS threshold, vs ``POST /search`` and ``POST /search/batch`` on a real ``ers serve``
  subprocess. Every row runs at two client concurrencies, ``--concurrency`` (default: the core
  count) and ``--high-concurrency`` (default 16, where the server can merge concurrent searches):
  closed-loop threads, in-process calling FAISS, API with one keep-alive ``http.client`` connection
  each. Each REST row is compared with the in-process row of its kind at the in-process side's best
  concurrency. All eight rows run in ``--rounds`` interleaved rounds, so drift and other processes'
  load hit both sides of a ratio alike.
Table 1b: ``GET /healthz`` (HTTP + framework cost) and ``/search`` on a 100-item collection (the
  whole request path with FAISS cost ~0): the ceiling of requests/s through HTTP on this machine.
Table 2, ``auto`` after it switched to an approximate index (ERS_AUTO_INDEX_THRESHOLD on the server
  env): recall@k through REST against exact ground truth computed here; the index the server chose,
  rebuilt in-process with the same spec and nprobe, vs exact in-process; and the REST ratio.

Request bodies are encoded before the clock starts (orjson, float32 shortest repr, which parses
back to the identical float32); every response is read and parsed with orjson inside the clock.
The benchmark process and the server share the machine, so every row also reports the server's
and this process's CPU per call and the cores used by other processes ("others": noise).

Exit status 0 whether the targets pass or fail (it is a benchmark, not a test); 1 if it could not run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import orjson
from rich.console import Console
from searchlib.data import CLK_TCK, build_ivf, load_average, machine_busy, machine_info, make_data, recall_at_k
from searchlib.load import Row, WorkerFactory, closed_loop, faiss_worker, http_worker
from searchlib.report import Compared, best, ratio, summary
from searchlib.server import NP, Server, api_topk, load, server_snapshot, wait_for_auto
from searchlib.tables import AutoRows, ExactRows, print_tables

from indexer.threads import blas_threshold

console = Console(width=180)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100_000, help="stored vectors (default 100000)")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--clusters", type=int, default=1000, help="Gaussian clusters in the data")
    p.add_argument("--spread", type=float, default=0.12, help="per-dimension noise sigma around a unit centre")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seconds", type=float, default=8.0, help="measured seconds per main row (default 8)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds the seconds are split into")
    p.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds before each round")
    p.add_argument("--concurrency", type=int, default=os.cpu_count() or 2, help="low concurrency (default: cores)")
    p.add_argument("--high-concurrency", type=int, default=16, help="high client concurrency (default 16)")
    p.add_argument("--batch", type=int, default=32, help="queries per batch call")
    p.add_argument("--query-pool", type=int, default=2048, help="distinct fresh queries cycled through")
    p.add_argument("--recall-queries", type=int, default=1000)
    p.add_argument("--upsert-batch", type=int, default=1000)
    p.add_argument("--auto-threshold", type=int, default=20_000, help="ERS_AUTO_INDEX_THRESHOLD for the server")
    p.add_argument("--target-ratio", type=float, default=0.80, help="API / in-process target (single and batch)")
    p.add_argument("--target-recall", type=float, default=0.95)
    p.add_argument("--target-speedup", type=float, default=10.0, help="auto QPS / exact QPS target")
    p.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the server, repeatable (e.g. ERS_SEARCH_CONCURRENCY=1); for experiments",
    )
    p.add_argument("--skip-auto", action="store_true", help="table 1 only")
    p.add_argument("--json", type=Path, help="also write the results here as JSON")
    p.add_argument("--keep", action="store_true", help="keep the throwaway data directory and server log")
    args = p.parse_args(argv)
    if args.query_pool < max(args.batch, args.recall_queries):
        p.error("--query-pool must be at least --batch and --recall-queries")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    lo, hi, k, nb = args.concurrency, args.high_concurrency, args.k, args.batch
    info = machine_info()
    command = ".venv/bin/python bench/search.py" + ("" if len(sys.argv) < 2 else " " + shlex.join(sys.argv[1:]))
    console.rule("[bold]ERS search benchmark")
    console.print(f"command: {command}")
    console.print(f"date:    {dt.datetime.now().astimezone().isoformat(timespec='seconds')}")
    console.print(
        f"machine: {info['cores']} cores, {info['cpu']}, {info['mem_gib']} GiB RAM, Linux {info['kernel']}; "
        f"Python {info['python']}, faiss {info['faiss']}, numpy {info['numpy']}; "
        "load average %.2f %.2f %.2f at start" % load_average()
    )
    console.print(
        f"data:    {args.n:,} x {args.dim} float32, {args.clusters} Gaussian clusters (sigma {args.spread}), "
        f"L2-normalised, seed {args.seed}; {args.query_pool} fresh queries from the same distribution; k={k}"
    )
    console.print(
        f"load:    closed loop at concurrency {lo} and {hi}; main rows {args.seconds:g} s in {args.rounds} interleaved "
        f"rounds, {args.warmup:g} s warm-up each; API client: http.client, one keep-alive connection per thread, "
        "bodies pre-encoded, responses parsed (orjson)"
    )

    t = time.perf_counter()
    data, queries = make_data(args.n, args.dim, args.clusters, args.spread, args.query_pool, args.seed)
    faiss.omp_set_num_threads(1)
    # The same FAISS settings as the server (indexer.threads: every collection here has this dim).
    threshold = blas_threshold(args.dim)
    faiss.cvar.distance_compute_blas_threshold = threshold
    flat = faiss.IndexIDMap2(faiss.IndexFlatIP(args.dim))
    flat.add_with_ids(data, np.arange(args.n, dtype=np.int64))
    singles = [queries[i : i + 1] for i in range(len(queries))]
    blocks = [queries[i : i + nb] for i in range(0, len(queries) - nb + 1, nb)]
    single_bodies = [orjson.dumps({"vector": q, "k": k}, option=NP) for q in queries]
    batch_bodies = [orjson.dumps({"queries": [{"vector": q, "k": k} for q in b]}, option=NP) for b in blocks]
    console.print(f"prepared data, in-process index and request bodies in {time.perf_counter() - t:.1f} s")

    tmp = Path(tempfile.mkdtemp(prefix="ers-bench-", dir="/tmp"))
    server_env = {"ERS_AUTO_INDEX_THRESHOLD": str(args.auto_threshold)}
    server_env.update(kv.partition("=")[::2] for kv in args.server_env)
    results: dict[str, Any] = {"command": command, "machine": info, "args": {**vars(args), "json": str(args.json)}}
    results["faiss_blas_threshold"] = threshold
    server: Server | None = None
    try:
        server = Server(tmp / "data", server_env)
        srv = server
        console.print(f"server:  ers serve on 127.0.0.1:{server.port}, env {server_env}, data in {tmp}")
        # auto first: its IVF builds in the background while the exact collection loads.
        if not args.skip_auto:
            secs = load(server, "bench_auto", "auto", data, args.upsert_batch)
            console.print(f"loaded {args.n:,} items into bench_auto (index auto) in {secs:.1f} s")
        secs = load(server, "bench_flat", "Flat", data, args.upsert_batch)
        console.print(f"loaded {args.n:,} items into bench_flat (index Flat) in {secs:.1f} s")
        load(server, "bench_tiny", "Flat", data[:100], args.upsert_batch)
        auto_info: dict[str, Any] = {}
        if not args.skip_auto:
            t = time.perf_counter()
            auto_info = wait_for_auto(server, "bench_auto", args.n)
            console.print(
                f"bench_auto serves {auto_info['active_index']} (nprobe {auto_info['nprobe']}), "
                f"waited {time.perf_counter() - t:.1f} s after the loads"
            )
        console.print(f"server idle after {server.wait_idle():.1f} s (background snapshots done)")
        b0, c0 = machine_busy(), time.monotonic()
        time.sleep(1.0)
        others = (machine_busy()[0] - b0[0]) / CLK_TCK / (time.monotonic() - c0)
        results["idle_machine_busy_cores"] = others
        if others > 0.1:
            console.print(
                f"[bold yellow]warning:[/] other processes use {others:.2f} cores before the measurements; "
                "the numbers below are disturbed (see the 'others' column)"
            )
        flat_info = server.call("GET", "/v1/collections/bench_flat")
        if flat_info["active_index"] != "Flat" or flat_info["count"] != args.n:
            raise RuntimeError(f"bench_flat is not an exact index over {args.n} items: {flat_info}")

        def interleaved(pairs: list[tuple[Row, WorkerFactory]], seconds: float) -> None:
            for r in range(args.rounds):
                for row, factory in pairs:
                    console.print(f"  round {r + 1}/{args.rounds}: {row.name}, concurrency {row.concurrency}")
                    closed_loop(row, factory, seconds / args.rounds, args.warmup, srv)

        def once(row: Row, factory: WorkerFactory, seconds: float) -> Row:
            console.print(f"  {row.name}, concurrency {row.concurrency}")
            return closed_loop(row, factory, seconds, args.warmup, srv)

        # -- table 1: exact search ------------------------------------------------------------
        port, base = server.port, "/v1/collections"

        def rest(name: str, what: str, conc: int) -> tuple[Row, WorkerFactory]:
            if what == "single":
                path, bodies, q, expect = f"{base}/{name}/search", single_bodies, 1, k
            else:
                path, bodies, q, expect = f"{base}/{name}/search/batch", batch_bodies, nb, nb
            label = "/search, single" if what == "single" else f"/search/batch {nb}"
            suffix = "" if name == "bench_flat" else f" ({name})"
            return Row(f"REST {label}{suffix}", "api", q, conc), http_worker(port, "POST", path, bodies, expect)

        def inproc(
            index: faiss.Index, label: str, what: str, conc: int, params: Any = None
        ) -> tuple[Row, WorkerFactory]:
            q, calls = (1, singles) if what == "single" else (nb, blocks)
            name = f"in-process {label}, " + ("single" if what == "single" else f"batch {nb}")
            return Row(name, "in-process", q, conc), faiss_worker(index, calls, k, params)

        t1 = {
            (side, what, conc): (rest("bench_flat", what, conc) if side == "api" else inproc(flat, "Flat", what, conc))
            for what in ("single", "batch")
            for conc in (lo, hi)
            for side in ("ip", "api")
        }
        interleaved(list(t1.values()), args.seconds)
        row = {key: pair[0] for key, pair in t1.items()}
        ref = {what: best(row["ip", what, lo], row["ip", what, hi]) for what in ("single", "batch")}
        t1_rows: list[Compared] = []
        for what in ("single", "batch"):
            t1_rows += [(row["ip", what, lo], None, None), (row["ip", what, hi], None, None)]
            t1_rows += [(row["api", what, c], ref[what], None) for c in (lo, hi)]
        results["table1"] = summary(t1_rows)
        # The target compares capacities: each side's queries/s at its best concurrency.
        api_best = {what: best(row["api", what, lo], row["api", what, hi]) for what in ("single", "batch")}
        results["capacity"] = {
            what: {
                "api": api_best[what].summary(),
                "inprocess": ref[what].summary(),
                "ratio": ratio(api_best[what], ref[what]),
            }
            for what in ("single", "batch")
        }

        short = max(1.0, args.seconds / 4)
        extra = [
            once(Row("REST GET /healthz", "http", 1, lo), http_worker(port, "GET", "/healthz", None, None), short),
            once(*rest("bench_tiny", "single", lo), short),
            once(*rest("bench_tiny", "single", hi), short),
        ]
        results["table1b"] = summary([(r, None, None) for r in extra])
        exact = ExactRows(t1_rows, ref, api_best, extra, short)

        # -- table 2: auto after the switch --------------------------------------------------
        auto: AutoRows | None = None
        if not args.skip_auto:
            t2: dict[str, Any] = {}
            rq = queries[: args.recall_queries]
            _, truth = flat.search(rq, k)  # exact: inner product of normalised vectors = cosine
            t2["recall_auto"] = recall_at_k(api_topk(server, "bench_auto", rq, k, nb), truth, k)
            t2["recall_flat"] = recall_at_k(api_topk(server, "bench_flat", rq, k, nb), truth, k)
            spec, nprobe = auto_info["active_index"], int(auto_info["nprobe"] or 1)
            params = faiss.SearchParametersIVF(nprobe=nprobe)
            # The server's own index, read from the snapshot it published after the switch; the
            # same spec rebuilt here only when no such snapshot exists.
            ivf_index = server_snapshot(tmp / "data", "bench_auto", spec, args.n)
            t2["ivf_source"] = "server snapshot" if ivf_index is not None else "rebuilt here"
            if ivf_index is None:
                t = time.perf_counter()
                ivf_index = build_ivf(spec, nprobe, data, lo)
                t2["ivf_build_seconds"] = time.perf_counter() - t
                t2["recall_ivf_inprocess"] = recall_at_k(ivf_index.search(rq, k, params=params)[1], truth, k)
            faiss.omp_set_num_threads(1)
            t2x = {
                (side, conc): (
                    rest("bench_auto", "single", conc)
                    if side == "api"
                    else inproc(ivf_index, f"{spec}/{nprobe}", "single", conc, params)
                )
                for conc in (lo, hi)
                for side in ("ip", "api")
            }
            interleaved(list(t2x.values()), args.seconds)
            row2 = {key: pair[0] for key, pair in t2x.items()}
            auto_batch = once(*rest("bench_auto", "batch", hi), short)
            ivf_ref = best(row2["ip", lo], row2["ip", hi])
            t2_rows = [
                (row2["ip", lo], ref["single"], None),
                (row2["ip", hi], ref["single"], None),
                (row2["api", lo], row["api", "single", lo], None),
                (row2["api", hi], row["api", "single", hi], None),
                (auto_batch, row["api", "batch", hi], None),
            ]
            t2.update(
                active_index=spec,
                nprobe=nprobe,
                recall_queries=len(rq),
                speedup_inprocess=ratio(ivf_ref, ref["single"]),
                speedup_api={str(c): ratio(row2["api", c], row["api", "single", c]) for c in (lo, hi)},
                speedup_api_batch=ratio(auto_batch, row["api", "batch", hi]),
                rows=summary(t2_rows),
            )
            results["table2"] = t2
            auto = AutoRows(
                figures=t2,
                compared=t2_rows,
                inprocess_best=ivf_ref,
                api_single={c: row2["api", c] for c in (lo, hi)},
                exact_api_single={c: row["api", "single", c] for c in (lo, hi)},
                api_batch=auto_batch,
                exact_api_batch=row["api", "batch", hi],
            )

        print_tables(console, args, info, threshold, exact, auto)
        return results
    except Exception:
        if server is not None:
            console.print(f"[yellow]server log tail:[/]\n{server.log_tail(2000)}")
        raise
    finally:
        if server is not None:
            server.stop()
            if server.proc.returncode not in (0, None, -signal.SIGTERM):  # uvicorn re-raises SIGTERM
                console.print(f"[yellow]server exited with {server.proc.returncode}; log tail:[/]\n{server.log_tail()}")
        if args.keep:
            console.print(f"kept {tmp} (server log: {tmp / 'server.log'})")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    old = signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with _sigterm_as_exit():
            results = run(args)
    except Exception:
        console.print("[bold red]benchmark could not run:[/]")
        console.print(traceback.format_exc())
        return 1
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
        console.print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
