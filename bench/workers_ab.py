"""A/B of ``ers serve --workers`` values on one real data set, one data directory served in turn.

    .venv/bin/python bench/workers_ab.py --set fashion --sequence 1,2,1,2 --modes single,batch
    .venv/bin/python bench/workers_ab.py --set minilm --sequence 2,2 --env 2:ERS_SEARCH_CONCURRENCY=2

The set (``bench/peerslib/data.py``: Fashion-MNIST 60k x 784 or 100k MiniLM embeddings) is loaded
once through REST by ``--workers 1`` into ``--work``/``<set>`` (kept: later runs reuse it); then each
``--sequence`` entry starts ``ers serve --workers W`` on that directory and measures with wrk: single
queries at client concurrency 8 and batches of 32 at concurrency 2, as ``bench/peers.py`` does.
Every server therefore runs the same index at the same efSearch/nprobe; alternating the order shows
the machine's drift. ``--env W:KEY=VALUE`` sets server environment for the runs with W workers.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peerslib.data import DEFAULT_DATA_DIR, Dataset, load_dataset
from peerslib.ers import COLLECTION, ErsOptions, _vector_field, _wait_final, batch_doc, encode, search_doc, start_ers
from searchlib.load import Row
from searchlib.wrk import wrk_loop

MODES = {"single": ("/search", 1, 8), "batch": ("/search/batch", 32, 2)}  # path, queries per call, concurrency


def build(work: Path, ds: Dataset, options: ErsOptions) -> None:
    server = start_ers(work, 1, options)
    try:
        doc = {"name": COLLECTION, "dim": ds.dim, "metric": ds.metric, "index": "auto"}
        server.request("POST", "/v1/collections", encode("json", doc)[0])
        base = ds.base
        for lo in range(0, len(base), 1000):
            items = [{"id": str(i), **_vector_field("msgpack", base[i])} for i in range(lo, min(len(base), lo + 1000))]
            body, ctype = encode("msgpack", {"items": items})
            server.request("PUT", f"/v1/collections/{COLLECTION}/items", body, ctype)
        _wait_final(server, len(base))
    finally:
        server.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", choices=("fashion", "minilm"), default="fashion")
    p.add_argument("--sequence", default="1,2,1,2", help="--workers values, served in this order")
    p.add_argument("--modes", default="single", help="comma-separated: single, batch")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--env", action="append", default=[], metavar="W:KEY=VALUE")
    p.add_argument("--work", type=Path, default=Path("/tmp/ers-workers-ab"))
    args = p.parse_args()
    modes = args.modes.split(",")
    if not set(modes) <= set(MODES):
        p.error(f"--modes: {modes} not all in {sorted(MODES)}")
    envs: dict[int, dict[str, str]] = {}
    for item in args.env:
        w, _, kv = item.partition(":")
        key, _, value = kv.partition("=")
        if not w.isdigit() or not key:
            p.error(f"--env {item!r}: want W:KEY=VALUE")
        envs.setdefault(int(w), {})[key] = value
    ds = load_dataset(args.set, DEFAULT_DATA_DIR, None, 1000, 10)
    options = ErsOptions(k=10, target=0.95, seconds=args.seconds, warmup=1.0, concurrencies=[8], batch=32,
                         batch_concurrency=2, upsert_batch=1000, wire="msgpack", load="wrk")  # fmt: skip
    work = args.work / args.set
    if not (work / "data").exists():
        print(f"loading {args.set} into {work} (once)", flush=True)
        build(work, ds, options)
    bodies = {
        "single": [encode("msgpack", search_doc("msgpack", q, 10))[0] for q in ds.queries],
        "batch": [encode("msgpack", batch_doc("msgpack", ds.queries[i : i + 32], 10))[0]
                  for i in range(0, len(ds.queries) - 31, 32)],
    }  # fmt: skip
    for workers in [int(w) for w in args.sequence.split(",")]:
        server = start_ers(work, workers, dataclasses.replace(options, server_env=envs.get(workers, {})))
        try:
            info, _ = _wait_final(server, len(ds.base))
            server.wait_idle(max_seconds=60)
            for mode in modes:
                path, per_call, concurrency = MODES[mode]
                row = Row(mode, "http", per_call, concurrency)
                url = f"/v1/collections/{COLLECTION}{path}"
                row = wrk_loop(row, server.port, url, bodies[mode], "application/msgpack", args.seconds, 1.0, server)
                print(f"--workers {workers} {envs.get(workers, {})} {mode}: {row.qps:,.0f} QPS, "
                      f"p50 {row.pct(50):.2f} ms, p99 {row.pct(99):.2f} ms, server CPU {row.server_cpu_s:.1f} s "
                      f"({info['active_index']}, ef_search {info.get('ef_search')}, nprobe {info.get('nprobe')})",
                      flush=True)  # fmt: skip
        finally:
            server.stop()
        time.sleep(1.0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
