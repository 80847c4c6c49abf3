"""``ers index``, ``ers jobs list|show|cancel`` and ``ers worker`` (registered by ``service.cli.main``)."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Column, Table

from service.cli.common import server, show
from service.client import ERSClient, Job, Upload
from service.settings import Settings

jobs_app = typer.Typer(help="Batch indexing jobs: list, show, cancel.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)
MANIFESTS = (".jsonl", ".ndjson", ".csv")


def register(app: typer.Typer) -> None:
    app.command("index")(index)
    app.command("worker")(worker)
    app.add_typer(jobs_app, name="jobs")


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
    options = {k: v for k, v in {"batch_size": batch_size, "pattern": pattern}.items() if v}
    with server() as ers:
        if upload:
            job = ers.submit_upload(collection, Upload.from_path(Path(source)), options=options)
        else:
            kind: Literal["directory", "manifest"] = (
                "manifest" if Path(source).suffix.lower() in MANIFESTS else "directory"
            )
            job = ers.submit_job(collection, os.path.abspath(source), source_type=kind, options=options)
        if detach:
            console.print(job.id)
            return
        job = _follow(ers, job.id)
    _summary(job)
    if job.state != "succeeded":
        raise typer.Exit(1)


def _follow(client: ERSClient, job_id: str) -> Job:
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
    )
    try:
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task(f"job {job_id[:8]}", total=None, info="queued")
            for job in client.watch_job(job_id):
                rate, eta = job.items_per_s, job.eta_s
                info = f"{job.state}, {job.failed} failed"
                info += f", {rate:.1f} items/s" if rate else ""
                info += f", ETA {eta:.0f}s" if eta and job.state == "running" else ""
                progress.update(task, total=job.total, completed=job.processed, info=info)
            return job
    except KeyboardInterrupt:
        err.print(f"\nthe job goes on in the server: `ers jobs show {job_id}`, `ers jobs cancel {job_id}`")
        raise typer.Exit(130) from None


def _summary(job: Job) -> None:
    colour = {"succeeded": "green", "failed": "red", "cancelled": "yellow"}.get(job.state, "white")
    rate = f", {job.items_per_s} items/s" if job.items_per_s else ""
    console.print(f"[{colour}]{job.state}[/{colour}]: {job.done} indexed, {job.failed} failed of {job.total}{rate}")
    if job.message:
        console.print(f"  {job.message}")
    if job.errors:
        table = Table("id", "reason", title=f"first {len(job.errors)} of {job.failed} failures")
        for e in job.errors:
            table.add_row(e.id, e.reason)
        console.print(table)


@jobs_app.command("list")
def jobs_list() -> None:
    with server() as ers:
        jobs = ers.list_jobs()
    table = Table("collection", "state", "done", "failed", "total", "source")
    table.columns.insert(0, Column("id", no_wrap=True, min_width=32))  # ids are copied into other commands
    for j in jobs:
        table.add_row(j.id, j.collection, j.state, str(j.done), str(j.failed), str(j.total),
                      f"{j.source.type}:{j.source.path or ''}")  # fmt: skip
    console.print(table)


@jobs_app.command("show")
def jobs_show(job_id: str) -> None:
    show(lambda ers: ers.get_job(job_id))


@jobs_app.command("cancel")
def jobs_cancel(job_id: str) -> None:
    with server() as ers:
        job = ers.cancel_job(job_id)
    console.print(f"cancelled {job.id} ({job.processed} of {job.total} processed)")


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
    from models.core.backends import set_device

    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())  # finish the batch in hand, then leave
    opts = settings.job_options()
    set_device(settings.device)
    StreamWorker(settings.redis_url, settings.redis_prefix, settings.models_path, opts, settings.threads, name).run(
        stop
    )
