"""API keys: Bearer tokens on every /v1 route and /metrics; health probes stay open."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from indexer.errors import DataDirLocked
from indexer.manager import CollectionManager
from indexer.store.sqlite import SqliteStore
from tests.service.conftest import MakeClient


def test_requests_without_a_valid_key_are_401(make_client: MakeClient) -> None:
    client = make_client(api_keys=["k-one", "k-two"])
    for headers in [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic k-one"},
        {"Authorization": "Bearer"},
    ]:
        r = client.get("/v1/collections", headers=headers)
        assert r.status_code == 401, headers
        assert r.json()["error"]["code"] == "unauthorized" and "Bearer" in r.json()["error"]["message"]
        assert r.headers["www-authenticate"] == "Bearer"
        assert client.post("/v1/collections", json={"name": "x", "dim": 2}, headers=headers).status_code == 401
        assert client.get("/metrics", headers=headers).status_code == 401
    for key in ("k-one", "k-two"):
        assert client.get("/v1/collections", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert client.get("/metrics", headers={"Authorization": "Bearer k-one"}).status_code == 200
    assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
    # nothing was created by the refused requests
    listing = client.get("/v1/collections", headers={"Authorization": "Bearer k-one"}).json()
    assert listing == {"collections": []}


def test_keys_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.settings import Settings

    monkeypatch.setenv("ERS_API_KEYS", " a1 ,b2,, ")
    monkeypatch.setenv("ERS_MAX_BATCH", "7")
    settings = Settings()
    assert settings.api_keys == ["a1", "b2"] and settings.max_batch == 7


def test_serve_refuses_public_bind_without_keys(tmp_path: Path) -> None:
    ers = Path(sys.executable).parent / "ers"
    env = {"PATH": str(ers.parent), "HOME": str(tmp_path)}
    r = subprocess.run(
        [str(ers), "serve", "--host", "0.0.0.0", "--port", "1", "--data-dir", str(tmp_path / "d")],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2
    assert "ERS_API_KEYS" in r.stderr and "refusing to bind 0.0.0.0" in " ".join(r.stderr.split())
    assert not (tmp_path / "d").exists()


def test_second_process_cannot_own_the_data_dir(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "meta.sqlite3")
    first = CollectionManager(tmp_path, store)
    script = (
        "import sys; from pathlib import Path; from indexer.manager import DataDirLock\n"
        "from indexer.errors import DataDirLocked\n"
        "try:\n    DataDirLock(Path(sys.argv[1]))\nexcept DataDirLocked as e:\n    print(e); sys.exit(3)\n"
    )
    r = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 3 and "owned by another ERS process" in r.stdout
    with pytest.raises(DataDirLocked):
        CollectionManager(tmp_path, store)  # same process, second owner: refused too
    first.close()
    CollectionManager(tmp_path, store).close()  # released on close
    store.close()
