"""Flat vs HNSW vs IVF-SQ8 with exact re-ranking, each built as ``auto`` builds it.

Data: synthetic clustered unit vectors (not real embeddings). ``--clusters`` centres grouped around
50 topics; each point is its centre plus Gaussian noise in a 24-d subspace of its own cluster (the low
intrinsic dimension of real embeddings) plus a little isotropic noise, L2-normalised, cosine metric.
The queries are fresh draws from the same mixture (never stored), ground truth an exact scan.

Per index: build time (train, add and tune to ``--target``), resident memory per vector (the
process's anonymous RSS before and after the build, with the build's temporaries freed; the exact
file of the re-ranked index is page cache, reported apart as disk bytes), the FAISS serialised size
per vector, recall@10 of the fresh queries, and single-thread QPS (one query per call).

    nice -n 19 .venv/bin/python bench/index_choice.py --n 1000000 > /tmp/runs/index_choice.log 2>&1
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from indexer.builder import build_index
from indexer.index_choice import HNSW_M, RERANK_SQ8, IndexChoice, choose_index, hnsw_bytes, ivf_nlist
from indexer.vector_index import VectorIndex


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


def qps(index: VectorIndex, queries: np.ndarray, seconds: float) -> float:
    faiss.omp_set_num_threads(1)
    done, start = 0, time.perf_counter()
    for q in queries:
        index.search(q[None, :], 10)
        done += 1
        if time.perf_counter() - start > seconds:
            break
    faiss.omp_set_num_threads(0)
    return done / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--target", type=float, default=0.95)
    ap.add_argument("--qps-seconds", type=float, default=15.0)
    ap.add_argument("--only", default="ivf,flat,hnsw", help="comma-separated subset of flat,hnsw,ivf")
    args = ap.parse_args()
    n, dim = args.n, args.dim
    t0 = time.perf_counter()
    data = mixture(n, dim, args.clusters, seed=2)
    queries = mixture(args.queries, dim, args.clusters, seed=3)
    _, truth = faiss.knn(queries, data, 10, metric=faiss.METRIC_INNER_PRODUCT)
    print(f"data {n} x {dim}, {args.clusters} clusters; truth in {time.perf_counter() - t0:.0f} s", flush=True)
    ids = np.arange(n, dtype=np.int64)
    # The budget that forces SQ8: just under what HNSW would need.
    sq8_budget = hnsw_bytes(n, dim) - 1
    choices = {
        "flat": IndexChoice("Flat", "flat"),
        "hnsw": IndexChoice(f"HNSW{HNSW_M},Flat", "hnsw"),
        "ivf": choose_index(n, dim, sq8_budget, auto_threshold=0),
    }
    assert choices["ivf"].spec == f"IVF{ivf_nlist(n)},SQ8" and choices["ivf"].rerank == RERANK_SQ8, choices["ivf"]
    rows = []
    for name in args.only.split(","):
        choice = choices[name]
        with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
            start = time.perf_counter()
            index = build_index(dim, "cosine", choice, ids, data, args.target, directory=Path(tmp))
            build_s = time.perf_counter() - start
            with_index = rss_anon()
            serialised = len(index.serialize())
            disk = index.exact.vector_path.stat().st_size if index.exact is not None else 0
            _, found = index.search(queries, 10)
            recall = float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)]))
            speed = qps(index, queries, args.qps_seconds)
            knob = f"ef={index.ef_search}" if index.ef_search else f"nprobe={index.nprobe}" if index.nprobe else "-"
            row = (name, choice.spec, knob, build_s, 0.0, serialised / n, disk / n, index.measured_recall,
                   recall, speed)  # fmt: skip
            rows.append(row)
            del index
            resident = with_index - rss_anon()  # what freeing the index gives back (libraries stay loaded)
            row = (*row[:4], resident / n, *row[5:])
            print(row, flush=True)
    print(f"\n{n} x {dim}, cosine, target recall@10 {args.target}, {args.queries} fresh queries\n")
    print("| index | spec | knob | build s | RSS B/vec | serialised B/vec | exact file B/vec (disk) "
          "| tuned recall (held-out) | recall@10 (fresh) | QPS 1 thread |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, spec, knob, build_s, res, ser, disk, tuned, recall, speed in rows:
        tuned_s = f"{tuned:.3f}" if tuned is not None else "-"
        print(f"| {name} | {spec} | {knob} | {build_s:.0f} | {res:.0f} | {ser:.0f} | {disk:.0f} | {tuned_s} "
              f"| {recall:.3f} | {speed:.0f} |")  # fmt: skip
    flat = next((r for r in rows if r[0] == "flat"), None)
    ivf = next((r for r in rows if r[0] == "ivf"), None)
    if flat and ivf:
        print(f"\nIVF-SQ8+re-rank / Flat: RSS {ivf[4] / flat[4]:.1%}, serialised {ivf[5] / flat[5]:.1%}")


if __name__ == "__main__":
    main()
