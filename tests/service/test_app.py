"""``service.app``: what the app does once at start-up."""

from __future__ import annotations

import gc
import subprocess
import sys

from tests.service.conftest import MakeClient


def test_start_up_freezes_the_heap_out_of_the_cyclic_gc(make_client: MakeClient) -> None:
    """``freeze_startup_heap``: what start-up leaves alive (imports, encoders, collections) is moved
    out of every full collection, which otherwise stalled each request 70-80 ms every few seconds."""
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    client = make_client()
    assert client.get("/healthz").status_code == 200
    assert gc.get_freeze_count() > 10_000


def test_the_server_starts_without_importing_torch() -> None:
    """torch is imported on first use (a bridged migration, a bridge or a job worker's encoder), never
    by ``ers serve`` itself: importing it added ~2 s to every start, and restarts (a kill -9, a rolling
    deploy, the crash test's 30 restarts) wait for it."""
    code = "import sys, service.app, service.cli.main; print(sorted(m for m in sys.modules if m.startswith('torch')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"imported at start: {out.strip()}"
