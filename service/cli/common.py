"""Pieces every ``ers`` sub-command that talks to a running server shares."""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console

from service.cli.client import ClientError, ERSClient
from service.settings import Settings

err = Console(stderr=True)


def call_server(method: str, path: str, timeout: float | None = None, **kwargs: Any) -> Any:
    """One request to the configured server; a client error is printed and exits with status 1."""
    settings = Settings()
    client = ERSClient(settings.url, settings.api_key, **({"timeout": timeout} if timeout is not None else {}))
    try:
        return client.request(method, path, **kwargs)
    except ClientError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    finally:
        client.close()
