"""Flat vs HNSW vs IVF-SQ8 with exact re-ranking, each built as ``auto`` builds it.

Data: synthetic clustered unit vectors (not real embeddings). ``--clusters`` centres grouped around
50 topics; each point is its centre plus Gaussian noise in a 24-d subspace of its own cluster (the low
intrinsic dimension of real embeddings) plus a little isotropic noise, L2-normalised, cosine metric.
The queries are fresh draws from the same mixture (never stored), ground truth an exact scan.

Per index: build time (train, add and tune to ``--target``), resident memory per vector (the
process's anonymous RSS with the index built minus after freeing it, the build's temporaries freed
first; the exact file of the re-ranked index is page cache, reported apart as disk bytes), the FAISS
serialised size per vector, recall@10 of the fresh queries, and single-thread QPS (one query per
call). Flat is exact, so its recall and QPS use only the first ``--flat-queries`` queries: at 1M
vectors each single query scans 1.5 GB.

    nice -n 19 .venv/bin/python bench/index_choice.py --n 1000000 > /tmp/runs/index_choice.log 2>&1
    .venv/bin/python bench/index_choice.py --n 1000000 --indexes IVF-SQ8,Flat --json /tmp/runs/sq8.json

Run it in a fresh process (``bench/peers.py`` starts it as one): the RSS figures are deltas, but a
heap already fragmented by other arrays returns memory to the OS less exactly.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from indexer.builder import build_index
from indexer.index_choice import HNSW_M, RERANK_SQ8, IndexChoice, choose_index, hnsw_bytes, ivf_nlist
from indexer.vector_index import VectorIndex

INDEXES = ("IVF-SQ8", "Flat", "HNSW")
ALIASES = {"ivf": "IVF-SQ8", "ivf-sq8": "IVF-SQ8", "flat": "Flat", "hnsw": "HNSW"}  # old --only names too
K = 10


def rss_anon() -> int:
    """Anonymous resident bytes after returning freed heap to the OS (glibc keeps freed chunks)."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


def mixture(n: int, dim: int, clusters: int, seed: int, chunk: int = 20_000, sub: int = 24) -> np.ndarray:
    fixed = np.random.default_rng(0)
    topics = fixed.standard_normal((50, dim)).astype(np.float32)
    centres = topics[fixed.integers(0, 50, clusters)] + 0.7 * fixed.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    bases = fixed.standard_normal((clusters, sub, dim)).astype(np.float32) / np.sqrt(dim)
    spread = fixed.uniform(0.3, 0.6, clusters).astype(np.float32)
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        which = rng.integers(0, clusters, m)
        coords = rng.standard_normal((m, sub), dtype=np.float32) * spread[which, None]
        block = centres[which] + rng.standard_normal((m, dim), dtype=np.float32) * (0.05 / np.sqrt(dim))
        for cluster in np.unique(which):  # one small matmul per cluster: no (m, sub, dim) temporary
            rows = np.flatnonzero(which == cluster)
            block[rows] += coords[rows] @ bases[cluster]
        out[start : start + m] = block
    faiss.normalize_L2(out)
    return out


def qps(index: VectorIndex, queries: np.ndarray, seconds: float) -> tuple[float, int]:
    """(single-thread queries per second, queries run): one query per call until ``seconds`` pass."""
    faiss.omp_set_num_threads(1)
    done, start = 0, time.perf_counter()
    for q in queries:
        index.search(q[None, :], K)
        done += 1
        if time.perf_counter() - start > seconds:
            break
    faiss.omp_set_num_threads(0)
    return done / (time.perf_counter() - start), done


def parse_indexes(text: str) -> list[str]:
    """Canonical names (``IVF-SQ8``, ``Flat``, ``HNSW``; any case, or the old ivf/flat/hnsw) in order."""
    names = []
    for raw in (s.strip() for s in text.split(",") if s.strip()):
        name = ALIASES.get(raw.lower())
        if name is None:
            raise ValueError(f"unknown index '{raw}' (choose from {', '.join(INDEXES)})")
        if name not in names:
            names.append(name)
    if not names:
        raise ValueError("no index selected")
    return names


def choices_for(n: int, dim: int) -> dict[str, IndexChoice]:
    # The budget that forces SQ8: just under what HNSW would need; auto_threshold 0 skips Flat.
    ivf = choose_index(n, dim, hnsw_bytes(n, dim) - 1, auto_threshold=0)
    if ivf.spec != f"IVF{ivf_nlist(n)},SQ8" or ivf.rerank != RERANK_SQ8:
        raise RuntimeError(f"auto's rule no longer picks IVF-SQ8 + re-rank under HNSW's budget: {ivf}")
    return {"Flat": IndexChoice("Flat", "flat"), "HNSW": IndexChoice(f"HNSW{HNSW_M},Flat", "hnsw"), "IVF-SQ8": ivf}


