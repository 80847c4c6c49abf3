"""``ers index`` (server path, upload, --detach) and ``ers jobs list|show|cancel`` against a real
uvicorn server on a thread."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from typer.testing import CliRunner

from service.app import create_app
from service.cli.main import app
from service.settings import Settings
from tests.service.server_proc import free_port
from tests.service.test_jobs_support import TEXT, build_text, text_tree


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The server's allowed root; ERS_URL points the CLI at the server."""
    import torch

    torch.set_num_threads(1)
    roots = tmp_path / "sources"
    roots.mkdir()
    build_text(tmp_path / "data" / "models")
    settings = Settings(data_dir=tmp_path / "data", allowed_roots=[roots], job_batch=4)
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    monkeypatch.setenv("ERS_URL", f"http://127.0.0.1:{port}")
    runner = CliRunner()
    assert runner.invoke(app, ["collections", "create", "docs", "--dim", "16", "--encoder", TEXT]).exit_code == 0
    yield roots
    uv.should_exit = True
    thread.join(timeout=30)


def test_index_shows_progress_and_a_summary_with_failures(server: Path) -> None:
    _, bad = text_tree(server / "texts", good=9)
    runner = CliRunner()
    r = runner.invoke(app, ["index", str(server / "texts"), "--collection", "docs"])
    assert r.exit_code == 0, r.output
    assert f"succeeded: 9 indexed, {len(bad)} failed of {9 + len(bad)}" in r.output
    assert "bad/long.txt" in r.output and "limit" in r.output  # the failures table
    r = runner.invoke(app, ["index", str(server / "texts"), "--collection", "docs", "--detach"])
    job_id = r.output.strip()
    assert r.exit_code == 0 and len(job_id) == 32
    r = runner.invoke(app, ["jobs", "list"])
    assert r.exit_code == 0 and job_id in r.output
    r = runner.invoke(app, ["jobs", "show", job_id])
    assert r.exit_code == 0 and json.loads(r.output)["id"] == job_id
    r = runner.invoke(app, ["jobs", "cancel", "nope"])
    assert r.exit_code == 1 and "HTTP 404" in r.output
    r = runner.invoke(app, ["index", "/etc", "--collection", "docs"])
    assert r.exit_code == 1 and "HTTP 403" in r.output


def test_index_uploads_local_files(server: Path, tmp_path: Path) -> None:
    local = tmp_path / "local"
    (local / "sub").mkdir(parents=True)
    (local / "sub" / "a.txt").write_text("alpha text")
    (local / "b.txt").write_text("beta text")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        json.dumps({"id": "m1", "path": "local/sub/a.txt"}) + "\n" + json.dumps({"id": "m2", "text": "x"})
    )
    runner = CliRunner()
    r = runner.invoke(app, ["index", str(local), "--collection", "docs", "--upload"])
    assert r.exit_code == 0 and "succeeded: 2 indexed, 0 failed of 2" in r.output, r.output
    r = runner.invoke(app, ["index", str(manifest), "--collection", "docs", "--upload"])
    assert r.exit_code == 0 and "succeeded: 2 indexed, 0 failed of 2" in r.output, r.output
    r = runner.invoke(app, ["collections", "show", "docs"])
    assert json.loads(r.output)["count"] == 4
