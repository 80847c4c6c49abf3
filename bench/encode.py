"""Encoder throughput: in-process PyTorch eager vs ONNX Runtime, and ``POST /v1/embed`` over HTTP.

    .venv/bin/python bench/encode.py [--seconds 5] [--clients 16] [--data-dir DIR] [--markdown]

For each zoo encoder (pulled into ``<data-dir>/models``; face-resnet@1 when the zoo has it):
* in-process items/s of ``models.core.encoder.encode`` (preprocessing included: tokenize / decode + resize /
  detect + align) at batch 1, 8 and 32, PyTorch eager (``torch.set_num_threads(1)``) and ONNX Runtime
  (intra-op 1): the server's defaults (ERS_THREADS=1);
* items/s through a real ``ers serve`` subprocess: ``--clients`` closed-loop threads, each with one
  keep-alive connection, each request ``{"encoder", "inputs": [one item]}``, with dynamic batching on
  and off (ERS_BATCHING), the embedding cache off (ERS_EMBED_CACHE_SIZE=0: inputs repeat), plus the
  server's and this process's CPU per item (both share the machine's cores);
* the ratio HTTP-with-batching / in-process ONNX at batch 32 (target >= 0.70).

Inputs: text = short sentences built from emoji names (~10-15 word pieces); image = the Google-style
emoji PNGs (64x64, flattened onto white; resized to 224 by preprocessing); face = the artifact's
``example.jpg`` (one face, 400x450). Every cell is time-bounded (``--seconds``) after a warm-up.
Exit status 0 whatever the numbers (a benchmark, not a test); 1 if it could not run.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import http.client
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.core.encoder import encode
from models.core.registry import load_encoder
from models.zoo import entries, pull

console = Console(width=200)
BATCHES = (1, 8, 32)
DEFAULT_ENCODERS = ("minilm-l6@1", "minilm-l3@1", "effnet-lite0@1", "face-resnet@1")
CLK_TCK = os.sysconf("SC_CLK_TCK")
TARGET = 0.70


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def make_inputs(modality: str, models_dir: Path, key: str, cache_dir: Path) -> list[Any]:
    if modality == "face":
        return [(models_dir / key / "example.jpg").read_bytes()] * 64
    from models.data.emoji import flatten_png, load_emoji

    emojis = load_emoji(cache_dir, limit=256)
    if modality == "image":
        return [flatten_png(e.google_png) for e in emojis]
    return [f"The {e.text} emoji belongs to {e.subcategory.replace('-', ' ')} in {e.category}." for e in emojis]


def in_process(directory: Path, backend: str, inputs: list[Any], batch: int, seconds: float) -> float:
    encoder = load_encoder(directory, backend=backend, threads=1)  # type: ignore[arg-type]
    encode(encoder, inputs[:batch])  # warm-up
    done, i, started = 0, 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        chunk = [inputs[(i + j) % len(inputs)] for j in range(batch)]
        encode(encoder, chunk)
        done, i = done + batch, i + batch
    return done / elapsed


class Server:
    def __init__(self, data_dir: Path, env_extra: dict[str, str]) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        env = {k: v for k, v in os.environ.items() if not k.startswith("ERS_")} | env_extra
        self.log = open(data_dir.parent / "bench-encode-server.log", "ab")  # noqa: SIM115 - closed in stop()
        cmd = [str(Path(sys.executable).parent / "ers"), "serve", "--port", str(self.port), "--data-dir", str(data_dir)]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + 180
        while self.request("GET", "/readyz")[0] != 200:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ers serve did not start; see {self.log.name}")
            time.sleep(0.2)

    def request(self, method: str, path: str) -> tuple[int, bytes]:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            conn.request(method, path)
            response = conn.getresponse()
            return response.status, response.read()
        except OSError:
            return 0, b""

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def over_http(server: Server, key: str, inputs: list[Any], clients: int, seconds: float) -> dict[str, float]:
    """Closed loop: ``clients`` threads, each POSTing one item per request on its own connection."""
    encoded = [x if isinstance(x, str) else base64.b64encode(x).decode() for x in inputs]
    bodies = [json.dumps({"encoder": key, "inputs": [x]}).encode() for x in encoded]
    counts, errors, stop = [0] * clients, [0] * clients, threading.Event()

    def worker(t: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        i = t
        while not stop.is_set():
            conn.request("POST", "/v1/embed", bodies[i % len(bodies)], {"content-type": "application/json"})
            response = conn.getresponse()
            response.read()
            if response.status == 200:
                counts[t] += 1
            else:
                errors[t] += 1
            i += clients
        conn.close()

    threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(min(2.0, seconds / 2))  # warm-up: connections, thread pools, first batches
    c0, s0, p0, t0 = sum(counts), proc_cpu(server.proc.pid), time.process_time(), time.perf_counter()
    time.sleep(seconds)
    c1, s1, p1, t1 = sum(counts), proc_cpu(server.proc.pid), time.process_time(), time.perf_counter()
    stop.set()
    for thread in threads:
        thread.join(timeout=120)
    n = max(c1 - c0, 1)
    return {"items_s": (c1 - c0) / (t1 - t0), "server_ms": 1000 * (s1 - s0) / n, "client_ms": 1000 * (p1 - p0) / n,
            "latency_ms": 1000 * clients * (t1 - t0) / n, "errors": float(sum(errors))}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per cell")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--encoders", default=",".join(DEFAULT_ENCODERS), help="those not in the zoo are skipped")
    parser.add_argument("--data-dir", type=Path, default=None, help="keep pulled models here (default: a temp dir)")
    parser.add_argument("--server-env", action="append", default=[], help="extra KEY=VALUE for the server")
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    args = parser.parse_args()

    import onnxruntime
    import torch

    torch.set_num_threads(1)
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="ers-bench-encode-")) / "data"
    models_dir, cache_dir = data_dir / "models", data_dir / "cache"
    zoo = entries()
    keys = [k for k in args.encoders.split(",") if k in zoo]
    skipped = [k for k in args.encoders.split(",") if k not in zoo]
    console.print(f"{dt.date.today()} | {cpu_model()} | {os.cpu_count()} cores | torch {torch.__version__} | "
                  f"onnxruntime {onnxruntime.__version__} | {args.seconds:g} s per cell | data {data_dir}")  # fmt: skip
    if skipped:
        console.print(f"not in the zoo, skipped: {', '.join(skipped)}")
    rows: dict[str, dict[str, float]] = {}
    inputs: dict[str, list[Any]] = {}
    for key in keys:
        with console.status(f"pulling {key}..."):
            spec = pull(key, models_dir, cache_dir)
        inputs[key] = make_inputs(spec.modality, models_dir, key, cache_dir)
        rows[key] = {}
        for backend in ("torch", "onnx"):
            for batch in BATCHES:
                with console.status(f"{key} {backend} batch {batch}..."):
                    rows[key][f"{backend}{batch}"] = in_process(
                        models_dir / key, backend, inputs[key], batch, args.seconds
                    )
        console.print(f"{key}: " + "  ".join(f"{c} {v:.1f}/s" for c, v in rows[key].items()))
    if not args.skip_http:
        extra = dict(kv.split("=", 1) for kv in args.server_env)
        for batching in ("false", "true"):
            env = {"ERS_BATCHING": batching, "ERS_EMBED_CACHE_SIZE": "0", **extra}
            server = Server(data_dir, env)
            try:
                for key in keys:
                    with console.status(f"{key} over HTTP, batching {batching}..."):
                        result = over_http(server, key, inputs[key], args.clients, args.seconds)
                    for name, value in result.items():
                        rows[key][f"http_{batching}_{name}"] = value
            finally:
                server.stop()
    print_table(rows, args, skip_http=args.skip_http)
    return 0


def print_table(rows: dict[str, dict[str, float]], args: argparse.Namespace, skip_http: bool) -> None:
    head = [f"torch b{b}" for b in BATCHES] + [f"ONNX b{b}" for b in BATCHES]
    if not skip_http:
        head += ["HTTP no batching", "HTTP batching", "ratio HTTP/ONNX b32"]
        head += ["server CPU ms/item (batching)", "client CPU ms/item (batching)"]
    table = Table(
        "encoder (items/s)", *head, title=f"encoder throughput, 1 thread per forward, {args.clients} HTTP clients"
    )
    lines = []
    for key, r in rows.items():
        cells = [f"{r[f'{b}{n}']:.1f}" for b in ("torch", "onnx") for n in BATCHES]
        if not skip_http:
            ratio = r["http_true_items_s"] / r["onnx32"]
            mark = "✓" if ratio >= TARGET else "✗"
            cells += [f"{r['http_false_items_s']:.1f}", f"{r['http_true_items_s']:.1f}", f"{ratio:.2f} {mark}",
                      f"{r['http_true_server_ms']:.2f}", f"{r['http_true_client_ms']:.2f}"]  # fmt: skip
            errors = r["http_true_errors"] + r["http_false_errors"]
            if errors:
                cells[-1] += f" ({errors:.0f} errors)"
        table.add_row(key, *cells)
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    console.print(table)
    if args.markdown:
        print("| encoder (items/s) | " + " | ".join(head) + " |")
        print("|---" * (len(head) + 1) + "|")
        print("\n".join(lines))


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(1)
