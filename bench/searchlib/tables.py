"""The tables a run of the search benchmark prints (``bench/search.py``): table 1 (exact search,
in-process vs REST, and its capacity targets), 1b (the HTTP ceiling), 2 and 2b (``auto`` after its
switch to an approximate index)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from rich.console import Console

from searchlib.load import Row
from searchlib.report import Compared, capacity_lines, fmt, perf_table, targets_table


@dataclass
class ExactRows:
    """Table 1 and 1b: the measured rows and the in-process references."""

    compared: list[Compared]
    ref: dict[str, Row]  # "single" / "batch": the in-process row at its best concurrency
    api_best: dict[str, Row]  # the REST row at its best concurrency
    ceiling: list[Row]  # table 1b
    ceiling_seconds: float


@dataclass
class AutoRows:
    """Table 2 and 2b: ``auto``'s figures (the JSON ``table2``) and the rows they compare."""

    figures: dict[str, Any]
    compared: list[Compared]
    inprocess_best: Row  # auto's index in-process, at its best concurrency
    api_single: dict[int, Row]  # REST /search on bench_auto, per concurrency
    exact_api_single: dict[int, Row]  # the same on bench_flat
    api_batch: Row  # REST /search/batch on bench_auto, high concurrency
    exact_api_batch: Row  # the same on bench_flat


def print_tables(
    console: Console,
    args: argparse.Namespace,
    info: dict[str, Any],
    threshold: int,
    exact: ExactRows,
    auto: AutoRows | None,
) -> None:
    k, nb, lo = args.k, args.batch, args.concurrency
    t1_rows, ref, api_best = exact.compared, exact.ref, exact.api_best
    extra, short = exact.ceiling, exact.ceiling_seconds
    console.rule("[bold]results")
    console.print(
        perf_table(
            f"Table 1 - exact search (Flat, cosine), {args.n:,} x {args.dim}, k={k}",
            t1_rows,
            f"in-process: IndexIDMap2(IndexFlatIP), conc threads, faiss.omp_set_num_threads(1) in each, BLAS "
            f"threshold {threshold} (the server's). REST: conc http.client threads, keep-alive.\n"
            "÷ ref = queries/s of the REST row ÷ the in-process row of its kind at its best concurrency "
            f"({ref['single'].concurrency} single, {ref['batch'].concurrency} batch); per round: the range over "
            "the interleaved rounds.\nsrv CPU/call: server process CPU per call; bench CPU/call: this process "
            f"(in-process rows: the FAISS work; REST rows: the client); busy: all {info['cores']} cores, any "
            "process; others: cores used by other processes (noise, should be ~0).",
        )
    )
    cap_lines = capacity_lines(api_best, ref, args.target_ratio, nb)
    console.print(
        targets_table(
            "Table 1 targets - capacity: the most queries/s each side serves",
            cap_lines,
            f"At concurrency {lo} (= cores) a closed-loop REST client waits out every round trip and the server "
            "adds ~0.6 ms of CPU per request on the cores that also scan, so those rows show latency-bound "
            "throughput, not capacity.",
        )
    )
    console.print(
        perf_table(
            f"Table 1b - the HTTP ceiling (same server, {short:g} s each)",
            [(r, None, None) for r in extra],
            "/healthz: HTTP + uvicorn + FastAPI/middleware only. 100-item collection: the whole /search "
            "path (JSON, validation, coalescing, response) with FAISS cost ~0.",
        )
    )
    if auto is not None:
        _print_auto(console, args, ref, auto)


def _print_auto(console: Console, args: argparse.Namespace, ref: dict[str, Row], auto: AutoRows) -> None:
    k, nb, lo, hi = args.k, args.batch, args.concurrency, args.high_concurrency
    t2, t2_rows, ivf_ref, auto_batch = auto.figures, auto.compared, auto.inprocess_best, auto.api_batch
    spec, nprobe, recall_queries = t2["active_index"], t2["nprobe"], t2["recall_queries"]
    lines: list[tuple[str, str, str, bool | None]] = [
        (
            f"recall@{k} through REST, bench_auto",
            f"{t2['recall_auto']:.4f}",
            f">= {args.target_recall:.2f}",
            t2["recall_auto"] >= args.target_recall,
        ),
        (f"recall@{k} through REST, bench_flat (sanity: exact)", f"{t2['recall_flat']:.4f}", "1.0", None),
        (
            f"QPS of auto's index ({t2['ivf_source']}) in-process ÷ Flat (each at its best conc.)",
            f"{t2['speedup_inprocess']:.1f}x ({fmt(ivf_ref.qps)} / {fmt(ref['single'].qps)})",
            f">= {args.target_speedup:g}x",
            t2["speedup_inprocess"] >= args.target_speedup,
        ),
    ]
    if "recall_ivf_inprocess" in t2:
        recall_ip = f"{t2['recall_ivf_inprocess']:.4f}"
        lines.insert(2, (f"recall@{k}, in-process {spec}, nprobe {nprobe}", recall_ip, "", None))
    for c in (lo, hi):
        api_auto, api_flat = auto.api_single[c], auto.exact_api_single[c]
        lines.append(
            (
                f"QPS REST /search auto ÷ exact, concurrency {c} (information: HTTP-capped)",
                f"{t2['speedup_api'][str(c)]:.1f}x ({fmt(api_auto.qps)} / {fmt(api_flat.qps)})",
                "",
                None,
            )
        )
    lines.append(
        (
            f"QPS REST /search/batch {nb} auto ÷ exact, concurrency {hi} (information)",
            f"{t2['speedup_api_batch']:.1f}x ({fmt(auto_batch.qps)} / {fmt(auto.exact_api_batch.qps)})",
            "",
            None,
        )
    )
    console.print(
        targets_table(
            f"Table 2 - auto after the switch ({spec}, nprobe {nprobe}), "
            f"ERS_AUTO_INDEX_THRESHOLD={args.auto_threshold}",
            lines,
            f"recall@{k}: {recall_queries} fresh queries vs exact top-{k} computed here (ids 1:1), fetched through "
            "/search/batch. auto's index: the FAISS file the server published after the switch, searched "
            "here with the server's nprobe and one thread per caller. REST rows are capped by HTTP (table 1b): "
            "a request costs ~0.5 ms of server CPU whatever the index, so no index can be 10x through REST "
            "once exact search is ~1 ms.",
        )
    )
    console.print(
        perf_table(
            "Table 2b - the rows behind table 2 (÷ ref: the exact row of the same kind and side)",
            t2_rows,
        )
    )
