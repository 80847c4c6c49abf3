"""``ers migrate COLLECTION --to NAME@VERSION`` / ``--rollback`` / ``--history``: encoder migrations
of a collection on a running server (``POST|GET /v1/collections/{name}/migrations``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from service.cli.common import call_server

console = Console()
err = Console(stderr=True)


def _call(method: str, path: str, **kwargs: Any) -> Any:
    # the compatibility gate embeds the evaluation set with both models: allow it minutes
    return call_server(method, path, timeout=600.0, **kwargs)


def _print_entry(entry: dict[str, Any]) -> None:
    gate = f" (gate: {entry['gate']}, evaluation set: {entry['eval_source']})" if "gate" in entry else ""
    console.print(f"[bold]{entry['kind']}[/bold] #{entry['id']}: {entry['from']} -> {entry['to']}{gate}")
    for version, report in (entry.get("reports") or {}).items():
        table = Table("test", "top-1", "mAP", title=f"{entry['to']} vs {version} ({report['n']} items)")
        for name in ("old_old", "new_old", "new_new"):
            table.add_row(name.replace("_", "/"), f"{report[name]['top1']:.4f}", f"{report[name]['mAP']:.4f}")
        console.print(table)
        console.print(f"criterion new/old > old/old: {'met' if report['criterion_met'] else 'NOT met'}; "
                      f"negative flips {report['negative_flips']:.4f}")  # fmt: skip
    if entry.get("backfill_job"):
        console.print(f"background backfill: job {entry['backfill_job']} (ers jobs show {entry['backfill_job']})")
    if entry.get("cancelled_backfills"):
        console.print(f"cancelled backfill job(s): {', '.join(entry['cancelled_backfills'])}")
    if entry.get("unsearchable"):
        console.print(f"[yellow]not searchable with {entry['to']} queries:[/yellow] {entry['unsearchable']}")


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
    history: Annotated[bool, typer.Option("--history", help="show the migrations so far")] = False,
) -> None:
    """Switch a collection to a backward-compatible encoder (old vectors stay searchable), roll back, or list."""
    path = f"/v1/collections/{collection}/migrations"
    if sum([to is not None, rollback, history]) != 1:
        err.print("[red]error:[/red] give exactly one of --to NAME@VERSION, --rollback or --history")
        raise typer.Exit(2)
    if backfill not in ("none", "background"):
        err.print("[red]error:[/red] --backfill is none or background")
        raise typer.Exit(2)
    if history:
        data = _call("GET", path)
        console.print(f"active encoder: [bold]{data['active']}[/bold] ({data['dim']}-d); items per version: "
                      f"{json.dumps(data['versions'])}")  # fmt: skip
        for entry in data["history"]:
            _print_entry(entry)
        return
    if rollback:
        data = _call("POST", path, json={"rollback": True})
    else:
        body: dict[str, Any] = {"to": to, "force": force, "backfill": backfill}
        if eval_file is not None:
            try:
                body["eval"] = json.loads(eval_file.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                err.print(f"[red]error:[/red] cannot read {eval_file}: {exc}")
                raise typer.Exit(2) from exc
        data = _call("POST", path, json=body)
    _print_entry(data["migration"])
    console.print(f"{collection} now queries with [bold]{data['active']}[/bold]")


def register(app: typer.Typer) -> None:
    app.command("migrate")(migrate)
