"""`make demo`: start ERS on 127.0.0.1 with the embedded store and show it working end to end.

Until the encoder issue lands, the demo indexes vectors it generates (clustered, like embeddings
of products in categories) with payloads, then shows exact and filtered search, batch search,
the switch of the ``auto`` index to IVF, and a restart that keeps every item.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from service.client import ClientError, ERSClient

console = Console()
CATEGORIES = ["shoes", "shirts", "bags", "watches", "hats"]


def start_server(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    ers = Path(sys.executable).parent / "ers"
    cmd = [str(ers), "serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir)]
    log = open(data_dir.parent / f"{data_dir.name}.server.log", "ab")  # noqa: SIM115 - lives with the server
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    client = ERSClient(f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}; see {log.name}")
        try:
            client.request("GET", "/readyz")
            return proc
        except ClientError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not become ready in 60 s")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


def hits_table(title: str, hits: list[dict[str, object]]) -> Table:
    table = Table("rank", "id", "score", "payload", title=title)
    for rank, hit in enumerate(hits, 1):
        table.add_row(str(rank), str(hit["id"]), f"{hit['score']:.4f}", str(hit["payload"]))
    return table


def run(data_dir: Path, port: int, n: int, wait: bool) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    console.rule("[bold]ERS demo")
    console.print(f"starting [bold]ers serve[/bold] on 127.0.0.1:{port}, data in {data_dir} (SQLite, no Redis)")
    proc = start_server(data_dir, port)
    api = ERSClient(f"http://127.0.0.1:{port}")
    try:
        with contextlib.suppress(ClientError):
            api.request("DELETE", "/v1/collections/demo-products")
        api.request("POST", "/v1/collections", json={"name": "demo-products", "dim": 64, "metric": "cosine"})
        rng = np.random.default_rng(7)
        centers = rng.standard_normal((len(CATEGORIES) * 20, 64)).astype(np.float32)
        labels = rng.integers(0, len(centers), n)
        vectors = centers[labels] + 0.35 * rng.standard_normal((n, 64)).astype(np.float32)
        columns = [TextColumn("indexing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("upsert", total=n)
            for start in range(0, n, 1000):
                items = [
                    {
                        "id": f"sku-{i}",
                        "vector": vectors[i].tolist(),
                        "payload": {"category": CATEGORIES[labels[i] % len(CATEGORIES)], "price": int(10 + i % 190)},
                    }
                    for i in range(start, min(n, start + 1000))
                ]
                api.request("PUT", "/v1/collections/demo-products/items", json={"items": items})
                progress.advance(task, len(items))
        info = api.request("GET", "/v1/collections/demo-products")
        while info["building"] or (info["active_index"] == "Flat" and info["count"] >= 20_000):
            time.sleep(0.5)
            info = api.request("GET", "/v1/collections/demo-products")
        console.print(
            f"{info['count']} items, index [bold]{info['index']}[/bold] now serving "
            f"[bold]{info['active_index']}[/bold] (nprobe {info['nprobe']}, tuned for recall@10 ≥ 0.97)"
        )
        query = vectors[42].tolist()
        res = api.request("POST", "/v1/collections/demo-products/search", json={"vector": query, "k": 5})
        console.print(hits_table(f"nearest to sku-42 ({res['took_ms']} ms)", res["results"]))
        flt = {"category": "bags", "price": {"lt": 50}}
        res = api.request("POST", "/v1/collections/demo-products/search", json={"vector": query, "k": 5, "filter": flt})
        console.print(hits_table(f"filter {flt} ({res['took_ms']} ms)", res["results"]))
        batch = {"queries": [{"vector": vectors[i].tolist(), "k": 1} for i in range(32)]}
        res = api.request("POST", "/v1/collections/demo-products/search/batch", json=batch)
        found = sum(r[0]["id"] == f"sku-{i}" for i, r in enumerate(res["results"]))
        console.print(f"batch of 32 queries in one request: {found}/32 find themselves first ({res['took_ms']} ms)")
        console.print("restarting the server: the log and snapshot bring every item back")
        stop_server(proc)
        proc = start_server(data_dir, port)
        info = api.request("GET", "/v1/collections/demo-products")
        console.print(f"after restart: {info['count']} items, {info['indexed']} indexed")
        console.rule()
        console.print(f"API docs: http://127.0.0.1:{port}/docs   metrics: http://127.0.0.1:{port}/metrics")
        console.print(
            f"try: curl -s -X POST http://127.0.0.1:{port}/v1/collections/demo-products/search "
            '-H "content-type: application/json" -d \'{"id": "sku-1", "k": 3}\''
        )
        if wait:
            console.print("[bold]server running[/bold]; Ctrl-C to stop")
            proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        api.close()
        if proc.poll() is None:
            stop_server(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("ERS_DATA_DIR", ".ers-data")))
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--exit", action="store_true", help="stop the server when the demo is done")
    args = parser.parse_args()
    run(args.data_dir.resolve(), args.port, args.items, wait=not args.exit)


if __name__ == "__main__":
    main()
