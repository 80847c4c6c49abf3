"""Encoder throughput: in-process PyTorch eager vs ONNX Runtime, and ``POST /v1/embed`` over HTTP.

    .venv/bin/python bench/encode.py [--seconds 5] [--clients 16] [--data-dir DIR] [--markdown]
        [--device cpu|cuda] [--budget SECONDS]

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
``--device cuda``: in-process cells on the GPU (ONNX Runtime's CUDA provider, PyTorch ``.cuda()``; a
backend without CUDA here is skipped, both missing is an error), the server started with
``ERS_DEVICE=cuda`` (and checked with ``nvidia-smi`` to hold the GPU), and the whole run kept within
``--budget`` (default 300 s): each cell's seconds are what is left, spread over the cells still to run.
Every in-process encoder is checked to sit on the requested device (``runner.device``).
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

from models.core.backends import set_device
from models.core.encoder import encode
from models.core.errors import ModelError
from models.core.registry import load_encoder
from models.zoo import entries, pull

console = Console(width=200)
BATCHES = (1, 8, 32)
DEFAULT_ENCODERS = ("minilm-l6@1", "minilm-l3@1", "effnet-lite0@1", "face-resnet@1")
CLK_TCK = os.sysconf("SC_CLK_TCK")
TARGET = 0.70
CUDA_BUDGET_S = 300.0
MIN_CELL_S = 0.5
# Wall time a cell costs beyond its measured seconds: load + warm-up in process; a server's start-up.
IN_PROCESS_OVERHEAD_S, SERVER_START_S, HTTP_WARMUP_FACTOR = 2.0, 30.0, 1.5


class DeviceError(RuntimeError):
    """The requested device cannot be used, or an encoder did not land on it."""


def cuda_backends() -> dict[str, bool]:
    """Which in-process backends can run on CUDA here."""
    import onnxruntime
    import torch

    return {
        "onnx": "CUDAExecutionProvider" in onnxruntime.get_available_providers(),
        "torch": torch.cuda.is_available(),
    }


def load_on(directory: Path, backend: str, device: str) -> Any:
    """``load_encoder`` on ``device`` (``set_device``: what ERS_DEVICE does in the server); refuses to
    measure an encoder that landed elsewhere."""
    set_device(device)
    try:
        encoder = load_encoder(directory, backend=backend, threads=1)  # type: ignore[arg-type]
    except ModelError as exc:  # e.g. cuda asked for and this backend has none
        raise DeviceError(f"{directory.name} ({backend}): {exc}") from exc
    actual = getattr(encoder.runner, "device", "cpu")
    if actual != device:
        raise DeviceError(f"{directory.name} ({backend}) loaded on {actual}, not {device}")
    return encoder


class Budget:
    """Spreads what is left of a wall-clock budget over the cells still to run (``None``: no budget,
    every cell gets ``cap`` seconds)."""

    def __init__(self, total_s: float | None, cap: float, in_process: int, http: int, servers: int) -> None:
        self.deadline = None if total_s is None else time.monotonic() + total_s
        self.cap, self.in_left, self.http_left, self.servers_left = cap, in_process, http, servers

    def next_cell(self, kind: str) -> float:
        seconds = self.cap
        if self.deadline is not None:
            fixed = IN_PROCESS_OVERHEAD_S * self.in_left + SERVER_START_S * self.servers_left
            weight = self.in_left + HTTP_WARMUP_FACTOR * self.http_left
            spare = (self.deadline - time.monotonic() - fixed) / max(weight, 1.0)
            seconds = min(self.cap, max(MIN_CELL_S, spare))
        if kind == "http":
            self.http_left -= 1
        else:
            self.in_left -= 1
        return seconds


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def process_age() -> float:
    """Seconds since this process started (from /proc; 0 where there is none)."""
    try:
        with open("/proc/self/stat") as f, open("/proc/uptime") as up:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
            return max(0.0, float(up.read().split()[0]) - start_ticks / CLK_TCK)
    except (OSError, IndexError, ValueError):
        return 0.0


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


def in_process(directory: Path, backend: str, inputs: list[Any], batch: int, seconds: float, device: str) -> float:
    encoder = load_on(directory, backend, device)
    for _ in range(3 if device == "cuda" else 1):  # warm-up (on CUDA: context, kernels, allocator)
        encode(encoder, inputs[:batch])
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
        env = {k: v for k, v in os.environ.items() if not k.startswith("ERS_")} | {"ERS_WORKERS": "1"} | env_extra
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


def check_server_device(server: Server, device: str) -> None:
    """On CUDA, ``nvidia-smi`` must list the server among the GPU's processes (it lists none inside
    some containers: then the check is reported as not done rather than failed)."""
    if device != "cuda":
        return
    try:
        listed = subprocess.run(["nvidia-smi", "--query-compute-apps=pid", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30, check=True).stdout.split()  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        console.print(f"[yellow]server on the GPU not verified: nvidia-smi failed ({exc})[/yellow]")
        return
    if str(server.proc.pid) in listed:
        console.print(f"server pid {server.proc.pid} holds the GPU (nvidia-smi)")
    elif not listed:
        console.print("[yellow]server on the GPU not verified: nvidia-smi lists no processes here[/yellow]")
    else:
        raise DeviceError(f"ers serve (pid {server.proc.pid}) is not among the GPU's processes {listed}")


def server_device_env(device: str, extra: dict[str, str], cuda: dict[str, bool]) -> dict[str, str]:
    """ERS_DEVICE for the server; refuses when the server's code cannot honour it."""
    from service.settings import Settings

    if extra.get("ERS_DEVICE", device) != device:
        raise DeviceError(f"--server-env ERS_DEVICE={extra['ERS_DEVICE']} contradicts --device {device}")
    automatic = "cuda" if cuda["onnx"] else "cpu"  # the server runs the artifacts' ONNX files
    if "device" not in Settings.model_fields and automatic != device:
        raise DeviceError(f"the server has no ERS_DEVICE setting yet and would run on {automatic}, not {device}")
    return {"ERS_DEVICE": device}


