"""``ers doctor [--data-dir DIR] [--repair]``: the health of every collection of a data directory,
offline (the checks and repairs are ``indexer.collection_health``'s and
``indexer.collection_leftovers``'s)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from indexer.collection import Collection
from indexer.collection_health import Report, check, repair
from indexer.collection_leftovers import DELETED_MARKER, finish_deletes, leftovers
from indexer.errors import DataDirLocked
from indexer.manager import DataDirLock, describe_failure
from indexer.store.base import MetadataStore
from indexer.store.factory import open_store
from indexer.upgrade.compat import SpecCompat
from service.settings import Settings

console = Console(soft_wrap=True)  # one finding per line, however narrow the terminal: easy to grep
err = Console(stderr=True, soft_wrap=True)

# One paragraph a string: the help renderer keeps line breaks where they are.
HELP = "\n\n".join(
    [
        "Check every collection of a data directory offline, and repair what can be repaired.",
        "The server must be stopped: doctor takes the data directory's lock and refuses while a server holds "
        "it. Settings as for `ers serve` (ERS_DATA_DIR, ERS_REDIS_URL, ERS_REDIS_PREFIX). Each collection is "
        "`ok`, `heals at start`, `repairable` or `damaged`:",
        "- heals at start (the server fixes it when it opens the collection; --repair does it now): a torn "
        "log tail (an append a crash cut short, never acknowledged) is cut off; an unreadable index snapshot "
        "is rebuilt from the store (indexes are derived data).",
        "- repairable (the server quarantines the collection when it meets the damage): the log is damaged (intact "
        "records follow a bad one, or an older segment stops short) or lost records the store had applied (a "
        "truncated log), and the store holds every intact record of it. --repair starts a new empty log at the "
        "store's offset, keeps the old one as wal.damaged-<time> in the collection's directory, and rebuilds "
        "the indexes from the store. Nothing acknowledged is lost.",
        "- damaged (nothing here repairs it without losing data): the store lost records the log no longer "
        "has; intact records after the damage never reached the store; a store record or a logged record "
        "cannot be read. Restore the data directory and the store from a backup, or delete the collection "
        "(`ers collections delete NAME` on a running server: a quarantined collection can be deleted).",
        "--repair also finishes deletes a crash interrupted. Directories the store does not know are only "
        "reported. Exit status: 0 when every collection opens, 1 when one is still quarantined, 2 when doctor "
        "refused to run.",
    ]
)


def doctor(
    data_dir: Annotated[Path | None, typer.Option(help="data directory (ERS_DATA_DIR)")] = None,
    repair_: Annotated[bool, typer.Option("--repair", help="repair what can be repaired")] = False,
) -> None:
    settings = Settings(**({"data_dir": data_dir} if data_dir is not None else {}))  # type: ignore[arg-type]
    root = settings.data_dir
    if not root.is_dir():
        err.print(f"[red]no data directory at {escape(str(root))}[/red]")
        raise typer.Exit(2)
    try:
        lock = DataDirLock(root)
    except DataDirLocked as exc:
        err.print(f"[red]refusing:[/red] a server is running on {escape(str(root))}: stop it first")
        err.print(escape(exc.message))
        raise typer.Exit(2) from exc
    try:
        store = open_store(settings.redis_url, root, settings.redis_prefix)
        try:
            healthy = examine(settings, store, root / "collections", repair_)
        finally:
            store.close()
    finally:
        lock.release()
    raise typer.Exit(0 if healthy else 1)


def examine(settings: Settings, store: MetadataStore, collections: Path, fix: bool) -> bool:
    """Report (and with ``fix``, repair) every collection; True when every one would open."""
    names = store.collection_names()
    if collections.is_dir():
        for path, action in leftovers(collections, set(names)):
            console.print(f"{escape(path.name)}: left by an interrupted delete ({action})")
        if fix:
            finish_deletes(collections, store, set(names))
        for path in sorted(collections.iterdir()):
            known = path.name in names or path.name.startswith(".") or (path / DELETED_MARKER).exists()
            if path.is_dir() and not known:
                console.print(f"{escape(path.name)}: not a collection of this store (left alone)")
    healthy = True
    for name in names:
        report = check(store, collections, name)
        if fix and report.problems:
            report = _repair(settings, store, collections, report)
        _print(report)
        healthy &= report.status in ("ok", "heals at start")
    if not names:
        console.print("no collections")
    return healthy


def _repair(settings: Settings, store: MetadataStore, collections: Path, report: Report) -> Report:
    """Repair, then open the collection as the server would (cutting a torn tail, rebuilding dropped
    snapshots) and close it with fresh snapshots; the report of the result."""
    if report.status == "damaged":  # left exactly as found, for a restore
        return report
    for step in repair(store, collections, report):
        console.print(f"{escape(report.name)}: {escape(step)}")
    config = store.get_collection(report.name)
    if config is not None:
        options = replace(settings.index_options(), background=False)
        try:
            Collection(config, collections / report.name, store, options, SpecCompat(settings.models_path)).close()
        except Exception as exc:
            console.print(f"{escape(report.name)}: still cannot be opened: {escape(describe_failure(exc))}")
    return check(store, collections, report.name)


def _print(report: Report) -> None:
    colour = {"ok": "green", "heals at start": "yellow", "repairable": "red", "damaged": "red"}[report.status]
    console.print(f"[bold]{escape(report.name)}[/bold]: [{colour}]{report.status}[/{colour}]")
    for problem in report.problems:
        heals = {"start": "heals at start", "repair": "--repair", None: "not repairable"}[problem.heals]
        console.print(f"  - {escape(problem.detail)} ({heals})")


def register(app: typer.Typer) -> None:
    app.command("doctor", help=HELP)(doctor)
