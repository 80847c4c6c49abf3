"""The ``ers`` command: run the server, and talk to a running one."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from service.cli import compat as cli_compat
from service.cli import doctor as cli_doctor
from service.cli import jobs as cli_jobs
from service.cli import migrate as cli_migrate
from service.cli import train as cli_train
from service.cli.common import server, show
from service.cli.zoo import zoo_app
from service.settings import Settings

app = typer.Typer(help="ERS, the embedding retrieval service.", no_args_is_help=True)
collections_app = typer.Typer(help="Create, list, show and delete collections.", no_args_is_help=True)
app.add_typer(collections_app, name="collections")
app.add_typer(zoo_app, name="zoo")
cli_train.register(app)
cli_compat.register(app)
cli_jobs.register(app)
cli_migrate.register(app)
cli_doctor.register(app)
console = Console()
err = Console(stderr=True)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="bind address (ERS_HOST); default 127.0.0.1")] = None,
    port: Annotated[int | None, typer.Option(help="port (ERS_PORT); default 8080")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="data directory (ERS_DATA_DIR)")] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="processes on the port (ERS_WORKERS): one writer, the rest serve searches; default: one per core",
        ),
    ] = None,
) -> None:
    """Run the API server (one process owns a data directory; with --workers N, N-1 more serve searches)."""
    chosen = {"host": host, "port": port, "data_dir": data_dir, "workers": workers}
    overrides = {k: v for k, v in chosen.items() if v is not None}
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValueError as exc:  # pydantic's ValidationError, e.g. ERS_WORKERS=0
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    refusal = settings.bind_refusal()
    if refusal is not None:
        err.print(f"[red]refusing to bind {settings.host}[/red]: {refusal}")
        raise typer.Exit(2)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.workers > 1:
        from service.workers import serve_workers

        raise typer.Exit(serve_workers(settings))
    import uvicorn

    from service.app import create_app

    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        workers=1,
        timeout_graceful_shutdown=30,
        access_log=settings.access_log,
    )


@collections_app.command("create")
def collections_create(
    name: str,
    dim: Annotated[int, typer.Option(help="vector dimension")],
    metric: Annotated[str, typer.Option(help="cosine | ip | l2")] = "cosine",
    index: Annotated[str, typer.Option(help="auto or a FAISS factory string")] = "auto",
    encoder: Annotated[str | None, typer.Option(help="name@version")] = None,
) -> None:
    with server() as ers:
        info = ers.create_collection(name, dim, metric=metric, index=index, encoder=encoder)
    console.print(f"created [bold]{info.name}[/bold] (dim {info.dim}, {info.metric}, {info.index})")


@collections_app.command("list")
def collections_list() -> None:
    with server() as ers:
        collections = ers.list_collections()
    table = Table("name", "dim", "metric", "encoder", "index", "active", "count")
    for c in collections:
        table.add_row(c.name, str(c.dim), c.metric, c.encoder or "-", c.index, c.active_index, str(c.count))
    console.print(table)


@collections_app.command("show")
def collections_show(name: str) -> None:
    show(lambda ers: ers.get_collection(name))


@collections_app.command("delete")
def collections_delete(name: str, yes: Annotated[bool, typer.Option("--yes", help="do not ask")] = False) -> None:
    if not yes and sys.stdin.isatty() and not typer.confirm(f"delete collection {name} and all its items?"):
        raise typer.Exit(1)
    with server() as ers:
        ers.delete_collection(name)
    console.print(f"deleted {name}")


@app.command("search")
def search_cmd(
    collection: str,
    vector: Annotated[str | None, typer.Option(help="JSON list of floats")] = None,
    item_id: Annotated[str | None, typer.Option("--id", help="search with a stored item's vector")] = None,
    k: int = 10,
    filter_json: Annotated[str | None, typer.Option("--filter", help='JSON, e.g. {"color": "red"}')] = None,
) -> None:
    """Search a collection by vector or by a stored item's id."""
    try:
        query: dict[str, Any] = {"vector": None if vector is None else json.loads(vector)}
        query["filter"] = None if filter_json is None else json.loads(filter_json)
    except json.JSONDecodeError as exc:
        err.print(f"[red]error:[/red] not valid JSON: {exc}")
        raise typer.Exit(2) from exc
    with server() as ers:
        found = ers.search(collection, id=item_id, k=k, **query)
    table = Table("rank", "id", "score", "payload", title=f"{collection} ({found.took_ms} ms)")
    for rank, hit in enumerate(found.results, 1):
        table.add_row(str(rank), hit.id, f"{hit.score:.4f}", json.dumps(hit.payload))
    console.print(table)


@app.command("demo")
def demo_cmd(
    data_dir: Annotated[Path, typer.Option(envvar="ERS_DATA_DIR", help="data directory")] = Path(".ers-data"),
    port: Annotated[int, typer.Option(help="port of the demo server")] = 8080,
    limit: Annotated[int | None, typer.Option(help="index only N emojis (evenly spread); default all")] = None,
    queries: Annotated[int, typer.Option(help="Twitter-style queries for recall@k")] = 300,
    exit_after: Annotated[bool, typer.Option("--exit", help="stop the server when the demo is done")] = False,
    two_branch_config: Annotated[
        str | None, typer.Option(help="two-branch config trained when no model is cached (default: two-branch-small)")
    ] = None,
) -> None:
    """The README's demo: pull two encoders, index 1,911 emoji, search them, restart, and keep serving."""
    from service.cli import demo  # torch and the zoo only for this command

    config = two_branch_config or demo.TWO_BRANCH_CONFIG
    demo.run(data_dir.resolve(), port, limit, queries, not exit_after, config)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
