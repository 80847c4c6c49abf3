"""API keys: with ERS_API_KEYS set every route needs ``Authorization: Bearer <key>`` (the docs and
the schema too, unless ERS_PUBLIC_DOCS), decided before the body is read; /healthz, /readyz (its
status only) and the console's static files stay open. Without keys ``ers serve`` binds only a host
whose every address is loopback."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from indexer.errors import DataDirLocked
from indexer.manager import CollectionManager
from indexer.store.sqlite import SqliteStore
from service.settings import loopback_refusal
from tests.service.conftest import MakeClient
from tests.service.server_proc import ServerProcess

KEY = "k-one"
AUTH = {"Authorization": f"Bearer {KEY}"}
DOCS = ("/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")


def assert_unauthorized(r: object, what: str) -> None:
    assert getattr(r, "status_code", None) == 401, what
    assert r.json() == {  # type: ignore[attr-defined]
        "error": {"code": "unauthorized", "message": "missing or invalid API key (Authorization: Bearer <key>)"}
    }, what
    assert r.headers["www-authenticate"] == "Bearer", what  # type: ignore[attr-defined]


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


def test_every_route_needs_a_key_the_docs_and_schema_included(make_client: MakeClient) -> None:
    client = make_client(api_keys=[KEY])
    for path in (*DOCS, "/metrics", "/v1/collections/c/thumbnails/a.png"):
        assert_unauthorized(client.get(path), path)
    # Every operation of the schema, each sent without a key and with a wrong one.
    schema = client.get("/openapi.json", headers=AUTH).json()
    operations = [(m, p) for p, item in schema["paths"].items() for m in item if p not in ("/healthz", "/readyz")]
    assert len(operations) >= 20
    for method, template in operations:
        path = re.sub(r"\{[^}]+\}", "x", template)
        assert_unauthorized(client.request(method, path), f"{method} {path}")
        wrong = client.request(method, path, headers={"Authorization": "Bearer k-on"})
        assert_unauthorized(wrong, f"{method} {path}, wrong key")
    # What stays open: the probes and the console's static files (no data in them).
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/ui/").status_code == 200 and client.get("/ui/main.js").status_code == 200
    for path in DOCS[:1] + DOCS[2:]:
        assert client.get(path, headers=AUTH).status_code == 200, path


def test_public_docs_opens_the_docs_and_nothing_else(make_client: MakeClient) -> None:
    client = make_client(api_keys=[KEY], public_docs=True)
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert client.get(path).status_code == 200, path
    assert client.get("/openapi.json").json()["paths"]["/v1/collections"]["get"]["security"] == [{"apiKey": []}]
    assert_unauthorized(client.get("/v1/collections"), "data stays closed")
    assert_unauthorized(client.get("/metrics"), "metrics stay closed")


def test_public_docs_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.settings import Settings

    assert Settings().public_docs is False
    monkeypatch.setenv("ERS_PUBLIC_DOCS", "true")
    assert Settings().public_docs is True


def test_readyz_shows_only_its_status_without_a_key(make_client: MakeClient) -> None:
    client = make_client(api_keys=[KEY])
    assert client.post("/v1/collections", json={"name": "c", "dim": 2}, headers=AUTH).status_code == 201
    # the issue: /readyz answered {"status": "ready", "collections": 1} to anyone
    assert client.get("/readyz").json() == {"status": "ready"}
    assert client.get("/readyz", headers={"Authorization": "Bearer nope"}).json() == {"status": "ready"}
    assert client.get("/readyz", headers=AUTH).json() == {"status": "ready", "collections": 1}


def test_readyz_shows_everything_when_no_keys_are_set(make_client: MakeClient) -> None:
    assert make_client().get("/readyz").json() == {"status": "ready", "collections": 0}


def test_auth_runs_before_the_body_is_parsed(make_client: MakeClient) -> None:
    """The issue: a declared body was validated before the key was checked, so a request without a
    key and with a bad body got 422 (and learnt how the body is validated), not 401."""
    client = make_client(api_keys=[KEY])
    bad_bodies = [
        ("POST", "/v1/collections", b'{"name": 5, "dim": "x"}'),
        ("POST", "/v1/collections", b"{not json"),
        ("POST", "/v1/embed", b'{"inputs": 3}'),
        ("PUT", "/v1/collections/c/items", b'{"items": "no"}'),
        ("POST", "/v1/collections/c/migrations", b"[]"),
    ]
    for method, path, body in bad_bodies:
        headers = {"Content-Type": "application/json"}
        assert_unauthorized(client.request(method, path, content=body, headers=headers), f"{method} {path}")
        with_key = client.request(method, path, content=body, headers=headers | AUTH)
        assert with_key.status_code in (404, 422), (method, path, with_key.text)  # the body is refused after


def read_response_head(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def test_a_live_server_refuses_a_keyless_request_without_waiting_for_its_body(tmp_path: Path) -> None:
    """Over a raw socket: headers announce a 1 MB body that never comes. 401 arrives at once (the
    body timeout is 30 s), so nothing waited for, or read, the body."""
    with ServerProcess(tmp_path / "data", {"ERS_API_KEYS": KEY, "ERS_BODY_TIMEOUT_S": 30}) as server:
        assert server.port is not None
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            started = time.monotonic()
            sock.sendall(
                b"PUT /v1/collections/c/items HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 1000000\r\n\r\n{"items": ['
            )
            head = read_response_head(sock, timeout=10)
            assert head.startswith(b"HTTP/1.1 401 "), head
            assert b"www-authenticate: Bearer" in head.lower().replace(b"bearer", b"Bearer")
            assert time.monotonic() - started < 5


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1"])
def test_loopback_hosts_may_be_bound_without_keys(host: str) -> None:
    assert loopback_refusal(host) is None


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("127.evil.example", "cannot resolve '127.evil.example'"),  # the issue: a string prefix let it pass
        ("0.0.0.0", "0.0.0.0 resolves to 0.0.0.0, which is not loopback"),
        ("10.1.2.3", "10.1.2.3 resolves to 10.1.2.3, which is not loopback"),
        ("::", ":: resolves to ::, which is not loopback"),
        ("", "an empty host binds every interface"),
    ],
)
def test_other_hosts_are_refused_without_keys(host: str, reason: str) -> None:
    refusal = loopback_refusal(host)
    assert refusal is not None and refusal.startswith(reason), refusal


def test_serve_resolves_the_host_it_is_given(tmp_path: Path) -> None:
    """The issue's repro: ``ERS_HOST=127.evil.example ers serve`` passed the prefix check."""
    ers = Path(sys.executable).parent / "ers"
    env = {"PATH": str(ers.parent), "HOME": str(tmp_path), "ERS_HOST": "127.evil.example"}
    r = subprocess.run(
        [str(ers), "serve", "--port", "1", "--data-dir", str(tmp_path / "d")],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    stderr = " ".join(r.stderr.split())
    assert r.returncode == 2, stderr
    assert "refusing to bind 127.evil.example" in stderr and "cannot resolve" in stderr and "ERS_API_KEYS" in stderr
    assert not (tmp_path / "d").exists()
