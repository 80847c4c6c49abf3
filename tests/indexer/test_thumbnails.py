"""The thumbnail store: small JPEGs made from real image bytes (transparent PNGs on white, EXIF-rotated
and large JPEGs), kept one file per item id, read back only when intact, dropped when an id's new
row has no image; and ``row_images`` picking each upserted row's image as the API receives it."""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image

from indexer.thumbnails import THUMBNAIL_SIZE, THUMBS_DIR, Thumbnail, Thumbnails, make_thumbnail

EXIF_ORIENTATION = 0x0112


def encoded(image: Image.Image, fmt: str, **save: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **save)
    return out.getvalue()


def decoded(jpeg: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(jpeg))
    assert image.format == "JPEG"
    return image.convert("RGB")


def rgb(image: Image.Image, x: int, y: int) -> tuple[int, int, int]:
    r, g, b = image.getpixel((x, y))  # type: ignore[misc]
    return int(r), int(g), int(b)


def transparent_disc(size: int = 64) -> bytes:
    """A red disc on a fully transparent background, like an emoji PNG."""
    image = Image.new("RGBA", (size, size), (0, 0, 0, 0))  # transparent *black*: dropping alpha would show black
    for y in range(size):
        for x in range(size):
            if (x - size / 2) ** 2 + (y - size / 2) ** 2 < (size / 3) ** 2:
                image.putpixel((x, y), (220, 20, 20, 255))
    return encoded(image, "PNG")


def test_a_transparent_png_becomes_a_jpeg_on_white_at_its_own_size() -> None:
    thumb = make_thumbnail(transparent_disc(64))
    assert thumb is not None
    image = decoded(thumb.jpeg)
    assert image.size == (64, 64)  # never enlarged
    assert (thumb.source_width, thumb.source_height) == (64, 64)
    corner, centre = rgb(image, 1, 1), rgb(image, 32, 32)
    assert min(corner) > 240, corner  # white, as the encoders see it
    assert centre[0] > 180 and centre[1] < 80 and centre[2] < 80, centre


def test_a_large_photo_is_shrunk_to_the_thumbnail_size_keeping_its_aspect() -> None:
    photo = Image.new("RGB", (3000, 2000), (30, 90, 200))
    thumb = make_thumbnail(encoded(photo, "JPEG", quality=90))
    assert thumb is not None
    assert decoded(thumb.jpeg).size == (THUMBNAIL_SIZE, round(THUMBNAIL_SIZE * 2000 / 3000))
    assert (thumb.source_width, thumb.source_height) == (3000, 2000)
    assert len(thumb.jpeg) < 8_000


def test_exif_orientation_is_applied_and_the_source_size_is_the_upright_one() -> None:
    # stored 400x200 with a left half red; orientation 6 = "rotate 90° clockwise to display"
    image = Image.new("RGB", (400, 200), (255, 255, 255))
    image.paste((255, 0, 0), (0, 0, 200, 200))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    thumb = make_thumbnail(encoded(image, "JPEG", exif=exif.tobytes(), quality=95))
    assert thumb is not None
    upright = decoded(thumb.jpeg)
    assert (thumb.source_width, thumb.source_height) == (200, 400)  # the box pixel space of a face payload
    assert upright.size == (80, 160)
    top, bottom = rgb(upright, 40, 20), rgb(upright, 40, 140)
    assert top[0] > 200 and top[1] < 60, top  # the red half is on top once rotated clockwise
    assert min(bottom) > 200, bottom


def test_bytes_that_are_not_an_accepted_image_give_no_thumbnail() -> None:
    assert make_thumbnail(b"definitely not an image") is None
    assert make_thumbnail(encoded(Image.new("RGB", (8, 8)), "PNG")[:30]) is None  # truncated
    assert make_thumbnail(encoded(Image.new("RGB", (8, 8)), "ICO")) is None  # not on the allow-list


def test_put_many_keeps_one_verified_file_per_id_and_none_drops_it(tmp_path: Path) -> None:
    thumbs = Thumbnails.of(tmp_path / "collection")
    disc, photo = transparent_disc(), encoded(Image.new("RGB", (600, 300), (10, 200, 10)), "JPEG")
    assert thumbs.put_many(["a", "b/c", "x#face0"], [disc, photo, photo]) == 3
    assert thumbs.directory == tmp_path / "collection" / THUMBS_DIR
    files = sorted(p for p in thumbs.directory.rglob("*") if p.is_file())
    assert len(files) == 3 and not [p for p in files if p.name.startswith(".")]  # no temp file left
    assert thumbs.path_of("b/c").parent.parent == thumbs.directory  # ids never become paths
    got = thumbs.get("b/c")
    assert got is not None and (got.source_width, got.source_height) == (600, 300)
    assert thumbs.get("x#face0") == got
    assert thumbs.get("never-written") is None

    # an id re-written from text (no image) or with bytes that are no image loses its old picture
    assert thumbs.put_many(["a", "b/c"], [None, b"garbage"]) == 0
    assert thumbs.get("a") is None and thumbs.get("b/c") is None
    assert thumbs.get("x#face0") is not None
    thumbs.delete(["x#face0", "unknown"])
    assert thumbs.get("x#face0") is None


def test_a_torn_or_foreign_file_reads_as_missing(tmp_path: Path) -> None:
    thumbs = Thumbnails(tmp_path / THUMBS_DIR)
    thumbs.put_many(["a", "b"], [transparent_disc(), transparent_disc(32)])
    path_a, path_b = thumbs.path_of("a"), thumbs.path_of("b")
    raw = path_a.read_bytes()
    path_a.write_bytes(raw[:-10])  # torn: the JPEG is shorter than its header says
    assert thumbs.get("a") is None
    path_b.write_bytes(raw)  # a's complete file under b's name: the header names another id
    assert thumbs.get("b") is None


def test_a_thumbnail_made_by_a_worker_is_written_by_the_server_as_it_was(tmp_path: Path) -> None:
    made = make_thumbnail(encoded(Image.new("RGB", (300, 200), (9, 9, 200)), "PNG"))
    assert made is not None
    shipped = Thumbnail.from_json(json.loads(json.dumps(made.to_json())))
    assert shipped == made
    assert Thumbnail.from_json(None) is None and Thumbnail.from_json(["x"]) is None
    thumbs = Thumbnails(tmp_path / THUMBS_DIR)
    thumbs.write_many(["a#face0", "a#face1"], [shipped, shipped])
    assert thumbs.get("a#face1") == made
