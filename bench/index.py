"""Indexing-job throughput: the embedded runner vs 1 and 2 Redis workers, against the bare encoder.

    .venv/bin/python bench/index.py [--n-images 10000] [--n-texts 10000] [--batch 32]
        [--runners embedded,redis1,redis2] [--data-dir DIR] [--markdown] [--compare-to REV [--rounds 2]]

Sources (built in a temp dir): ``--n-images`` Google-style emoji PNGs (64x64, flattened on white,
cycled) as a directory, and ``--n-texts`` short sentences from emoji names as a JSONL manifest.
Encoders: effnet-lite0@1 (images) and minilm-l6@1 (texts), pulled into ``<data-dir>/models``.

For each source and runner: a fresh ``ers serve`` (ERS_THREADS=1), for Redis runs a fresh
``redis-server`` (AOF, fsync every second) and 1 or 2 ``ers worker`` processes; one job; items/s is
the job's own rate (server-side, from its first to its last counted batch), so start-up is excluded.
"Bare" is in-process ONNX Runtime ``encode`` at the same batch size over the same inputs (the
``bench/encode.py`` method, preprocessing included); ratio = job / bare (target >= 0.80).
With ``--compare-to REV`` (e.g. the main before a change), each job also runs on REV's code, checked
out in a temporary ``git worktree`` (see ``bench/indexlib.py``): before, after, before, after... over
``--rounds``, interleaved so drift in the machine's load hits both sides alike; the table gives
items/s per side and after / before.
Exit status 0 whatever the numbers (a benchmark, not a test); 1 if it could not run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from indexlib import REPO, Worktree, check_code, code_env, print_comparison

from models.core.encoder import encode
from models.core.registry import load_encoder
from models.zoo import pull

console = Console(width=200)
BIN = Path(sys.executable).parent
TARGET = 0.80
# Every ERS_* variable a Stack may set (checked against --compare-to's Settings before any run).
STACK_SETTINGS = ("ERS_DATA_DIR", "ERS_MODELS_DIR", "ERS_ALLOWED_ROOTS", "ERS_JOB_BATCH", "ERS_THREADS",
                  "ERS_EMBED_CACHE_SIZE", "ERS_REDIS_URL", "ERS_JOB_RUNNER")  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_sources(root: Path, n_images: int, n_texts: int, cache_dir: Path) -> tuple[Path, Path, list[Any], list[str]]:
    from models.data.emoji import flatten_png, load_emoji

    emojis = load_emoji(cache_dir)
    pngs = [flatten_png(e.google_png) for e in emojis]
    images = root / "images"
    images.mkdir(parents=True)
    for i in range(n_images):
        (images / f"{i:06d}.png").write_bytes(pngs[i % len(pngs)])
    texts = [
        f"The {e.text} emoji, number {i}, belongs to {e.subcategory.replace('-', ' ')} in {e.category}."
        for i, e in ((i, emojis[i % len(emojis)]) for i in range(n_texts))
    ]
    manifest = root / "texts.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"t{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    return images, manifest, pngs, texts


def bare_rate(directory: Path, inputs: list[Any], batch: int, limit: int) -> float:
    encoder = load_encoder(directory, backend="onnx", threads=1)
    encode(encoder, inputs[:batch])  # warm-up
    sample = inputs[: max(batch, min(len(inputs), limit))]
    started = time.perf_counter()
    for i in range(0, len(sample), batch):
        encode(encoder, sample[i : i + batch])
    return len(sample) / (time.perf_counter() - started)


def _expect(ok: bool) -> None:
    if not ok:
        raise AssertionError("not yet")


class Stack:
    """A server (+ Redis + workers) for one measurement; everything is killed on close. ``ers``
    processes run the code of the repository at ``code`` (this tree unless comparing)."""

    def __init__(self, root: Path, models: Path, allowed: Path, runner: str, workers: int, batch: int,
                 code: Path = REPO) -> None:  # fmt: skip
        self.procs: list[subprocess.Popen[bytes]] = []
        self.root, self.code = root, code
        data = root / "data"
        data.mkdir(parents=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ERS_")}
        env.update(ERS_DATA_DIR=str(data), ERS_MODELS_DIR=str(models), ERS_ALLOWED_ROOTS=str(allowed),
                   ERS_JOB_BATCH=str(batch), ERS_THREADS="1", ERS_EMBED_CACHE_SIZE="0")  # fmt: skip
        if runner == "redis":
            port = free_port()
            redis_dir = root / "redis"
            redis_dir.mkdir()
            self._spawn(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(redis_dir),
                         "--save", "", "--appendonly", "yes", "--appendfsync", "everysec"], env, "redis")  # fmt: skip
            env.update(ERS_REDIS_URL=f"redis://127.0.0.1:{port}/0", ERS_JOB_RUNNER="redis")
            self._wait(lambda: socket.create_connection(("127.0.0.1", port), timeout=0.5).close())
        self.port = free_port()
        assert {k for k in env if k.startswith("ERS_")} <= set(STACK_SETTINGS), "update STACK_SETTINGS"
        env = code_env(code, env)
        self._spawn([str(BIN / "ers"), "serve", "--port", str(self.port)], env, "server")
        self.url = f"http://127.0.0.1:{self.port}"
        self._wait(lambda: httpx.get(self.url + "/readyz", timeout=2).raise_for_status())
        for n in range(workers):
            self._spawn([str(BIN / "ers"), "worker"], env, f"worker{n}")
        for n in range(workers):  # measure the job, not the workers' start-up: wait until each reads
            log = root / f"worker{n}.log"
            self._wait(lambda log=log: _expect("reading" in log.read_text()))

    def _spawn(self, args: list[str], env: dict[str, str], name: str) -> None:
        with open(self.root / f"{name}.log", "ab") as log:
            self.procs.append(subprocess.Popen(args, env=env, cwd=self.code, stdout=log, stderr=subprocess.STDOUT))

    def _wait(self, probe: Any, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                probe()
                return
            except (OSError, httpx.HTTPError, AssertionError):
                if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                    raise RuntimeError(f"did not start; logs in {self.root}") from None
                time.sleep(0.1)

    def run_job(self, encoder: str, source: dict[str, str]) -> dict[str, Any]:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            client.post("/v1/collections", json={"name": "bench", "encoder": encoder}).raise_for_status()
            r = client.post("/v1/jobs", json={"collection": "bench", "source": source})
            r.raise_for_status()
            job_id = r.json()["id"]
            while True:
                job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
                if job["state"] in ("succeeded", "failed", "cancelled"):
                    job["count"] = client.get("/v1/collections/bench").json()["count"]
                    return job
                time.sleep(0.2)

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.kill()
            proc.wait(timeout=30)


def measure(root: Path, models: Path, allowed: Path, runner: str, batch: int, key: str, source: dict[str, str],
            code: Path) -> float:  # fmt: skip
    """One fresh stack, one job; its items/s (a job that did not index everything is reported in red)."""
    kind, workers = ("redis", int(runner[5:] or 1)) if runner.startswith("redis") else ("embedded", 0)
    stack = Stack(root, models, allowed, kind, workers, batch, code)
    try:
        job = stack.run_job(key, source)
    finally:
        stack.close()
    if job["state"] != "succeeded" or job["failed"] or job["count"] != job["total"]:
        console.print(f"[red]{root.name}: {job}[/red]")
    return float(job["items_per_s"] or 0.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-images", type=int, default=10_000)
    parser.add_argument("--n-texts", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=32, help="ERS_JOB_BATCH (and the bare encoder's batch)")
    parser.add_argument("--runners", default="embedded,redis1,redis2")
    parser.add_argument("--image-encoder", default="effnet-lite0@1")
    parser.add_argument("--text-encoder", default="minilm-l6@1")
    parser.add_argument("--data-dir", type=Path, default=None, help="keep pulled models here (default: a temp dir)")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--compare-to", metavar="REV", help="also run every job on this git revision's code")
    parser.add_argument("--rounds", type=int, default=None, help="before/after pairs per job (default 2)")
    args = parser.parse_args()
    if args.rounds is not None and not args.compare_to:
        parser.error("--rounds needs --compare-to")
    rounds = args.rounds if args.rounds is not None else 2
    if rounds < 1:
        parser.error("--rounds must be >= 1")
    runners = args.runners.split(",")
    import torch

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="ers-bench-index-"))
    data_dir = args.data_dir or work / "data"
    models, cache = data_dir / "models", data_dir / "cache"
    with contextlib.ExitStack() as scope:  # the worktree goes whatever happens
        try:
            sides = {"after": REPO}
            if args.compare_to:
                tree = scope.enter_context(Worktree(args.compare_to))
                for code in (tree.path, REPO):
                    check_code(code, STACK_SETTINGS)
                sides = {"before": tree.path, "after": REPO}
                console.print(f"before = {args.compare_to} ({tree.commit[:12]}, worktree {tree.path}); after = {REPO}")
            for key in (args.image_encoder, args.text_encoder):
                pull(key, models, cache)
            images, manifest, pngs, texts = make_sources(work / "src", args.n_images, args.n_texts, cache)
            cases = [
                (f"{args.n_images} images", args.image_encoder, {"type": "directory", "path": str(images)}, pngs),
                (f"{args.n_texts} texts", args.text_encoder, {"type": "manifest", "path": str(manifest)}, texts),
            ]
            rows = []
            for label, key, source, inputs in cases:
                own = work / f"models-{key}"  # only this encoder: servers start without loading the others
                shutil.copytree(models / key, own / key, copy_function=os.link)
                bare = bare_rate(models / key, inputs, args.batch, 2000)
                row: dict[str, Any] = {"source": label, "encoder": key, "bare": bare}
                row |= {side: {r: [] for r in runners} for side in sides}
                for runner in runners:
                    for n in range(rounds if args.compare_to else 1):
                        for side, code in sides.items():  # before, after, before, after...
                            rate = measure(work / f"{key}-{runner}-{side}{n}", own, work / "src", runner, args.batch,
                                           key, source, code)  # fmt: skip
                            row[side][runner].append(rate)
                            console.print(f"{label} {runner} {side} #{n + 1}: {rate:.1f} items/s (bare {bare:.1f})")
                    row[runner] = row["after"][runner][0]
                rows.append(row)
        except Exception as exc:  # CodeMismatch included: say why and keep the logs
            console.print(f"[red]could not run:[/red] {exc} (work dir {work})")
            return 1
    if args.compare_to:
        print_comparison(rows, runners, args.compare_to, args.markdown, console)
    else:
        print_table(rows, runners, args.markdown)
    shutil.rmtree(work, ignore_errors=True)
    return 0


def print_table(rows: list[dict[str, Any]], runners: list[str], markdown: bool) -> None:
    head = ["source", "encoder", "bare items/s", *[f"{r} items/s (ratio)" for r in runners]]
    table = Table(*head, title=f"indexing jobs vs the bare encoder (target ratio >= {TARGET:.2f})")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["source"], row["encoder"], f"{row['bare']:.1f}"]
        cells += [f"{row[r]:.1f} ({row[r] / row['bare']:.2f})" for r in runners]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    console.print(table)
    if markdown:
        print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