def main() -> int:
    started = time.monotonic() - process_age()  # --budget counts interpreter start-up and imports too
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per cell (at most)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--encoders", default=",".join(DEFAULT_ENCODERS), help="those not in the zoo are skipped")
    parser.add_argument("--data-dir", type=Path, default=None, help="keep pulled models here (default: a temp dir)")
    parser.add_argument("--server-env", action="append", default=[], help="extra KEY=VALUE for the server")
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    budget_help = f"wall-clock seconds for the whole run (default {CUDA_BUDGET_S:g} with cuda, none with cpu)"
    parser.add_argument("--budget", type=float, default=None, help=budget_help)
    args = parser.parse_args()

    import onnxruntime
    import torch

    torch.set_num_threads(1)
    cuda = cuda_backends()
    backends = ["torch", "onnx"]
    if args.device == "cuda":
        if not any(cuda.values()):
            console.print("[red]--device cuda: neither onnxruntime's CUDAExecutionProvider "
                          f"({', '.join(onnxruntime.get_available_providers())}) nor torch.cuda "
                          f"(torch {torch.__version__}) is available[/red]")  # fmt: skip
            return 1
        backends = [b for b in backends if cuda[b]]
        for b in sorted({"torch", "onnx"} - set(backends)):
            console.print(f"[yellow]{b}: no CUDA here, its in-process cells are skipped[/yellow]")
    budget_s = args.budget if args.budget is not None else (CUDA_BUDGET_S if args.device == "cuda" else None)
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="ers-bench-encode-")) / "data"
    models_dir, cache_dir = data_dir / "models", data_dir / "cache"
    zoo = entries()
    keys = [k for k in args.encoders.split(",") if k in zoo]
    skipped = [k for k in args.encoders.split(",") if k not in zoo]
    console.print(f"{dt.date.today()} | {cpu_model()} | {os.cpu_count()} cores | torch {torch.__version__} | "
                  f"onnxruntime {onnxruntime.__version__} | device {args.device} | <= {args.seconds:g} s per cell"
                  f"{f' within {budget_s:g} s' if budget_s else ''} | data {data_dir}")  # fmt: skip
    if skipped:
        console.print(f"not in the zoo, skipped: {', '.join(skipped)}")
    rows: dict[str, dict[str, float]] = {}
    inputs: dict[str, list[Any]] = {}
    try:
        extra = dict(kv.split("=", 1) for kv in args.server_env)
        if not args.skip_http:
            extra |= server_device_env(args.device, extra, cuda)
        for key in keys:
            with console.status(f"pulling {key}..."):
                spec = pull(key, models_dir, cache_dir)
            inputs[key] = make_inputs(spec.modality, models_dir, key, cache_dir)
        http_cells, servers = (0, 0) if args.skip_http else (2 * len(keys), 2)
        budget = Budget(None if budget_s is None else budget_s - (time.monotonic() - started), args.seconds,
                        len(keys) * len(backends) * len(BATCHES), http_cells, servers)  # fmt: skip
        for key in keys:
            rows[key] = {}
            for backend in backends:
                for batch in BATCHES:
                    seconds = budget.next_cell("in_process")
                    with console.status(f"{key} {backend} batch {batch} ({seconds:.1f} s)..."):
                        rows[key][f"{backend}{batch}"] = in_process(
                            models_dir / key, backend, inputs[key], batch, seconds, args.device
                        )
            console.print(f"{key}: " + "  ".join(f"{c} {v:.1f}/s" for c, v in rows[key].items()))
        if not args.skip_http:
            for batching in ("false", "true"):
                env = {"ERS_BATCHING": batching, "ERS_EMBED_CACHE_SIZE": "0", **extra}
                server = Server(data_dir, env)
                budget.servers_left -= 1
                try:
                    for key in keys:
                        seconds = budget.next_cell("http")
                        with console.status(f"{key} over HTTP, batching {batching} ({seconds:.1f} s)..."):
                            result = over_http(server, key, inputs[key], args.clients, seconds)
                        for name, value in result.items():
                            rows[key][f"http_{batching}_{name}"] = value
                    check_server_device(server, args.device)  # after the cells: the encoders are loaded
                finally:
                    server.stop()
    except DeviceError as exc:
        console.print(f"[red]--device {args.device}: {exc}[/red]")
        return 1
    print_table(rows, args, skip_http=args.skip_http)
    elapsed = time.monotonic() - started
    console.print(f"whole run {elapsed:.0f} s" + (f" (budget {budget_s:g} s)" if budget_s else ""))
    if budget_s and elapsed > budget_s:  # every cell already ran at the minimum: fixed costs ate the budget
        console.print("[yellow]over budget: pull the models beforehand (--data-dir) or raise --budget[/yellow]")
    return 0


def print_table(rows: dict[str, dict[str, float]], args: argparse.Namespace, skip_http: bool) -> None:
    head = [f"torch b{b}" for b in BATCHES] + [f"ONNX b{b}" for b in BATCHES]
    if not skip_http:
        head += ["HTTP no batching", "HTTP batching", "ratio HTTP/ONNX b32"]
        head += ["server CPU ms/item (batching)", "client CPU ms/item (batching)"]
    table = Table(
        "encoder (items/s)",
        *head,
        title=f"encoder throughput on {args.device}, 1 thread per forward, {args.clients} HTTP clients"
        " (— : backend without CUDA here)",
    )
    lines = []
    for key, r in rows.items():
        cells = [f"{r[c]:.1f}" if (c := f"{b}{n}") in r else "—" for b in ("torch", "onnx") for n in BATCHES]
        if not skip_http:
            ratio = "—"
            if "onnx32" in r:
                q = r["http_true_items_s"] / r["onnx32"]
                ratio = f"{q:.2f} {'✓' if q >= TARGET else '✗'}"
            cells += [f"{r['http_false_items_s']:.1f}", f"{r['http_true_items_s']:.1f}", ratio,
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
