"""``ers migrate COLLECTION --to NAME@VERSION`` / ``--rollback`` / ``--history``: encoder migrations
of a collection on a running server (``POST|GET /v1/collections/{name}/migrations``)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from indexer.jobs.sources import MANIFEST_SUFFIXES
from service.cli.common import server
from service.client import Migration, MigrationResult, MigrationTask

METHODS = ("prefix", "auto", "fuse", "adapter", "transform")
Bridged = Literal["auto", "fuse", "adapter", "transform"]
POLL_S = 0.5
console = Console()
err = Console(stderr=True)


def _print_entry(entry: Migration) -> None:
    gate = f" (gate: {entry.gate}, evaluation set: {entry.eval_source})" if entry.gate is not None else ""
    console.print(f"[bold]{entry.kind}[/bold] #{entry.id}: {entry.from_} -> {entry.to}{gate}")
    for version, report in entry.reports.items():
        table = Table("test", "top-1", "mAP", title=f"{entry.to} vs {version} ({report.n} items)")
        for name, scores in (("old/old", report.old_old), ("new/old", report.new_old), ("new/new", report.new_new)):
            table.add_row(name, f"{scores.top1:.4f}", f"{scores.mAP:.4f}")
        console.print(table)
        console.print(f"criterion new/old > old/old: {'met' if report.criterion_met else 'NOT met'}; "
                      f"negative flips {report.negative_flips:.4f}")  # fmt: skip
    extra = entry.model_extra or {}
    if extra.get("method"):  # a pretrained upgrade (indexer.upgrade.bridging): the figures it was chosen on
        console.print(f"method {extra['method']} (asked {extra.get('asked')}) over {extra.get('new_encoder')}")
        figures = (extra.get("pretrained") or {}).get("figures", {})
        console.print("R@10 on held-out calibration inputs: " + ", ".join(f"{k} {v:.4f}" for k, v in figures.items()))
    if entry.backfill_job:
        console.print(f"background backfill: job {entry.backfill_job} (ers jobs show {entry.backfill_job})")
    if entry.cancelled_backfills:
        console.print(f"cancelled backfill job(s): {', '.join(entry.cancelled_backfills)}")
    if entry.unsearchable:
        console.print(f"[yellow]not searchable with {entry.to} queries:[/yellow] {entry.unsearchable}")


def migrate(
    collection: Annotated[str, typer.Argument(help="collection name")],
    to: Annotated[str | None, typer.Option(help="name@version of the new query encoder")] = None,
    force: Annotated[bool, typer.Option("--force", help="migrate even if the compatibility gate fails")] = False,
    backfill: Annotated[
        str, typer.Option(help="none | background (re-encode kept sources with the new encoder, as a job)")
    ] = "none",
    eval_file: Annotated[
        Path | None, typer.Option("--eval", help='JSON {"inputs": [...], "labels": [...]} for this gate')
    ] = None,
    rollback: Annotated[bool, typer.Option("--rollback", help="return to the previous query encoder")] = False,
    method: Annotated[
        str,
        typer.Option(help="prefix (a compatible_with model) | auto | fuse | adapter | transform (pretrained upgrades)"),
    ] = "prefix",
    calibration: Annotated[
        str | None,
        typer.Option(
            help="server path of raw calibration inputs: a directory, or a .jsonl/.csv manifest "
            "(default: a sample of the collection's kept sources)"
        ),
    ] = None,
    calibration_size: Annotated[int | None, typer.Option(help="calibration inputs sampled (default 2000)")] = None,
    seed: Annotated[int, typer.Option(help="seed of the calibration sample and the fits")] = 0,
    history: Annotated[bool, typer.Option("--history", help="show the migrations so far")] = False,
) -> None:
    """Switch a collection to a backward-compatible encoder (old vectors stay searchable), roll back, or list."""
    if sum([to is not None, rollback, history]) != 1:
        err.print("[red]error:[/red] give exactly one of --to NAME@VERSION, --rollback or --history")
        raise typer.Exit(2)
    if method not in METHODS:
        err.print(f"[red]error:[/red] --method is one of {', '.join(METHODS)}")
        raise typer.Exit(2)
    if method == "prefix" and (calibration is not None or calibration_size is not None):
        err.print("[red]error:[/red] --calibration and --calibration-size need --method auto|fuse|adapter|transform")
        raise typer.Exit(2)
    if backfill not in ("none", "background"):
        err.print("[red]error:[/red] --backfill is none or background")
        raise typer.Exit(2)
    with server() as ers:
        if history:
            past = ers.migrations(collection)
            console.print(f"active encoder: [bold]{past.active}[/bold] ({past.dim}-d); items per version: "
                          f"{json.dumps(past.versions)}")  # fmt: skip
            for entry in past.history:
                _print_entry(entry)
            return
        done: MigrationResult
        if rollback:
            done = ers.rollback(collection)
            if done.task is not None:  # restoring the vectors a backfill replaced, then switching back
                done = _follow(ers, collection, done.task)
        else:
            assert to is not None  # exactly one of --to, --rollback, --history (checked above)
            mode = cast(Literal["none", "background"], backfill)
            eval_set = None if eval_file is None else _read_eval(eval_file)
            if method != "prefix":
                source = None if calibration is None else {"type": _source_type(calibration), "path": calibration}
                task = ers.start_migration(
                    collection, to, cast(Bridged, method), calibration=source, calibration_size=calibration_size,
                    seed=seed, force=force, backfill=mode, eval_set=eval_set,
                )  # fmt: skip
                done = _follow(ers, collection, task)
            else:
                done = ers.migrate(collection, to, force=force, backfill=mode, eval_set=eval_set)
    assert done.migration is not None  # an immediate answer, or a task followed to its entry
    _print_entry(done.migration)
    console.print(f"{collection} now queries with [bold]{done.active}[/bold]")


def _source_type(path: str) -> str:
    return "manifest" if path.lower().endswith(MANIFEST_SUFFIXES) else "directory"


def _follow(ers: Any, collection: str, task: MigrationTask) -> MigrationResult:
    """Poll a pretrained-upgrade task with a progress bar; its report; exit 1 unless it switched."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[phase]}"))
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task(f"migration {task.id[:8]} ({task.method})", total=None, phase=task.phase)
        while task.state == "running":
            time.sleep(POLL_S)
            task = ers.migration_task(collection, task.id)
            total = task.progress.get("total") or None
            progress.update(bar, total=total, completed=task.progress.get("done", 0), phase=task.phase)
    if task.report:
        table = Table("setting", "R@10 (held-out calibration inputs)", title=f"{task.to}: {task.report.get('reason')}")
        for name, value in task.report.get("figures", {}).items():
            table.add_row(name, f"{value:.4f}")
        console.print(table)
    if task.state != "succeeded" or task.migration is None:
        err.print(f"[red]migration {task.state}:[/red] {task.error}")
        raise typer.Exit(1)
    return MigrationResult(migration=task.migration, active=task.migration.to)


def _read_eval(eval_file: Path) -> dict[str, Any]:
    """The --eval file: a JSON object ``{"inputs": [...], "labels": [...]}``."""
    try:
        loaded = json.loads(eval_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        err.print(f"[red]error:[/red] cannot read {eval_file}: {exc}")
        raise typer.Exit(2) from exc
    if not isinstance(loaded, dict):
        err.print(f"[red]error:[/red] cannot read {eval_file}: not a JSON object")
        raise typer.Exit(2)
    return loaded


def register(app: typer.Typer) -> None:
    app.command("migrate")(migrate)
