"""``service.app``: what the app does once at start-up."""

from __future__ import annotations

import gc

from tests.service.conftest import MakeClient


def test_start_up_freezes_the_heap_out_of_the_cyclic_gc(make_client: MakeClient) -> None:
    """``freeze_startup_heap``: what start-up leaves alive (imports, encoders, collections) is moved
    out of every full collection, which otherwise stalled each request 70-80 ms every few seconds."""
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    client = make_client()
    assert client.get("/healthz").status_code == 200
    assert gc.get_freeze_count() > 10_000
