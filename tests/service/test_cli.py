"""The ``ers`` CLI against a real server on a loopback port."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from typer.testing import CliRunner

from service.app import create_app
from service.cli.main import app
from service.settings import Settings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server_url(tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    settings = Settings(data_dir=tmp_path / "data", api_keys=["secret"])
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield url
    server.should_exit = True
    thread.join(timeout=30)


def test_collections_and_search_commands(server_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ERS_URL", server_url)
    monkeypatch.setenv("ERS_API_KEY", "secret")
    runner = CliRunner()
    r = runner.invoke(app, ["collections", "create", "notes", "--dim", "3", "--metric", "l2"])
    assert r.exit_code == 0, r.output
    assert "created notes" in r.output
    items = [{"id": f"n{i}", "vector": [i, 0, 0], "payload": {"i": i}} for i in range(5)]
    httpx.put(f"{server_url}/v1/collections/notes/items", json={"items": items},
              headers={"Authorization": "Bearer secret"}).raise_for_status()  # fmt: skip

    r = runner.invoke(app, ["collections", "list"])
    assert r.exit_code == 0 and "notes" in r.output and "5" in r.output
    r = runner.invoke(app, ["collections", "show", "notes"])
    assert r.exit_code == 0 and json.loads(r.output)["count"] == 5
    r = runner.invoke(app, ["search", "notes", "--vector", "[3.1, 0, 0]", "--k", "2"])
    assert r.exit_code == 0, r.output
    assert r.output.index("n3") < r.output.index("n4")
    r = runner.invoke(app, ["search", "notes", "--id", "n0", "--k", "1", "--filter", '{"i": {"gte": 2}}'])
    assert r.exit_code == 0 and "n2" in r.output and "n1" not in r.output

    r = runner.invoke(app, ["search", "notes", "--vector", "[1, 2]"])
    assert r.exit_code == 1 and "HTTP 422" in r.output and "dimension 2" in r.output
    r = runner.invoke(app, ["search", "nope", "--vector", "[1, 2, 3]"])
    assert r.exit_code == 1 and "HTTP 404" in r.output
    r = runner.invoke(app, ["search", "notes", "--vector", "[1, 2"])
    assert r.exit_code == 2 and "not valid JSON" in r.output
    r = runner.invoke(app, ["collections", "delete", "notes", "--yes"])
    assert r.exit_code == 0
    r = runner.invoke(app, ["collections", "show", "notes"])
    assert r.exit_code == 1 and "HTTP 404" in r.output


def test_wrong_key_and_unreachable_server(server_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    monkeypatch.setenv("ERS_URL", server_url)
    monkeypatch.setenv("ERS_API_KEY", "wrong")
    r = runner.invoke(app, ["collections", "list"])
    assert r.exit_code == 1 and "HTTP 401" in r.output
    monkeypatch.setenv("ERS_URL", f"http://127.0.0.1:{_free_port()}")
    r = runner.invoke(app, ["collections", "list"])
    assert r.exit_code == 1 and "cannot reach ERS" in r.output and "HTTP" not in r.output  # no status: no answer


def test_train_refuses_a_teacher_without_bt2(tmp_path: Path) -> None:
    """``--teacher`` is BT²'s distillation source; with any other method (or none) it is an error, not ignored."""
    teacher = ["--teacher", str(tmp_path / "teacher")]
    for extra in ([], ["--compatible-with", str(tmp_path / "old"), "--method", "oca"]):
        result = CliRunner().invoke(app, ["train", "fmnist", "--config", "fmnist-tiny-new", "--out", str(tmp_path),
                                          *teacher, *extra])  # fmt: skip
        assert result.exit_code == 1 and "bt2 only" in result.output, result.output
