"""``ers index``, ``ers jobs list|show|cancel`` and ``ers worker`` (registered by ``service.cli.main``)."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Column, Table

from service.cli.client import ClientError, ERSClient
from service.settings import Settings

jobs_app = typer.Typer(help="Batch indexing jobs: list, show, cancel.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)
MANIFESTS = (".jsonl", ".ndjson", ".csv")
TERMINAL = ("succeeded", "failed", "cancelled")


def register(app: typer.Typer) -> None:
    app.command("index")(index)
    app.command("worker")(worker)
    app.add_typer(jobs_app, name="jobs")


def _call(client: ERSClient, method: str, path: str, **kwargs: Any) -> Any:
    try:
        return client.request(method, path, **kwargs)
    except ClientError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc


def _client() -> ERSClient:
    settings = Settings()
    return ERSClient(settings.url, settings.api_key)


def _upload_parts(source: Path) -> tuple[tuple[str, bytes, str], list[tuple[str, tuple[str, bytes, str]]]]:
    """A local directory (a manifest is made: ids = relative paths) or manifest, as multipart parts."""
    if source.is_dir():
        lines, files = [], []
        for n, path in enumerate(sorted(p for p in source.rglob("*") if p.is_file() and not p.name.startswith("."))):
            rel = path.relative_to(source).as_posix()
            name = f"{n:06d}-{path.name}"  # unique: two folders may hold the same file name
            lines.append(json.dumps({"id": rel, "path": name, "payload": {"path": rel}}))
            files.append(("file", (name, path.read_bytes(), "application/octet-stream")))
        return ("manifest.jsonl", "\n".join(lines).encode(), "application/x-ndjson"), files
    data = source.read_bytes()
    if source.suffix.lower() == ".csv":  # sent as it is: its paths must name files uploaded beside it
        return (source.name, data, "text/csv"), []
    # JSONL: each file a line names (relative to the manifest) is sent under a unique upload name.
    lines, files = [], []
    for n, line in enumerate(data.decode().splitlines()):
        record = json.loads(line) if line.strip() else None
        named = record.get("path") if isinstance(record, dict) else None
        if isinstance(named, str) and (source.parent / named).is_file():
            record["path"] = f"{n:06d}-{os.path.basename(named)}"  # type: ignore[index]
            files.append(("file", (record["path"], (source.parent / named).read_bytes(), "application/octet-stream")))  # type: ignore[index]
            line = json.dumps(record)
        lines.append(line)
    return (source.name, "\n".join(lines).encode(), "application/x-ndjson"), files


def index(
    source: Annotated[
        str, typer.Argument(help="server directory or .jsonl/.csv manifest (or a local one with --upload)")
    ],
    collection: Annotated[str, typer.Option("--collection", "-c", help="collection to upsert into")],
    detach: Annotated[bool, typer.Option("--detach", help="print the job id and return")] = False,
    upload: Annotated[bool, typer.Option("--upload", help="send the local files instead of a server path")] = False,
    batch_size: Annotated[int | None, typer.Option(help="items per encoder batch (ERS_JOB_BATCH)")] = None,
    pattern: Annotated[str | None, typer.Option(help="only files matching this glob, e.g. '*.png'")] = None,
) -> None:
    """Index a directory or manifest into a collection, with a live progress bar."""
    options: dict[str, Any] = {k: v for k, v in {"batch_size": batch_size, "pattern": pattern}.items() if v}
    client = _client()
    try:
        if upload:
            manifest, files = _upload_parts(Path(source))
            data = {"collection": collection, "options": json.dumps(options)}
            job = _call(client, "POST", "/v1/jobs", data=data, files=[("manifest", manifest), *files])
        else:
            kind = "manifest" if Path(source).suffix.lower() in MANIFESTS else "directory"
            body = {
                "collection": collection,
                "source": {"type": kind, "path": os.path.abspath(source)},
                "options": options,
            }
            job = _call(client, "POST", "/v1/jobs", json=body)
        if detach:
            console.print(job["id"])
            return
        job = _follow(client, job["id"])
    finally:
        client.close()
    _summary(job)
    if job["state"] != "succeeded":
        raise typer.Exit(1)


def _follow(client: ERSClient, job_id: str) -> dict[str, Any]:
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
    )
    try:
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task(f"job {job_id[:8]}", total=None, info="queued")
            while True:
                job = _call(client, "GET", f"/v1/jobs/{job_id}")
                rate, eta = job["items_per_s"], job["eta_s"]
                info = f"{job['state']}, {job['failed']} failed"
                info += f", {rate:.1f} items/s" if rate else ""
                info += f", ETA {eta:.0f}s" if eta and job["state"] == "running" else ""
                progress.update(task, total=job["total"], completed=job["done"] + job["failed"], info=info)
                if job["state"] in TERMINAL:
                    return job
                time.sleep(0.5)
    except KeyboardInterrupt:
        err.print(f"\nthe job goes on in the server: `ers jobs show {job_id}`, `ers jobs cancel {job_id}`")
        raise typer.Exit(130) from None


def _summary(job: dict[str, Any]) -> None:
    colour = {"succeeded": "green", "failed": "red", "cancelled": "yellow"}.get(job["state"], "white")
    rate = f", {job['items_per_s']} items/s" if job.get("items_per_s") else ""
    console.print(
        f"[{colour}]{job['state']}[/{colour}]: {job['done']} indexed, {job['failed']} failed of {job['total']}{rate}"
    )
    if job.get("message"):
        console.print(f"  {job['message']}")
    if job.get("errors"):
        table = Table("id", "reason", title=f"first {len(job['errors'])} of {job['failed']} failures")
        for e in job["errors"]:
            table.add_row(e["id"], e["reason"])
        console.print(table)


@jobs_app.command("list")
def jobs_list() -> None:
    client = _client()
    try:
        data = _call(client, "GET", "/v1/jobs")
    finally:
        client.close()
    table = Table("collection", "state", "done", "failed", "total", "source")
    table.columns.insert(0, Column("id", no_wrap=True, min_width=32))  # ids are copied into other commands
    for j in data["jobs"]:
        src = j["source"]
        table.add_row(j["id"], j["collection"], j["state"], str(j["done"]), str(j["failed"]), str(j["total"]),
                      f"{src['type']}:{src.get('path', '')}")  # fmt: skip
    console.print(table)


@jobs_app.command("show")
def jobs_show(job_id: str) -> None:
    client = _client()
    try:
        console.print_json(json.dumps(_call(client, "GET", f"/v1/jobs/{job_id}")))
    finally:
        client.close()


@jobs_app.command("cancel")
def jobs_cancel(job_id: str) -> None:
    client = _client()
    try:
        job = _call(client, "POST", f"/v1/jobs/{job_id}/cancel")
    finally:
        client.close()
    console.print(f"cancelled {job['id']} ({job['done'] + job['failed']} of {job['total']} processed)")


def worker(
    redis_url: Annotated[str | None, typer.Option(help="Redis the server uses (ERS_REDIS_URL)")] = None,
    models_dir: Annotated[Path | None, typer.Option(help="encoder artefacts (ERS_MODELS_DIR)")] = None,
    redis_prefix: Annotated[str | None, typer.Option(help="key prefix (ERS_REDIS_PREFIX)")] = None,
    threads: Annotated[int | None, typer.Option(help="torch/ONNX threads per forward (ERS_THREADS)")] = None,
    name: Annotated[str | None, typer.Option(help="consumer name (default host-pid-random)")] = None,
) -> None:
    """Encode batches of indexing jobs from Redis (ERS_JOB_RUNNER=redis on the server)."""
    overrides = {"redis_url": redis_url, "models_dir": models_dir, "redis_prefix": redis_prefix, "threads": threads}
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]
    if not settings.redis_url:
        err.print("[red]error:[/red] a worker needs Redis: --redis-url or ERS_REDIS_URL")
        raise typer.Exit(2)
    from indexer.jobs.worker import StreamWorker

    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())  # finish the batch in hand, then leave
    opts = settings.job_options()
    StreamWorker(settings.redis_url, settings.redis_prefix, settings.models_path, opts, settings.threads, name).run(
        stop
    )
