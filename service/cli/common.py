"""Pieces every ``ers`` sub-command that talks to a running server shares."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape

from service.client import ERSClient, ERSClientError
from service.client.types import Answer
from service.settings import Settings

console = Console()
err = Console(stderr=True)


@contextmanager
def server() -> Iterator[ERSClient]:
    """A client of the configured server (``ERS_URL``, ``ERS_API_KEY``); an error it raises is
    printed as ``error: HTTP <status>: <message>`` and exits with status 1."""
    settings = Settings()
    client = ERSClient(settings.url, settings.api_key)
    try:
        yield client
    except ERSClientError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")  # a message may hold [brackets]
        raise typer.Exit(1) from exc
    finally:
        client.close()


def show(fetch: Callable[[ERSClient], Answer]) -> None:
    """What ``fetch`` gets from the server, printed as the server sent it, as indented JSON."""
    with server() as ers:
        answer = fetch(ers)
    console.print_json(json.dumps(answer.to_json()))
