"""Image collections over HTTP with the real effnet-lite0@1 zoo encoder: base64 and multipart
upsert and search, and every bad-image case answered with a clear 4xx that writes nothing."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

from tests.conftest import install_zoo_model
from tests.service.conftest import MakeClient

SHAPES = ["circle", "square", "triangle", "stripes", "cross"]
COLOURS = [(220, 30, 30), (30, 160, 40), (30, 60, 220), (240, 200, 20), (120, 40, 160)]


def picture(shape: str, colour: tuple[int, int, int], size: int = 160, fmt: str = "PNG") -> bytes:
    image = Image.new("RGB", (size, size), (250, 250, 245))
    draw = ImageDraw.Draw(image)
    s = size
    if shape == "circle":
        draw.ellipse((s * 0.2, s * 0.2, s * 0.8, s * 0.8), fill=colour)
    elif shape == "square":
        draw.rectangle((s * 0.25, s * 0.25, s * 0.75, s * 0.75), fill=colour)
    elif shape == "triangle":
        draw.polygon([(s * 0.5, s * 0.15), (s * 0.15, s * 0.85), (s * 0.85, s * 0.85)], fill=colour)
    elif shape == "stripes":
        for x in range(0, s, s // 8):
            draw.rectangle((x, 0, x + s // 16, s), fill=colour)
    else:
        draw.rectangle((s * 0.42, s * 0.1, s * 0.58, s * 0.9), fill=colour)
        draw.rectangle((s * 0.1, s * 0.42, s * 0.9, s * 0.58), fill=colour)
    out = io.BytesIO()
    image.save(out, format=fmt, quality=85)
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def images(make_client: MakeClient, tmp_path: Path, zoo_dirs: tuple[Path, Path]) -> TestClient:
    key = install_zoo_model("effnet-lite0", tmp_path / "data", zoo_dirs)
    client = make_client(max_image_pixels=1_000_000, max_body_bytes=2_000_000)
    assert client.post("/v1/collections", json={"name": "pics", "encoder": key}).status_code == 201
    items = [
        {"id": f"{shape}", "image": b64(picture(shape, colour)), "payload": {"shape": shape}}
        for shape, colour in zip(SHAPES, COLOURS, strict=True)
    ]
    assert client.put("/v1/collections/pics/items", json={"items": items}).json() == {"upserted": 5}
    return client


def test_image_search_by_base64_and_multipart(images: TestClient) -> None:
    info = images.get("/v1/collections/pics").json()
    assert info["dim"] == 1280 and info["count"] == 5
    for shape, colour in zip(SHAPES, COLOURS, strict=True):
        query = picture(shape, colour, size=200, fmt="JPEG")  # other size, other codec
        hits = images.post("/v1/collections/pics/search", json={"image": b64(query), "k": 2}).json()["results"]
        assert hits[0]["id"] == shape and hits[0]["encoder_version"] == "effnet-lite0@1"
        r = images.post("/v1/collections/pics/search", files={"file": ("q.jpg", query, "image/jpeg")}, data={"k": "1"})
        assert r.status_code == 200 and r.json()["results"][0]["id"] == shape
    flt = images.post(
        "/v1/collections/pics/search",
        files={"file": ("q.jpg", picture("circle", COLOURS[0]), "image/jpeg")},
        data={"k": "3", "filter": '{"shape": {"in": ["square", "cross"]}}'},
    ).json()["results"]
    assert {h["id"] for h in flt} == {"square", "cross"}


def test_multipart_upload_and_embed(images: TestClient) -> None:
    files = [("file", ("ring.png", picture("circle", (10, 10, 10)), "image/png")),
             ("file", ("bar.png", picture("stripes", (10, 10, 10)), "image/png"))]  # fmt: skip
    r = images.put("/v1/collections/pics/items", files=files, data={"payload": '{"set": "upload"}'})
    assert r.status_code == 200 and r.json() == {"upserted": 2}
    assert images.get("/v1/collections/pics/items/ring.png").json()["payload"] == {"set": "upload"}
    r = images.post("/v1/embed", json={"encoder": "effnet-lite0@1", "inputs": [b64(picture("cross", COLOURS[4]))]})
    vector = r.json()["vectors"][0]
    assert r.json()["dim"] == 1280 and abs(sum(v * v for v in vector) - 1) < 1e-4
    hits = images.post("/v1/collections/pics/search", json={"vector": vector, "k": 1}).json()["results"]
    assert hits[0]["id"] == "cross" and hits[0]["score"] > 0.999


def png_header(width: int, height: int) -> bytes:
    """A valid PNG header declaring a huge image (a decompression bomb never needs its pixels)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def ico() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(out, format="ICO")
    return out.getvalue()


@pytest.mark.parametrize(
    ("payload", "status", "message"),
    [
        (b"\xff\xd8\xff\xe0 this is not really a jpeg", 422, "could not be decoded"),
        (picture("circle", COLOURS[0])[:200], 422, "could not be decoded"),  # truncated
        (png_header(50_000, 50_000), 413, "the limit is 1000000"),
        (ico(), 422, "format ICO is not accepted"),
        (b"", 422, "empty"),
    ],
)
def test_bad_images_are_refused_and_nothing_is_written(
    images: TestClient, payload: bytes, status: int, message: str
) -> None:
    item = {"id": "bad", "image": b64(payload)}
    r = images.put(
        "/v1/collections/pics/items", json={"items": [{"id": "ok", "image": b64(picture("cross", COLOURS[1]))}, item]}
    )
    assert r.status_code == status and message in r.json()["error"]["message"], r.text
    r = images.post("/v1/collections/pics/search", json={"image": b64(payload)})
    assert r.status_code == status
    r = images.post("/v1/collections/pics/search", files={"file": ("x.bin", payload, "application/octet-stream")})
    assert r.status_code == status
    assert images.get("/v1/collections/pics").json()["count"] == 5


def test_other_bad_requests(images: TestClient) -> None:
    r = images.put("/v1/collections/pics/items", json={"items": [{"id": "x", "image": "not base64!!"}]})
    assert r.status_code == 422 and "not valid base64" in r.json()["error"]["message"]
    r = images.post("/v1/collections/pics/search", json={"text": "a red circle"})
    assert r.status_code == 422 and "takes image input, not text" in r.json()["error"]["message"]
    big = b"\0" * 2_100_000
    r = images.put("/v1/collections/pics/items", files={"file": ("big.png", big, "image/png")})
    assert r.status_code == 413 and "ERS_MAX_BODY_BYTES" in r.json()["error"]["message"]
    r = images.put("/v1/collections/pics/items", files={"other": ("a.png", b"x", "image/png")})
    assert r.status_code == 422 and "'file'" in r.json()["error"]["message"]
    assert images.get("/v1/collections/pics").json()["count"] == 5
