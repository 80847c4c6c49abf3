"""The console's routes in-process: the static files (public, a fixed list, a CSP that allows only
the server itself) and ``GET /v1/collections/{name}/thumbnails/{id}`` (key required; 404 for an
unknown item, an item without a thumbnail, or one deleted since; the source size in headers; ETag)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from indexer.thumbnails import Thumbnails
from service.app import create_app
from service.settings import Settings

KEY = "s3cret-console-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(data_dir=tmp_path / "data", api_keys=[KEY]))) as c:
        yield c


def jpeg_photo(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 40)).save(out, format="JPEG")
    return out.getvalue()


def test_the_console_is_served_without_a_key_and_only_its_own_files(client: TestClient) -> None:
    assert client.get("/ui", follow_redirects=False).headers["location"] == "/ui/"
    page = client.get("/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="main.js">' in page.text
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert page.headers["referrer-policy"] == "no-referrer"
    for name, kind in (("main.js", "text/javascript"), ("app.css", "text/css"), ("favicon.svg", "image/svg+xml")):
        r = client.get(f"/ui/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind), name
    for path in ("/ui/%2e%2e/app.py", "/ui/%2e%2e/routes/ui.py", "/ui/nope.js", "/ui/index.html/x", "/ui/.hidden"):
        r = client.get(path)
        assert r.status_code == 404 and "import" not in r.text, path  # only the console's own files
    assert client.get("/v1/collections").status_code == 401  # the data is not public


def test_no_file_of_the_console_loads_anything_from_elsewhere() -> None:
    ui = Path(__file__).resolve().parents[2] / "service" / "ui"
    for path in ui.rglob("*"):
        if path.suffix in (".html", ".js", ".css"):
            text = path.read_text()
            assert "http://" not in text and "https://" not in text and "//cdn" not in text, path


def test_thumbnails_need_a_key_and_exist_only_for_live_items(client: TestClient, tmp_path: Path) -> None:
    client.post("/v1/collections", json={"name": "pics", "dim": 2}, headers=AUTH).raise_for_status()
    ids = ["plain", "dir/with/slashes.png", "photo#face0", "no-picture"]
    items = [{"id": i, "vector": [1.0, float(n)]} for n, i in enumerate(ids)]
    client.put("/v1/collections/pics/items", json={"items": items}, headers=AUTH).raise_for_status()
    thumbs = Thumbnails.of(client.app.state.manager.get("pics").directory)  # type: ignore[attr-defined]
    assert thumbs.directory == tmp_path / "data" / "collections" / "pics" / "thumbs"
    thumbs.put_many(ids[:3], [jpeg_photo(640, 480)] * 3)

    url = "/v1/collections/pics/thumbnails/{}"
    assert client.get(url.format("plain")).status_code == 401
    for item_id in ids[:3]:
        r = client.get(url.format(quote(item_id, safe="")), headers=AUTH)
        assert r.status_code == 200, (item_id, r.text)
        assert r.headers["content-type"] == "image/jpeg"
        assert (r.headers["x-source-width"], r.headers["x-source-height"]) == ("640", "480")
        assert Image.open(io.BytesIO(r.content)).size == (160, 120)
    etag = client.get(url.format("plain"), headers=AUTH).headers["etag"]
    again = client.get(url.format("plain"), headers={**AUTH, "If-None-Match": etag})
    assert again.status_code == 304 and not again.content

    missing = client.get(url.format("no-picture"), headers=AUTH)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "thumbnail_not_found"
    assert client.get(url.format("unknown"), headers=AUTH).json()["error"]["code"] == "item_not_found"
    assert client.get("/v1/collections/nope/thumbnails/plain", headers=AUTH).status_code == 404
    client.delete("/v1/collections/pics/items/plain", headers=AUTH).raise_for_status()
    assert client.get(url.format("plain"), headers=AUTH).status_code == 404  # its file may linger: never served