def measure_one(name: str, choice: IndexChoice, data: np.ndarray, queries: np.ndarray, truth: np.ndarray,
                target: float, qps_seconds: float, flat_queries: int) -> dict[str, Any]:  # fmt: skip
    n, dim = data.shape
    if name == "Flat":  # exact: a few queries confirm recall 1 and time the scan
        queries, truth = queries[:flat_queries], truth[:flat_queries]
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        start = time.perf_counter()
        index = build_index(dim, "cosine", choice, np.arange(n, dtype=np.int64), data, target, directory=Path(tmp))
        build_s = time.perf_counter() - start
        with_index = rss_anon()
        serialised = len(index.serialize())
        disk = index.exact.vector_path.stat().st_size if index.exact is not None else 0
        _, found = index.search(queries, K)
        recall = float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth, strict=True)]))
        speed, timed = qps(index, queries, qps_seconds)
        knob = f"ef={index.ef_search}" if index.ef_search else f"nprobe={index.nprobe}" if index.nprobe else "-"
        tuned = index.measured_recall
        del index
        resident = with_index - rss_anon()  # what freeing the index gives back (libraries stay loaded)
    return {
        "name": name, "spec": choice.spec, "knob": knob, "rerank": choice.rerank, "build_s": build_s,
        "rss_bytes_per_vector": resident / n, "serialised_bytes_per_vector": serialised / n,
        "exact_file_bytes_per_vector": disk / n, "tuned_recall": tuned, "recall_fresh": recall,
        "recall_queries": len(queries), "qps_1_thread": speed, "qps_queries": timed,
    }  # fmt: skip


def _log(message: str) -> None:
    print(message, flush=True)


def measure_sq8_memory(n: int, dim: int, target: float, indexes: Sequence[str] = ("IVF-SQ8", "Flat"),
                       clusters: int = 1000, queries: int = 1000, qps_seconds: float = 15.0,
                       flat_queries: int = 20, log: Callable[[str], None] = _log) -> dict[str, Any]:  # fmt: skip
    """Build each of ``indexes`` over ``n`` x ``dim`` mixture vectors as ``auto`` would and measure it.

    Returns the settings, one row per index (see ``measure_one``) and ``sq8_over_flat`` (RSS and
    serialised ratios, None unless both were built)."""
    if n < 1000 or dim < 8 or queries < 1 or flat_queries < 1:
        raise ValueError("need n >= 1000, dim >= 8, queries >= 1 and flat_queries >= 1")
    choices = choices_for(n, dim)
    t0 = time.perf_counter()
    data = mixture(n, dim, clusters, seed=2)
    query_vectors = mixture(queries, dim, clusters, seed=3)
    _, truth = faiss.knn(query_vectors, data, K, metric=faiss.METRIC_INNER_PRODUCT)
    log(f"data {n} x {dim}, {clusters} clusters; truth in {time.perf_counter() - t0:.0f} s")
    rows = []
    for name in indexes:
        row = measure_one(name, choices[name], data, query_vectors, truth, target, qps_seconds, flat_queries)
        log(f"{name}: " + ", ".join(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
                                    for key, value in row.items() if key != "name"))  # fmt: skip
        rows.append(row)
    by_name = {r["name"]: r for r in rows}
    ratios = None
    if "Flat" in by_name and "IVF-SQ8" in by_name:
        flat, sq8 = by_name["Flat"], by_name["IVF-SQ8"]
        ratios = {
            "rss": sq8["rss_bytes_per_vector"] / flat["rss_bytes_per_vector"],
            "serialised": sq8["serialised_bytes_per_vector"] / flat["serialised_bytes_per_vector"],
        }
    return {"n": n, "dim": dim, "metric": "cosine", "k": K, "target": target, "clusters": clusters,
            "queries": queries, "flat_queries": flat_queries, "qps_seconds": qps_seconds,
            "faiss": faiss.__version__, "rows": rows, "sq8_over_flat": ratios}  # fmt: skip


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"{result['n']} x {result['dim']}, cosine, target recall@{K} {result['target']}, {result['queries']} fresh "
        f"queries (Flat: the first {result['flat_queries']})",
        "",
        "| index | spec | knob | build s | RSS B/vec | serialised B/vec | exact file B/vec (disk) "
        "| tuned recall (held-out) | recall@10 (fresh) | QPS 1 thread |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        tuned = f"{r['tuned_recall']:.3f}" if r["tuned_recall"] is not None else "-"
        lines.append(f"| {r['name']} | {r['spec']} | {r['knob']} | {r['build_s']:.0f} "
                     f"| {r['rss_bytes_per_vector']:.0f} | {r['serialised_bytes_per_vector']:.0f} "
                     f"| {r['exact_file_bytes_per_vector']:.0f} | {tuned} | {r['recall_fresh']:.3f} "
                     f"| {r['qps_1_thread']:.0f} |")  # fmt: skip
    ratios = result["sq8_over_flat"]
    if ratios:
        lines += ["", f"IVF-SQ8+re-rank / Flat: RSS {ratios['rss']:.1%}, serialised {ratios['serialised']:.1%}"]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--flat-queries", type=int, default=20, help="queries for Flat's recall and QPS (it is exact)")
    ap.add_argument("--target", type=float, default=0.95)
    ap.add_argument("--qps-seconds", type=float, default=15.0)
    ap.add_argument("--indexes", "--only", dest="indexes", default="IVF-SQ8,Flat,HNSW",
                    help="comma-separated subset of " + ", ".join(INDEXES) + " (built in this order)")  # fmt: skip
    ap.add_argument("--json", type=Path, help="also write the settings and rows here")
    args = ap.parse_args()
    try:
        indexes = parse_indexes(args.indexes)
    except ValueError as e:
        ap.error(str(e))
    if args.n < 1000 or args.dim < 8 or args.queries < 1 or args.flat_queries < 1:
        ap.error("need --n >= 1000, --dim >= 8, --queries >= 1 and --flat-queries >= 1")
    result = measure_sq8_memory(args.n, args.dim, args.target, indexes, args.clusters, args.queries,
                                args.qps_seconds, args.flat_queries)  # fmt: skip
    print("\n" + markdown(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
