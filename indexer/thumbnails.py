"""Thumbnails: a small JPEG of each image item, so the web console (``/ui``) can show a grid of results.

The source image of an item is not kept (unless the collection keeps sources), so the thumbnail is
made when the item is written, from the image bytes it was embedded from: ``make_thumbnail`` (pure
CPU, so a job's worker can make it and ship it with ``Thumbnail.to_json``) and
``Thumbnails.of(collection.directory).write_many(row ids, thumbnails)``, or both at once with
``put_many(row ids, images)``. None for a row drops a stale thumbnail of its id (its new vector came
from a text, a record or a client's vector). A face collection's rows ``{id}#face{n}`` each get their
whole source photo, so the console can draw every face box on it.

One file per item under ``<collection dir>/thumbs/<hh>/<sha256 of the id>``: a JSON header line (id,
the source image's width and height after EXIF orientation — the pixel space of a face payload's
``face.box`` — and the sha256 and length of the JPEG) followed by the JPEG. Only the id's hash names
a file (ids are client strings); the header's id and digest are checked on read, so a torn or foreign
file reads as missing. A batch is published at once by ``models.core.durable.publish_files`` (each
file replaced atomically, each touched directory synced once). Deleting the collection directory
deletes them all.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from indexer.errors import NotFoundError
from indexer.item_files import ItemFiles
from models.core.errors import ModelError
from models.core.images import DEFAULT_MAX_PIXELS, check_image

THUMBS_DIR = "thumbs"
THUMBNAIL_SIZE = 160  # longest side in pixels: sharp in the console's 150 px grid cells
JPEG_QUALITY = 82
ROTATED = {5, 6, 7, 8}  # EXIF orientations that swap width and height
EXIF_ORIENTATION = 0x0112


class ThumbnailNotFound(NotFoundError):
    code = "thumbnail_not_found"

    def __init__(self, collection: str, item_id: str) -> None:
        super().__init__(f"item '{item_id}' of collection '{collection}' has no thumbnail (it is not an image item, "
                         "or it was written before thumbnails were kept)")  # fmt: skip


@dataclass(frozen=True)
class Thumbnail:
    jpeg: bytes
    source_width: int  # the source image's size after EXIF orientation: face boxes are in these pixels
    source_height: int

    def to_json(self) -> list[Any]:
        """For a job's results stream: a worker makes the thumbnail, the server writes it."""
        return [base64.b64encode(self.jpeg).decode(), self.source_width, self.source_height]

    @classmethod
    def from_json(cls, doc: Any) -> Thumbnail | None:
        if not (isinstance(doc, list) and len(doc) == 3 and isinstance(doc[0], str)):
            return None
        return cls(base64.b64decode(doc[0]), int(doc[1]), int(doc[2]))


def _on_white(image: Any) -> Any:
    """RGB with transparency composited onto white, as the encoders see it (emoji PNGs are transparent)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def make_thumbnail(image: bytes, size: int = THUMBNAIL_SIZE, max_pixels: int = DEFAULT_MAX_PIXELS) -> Thumbnail | None:
    """A JPEG at most ``size`` pixels on its longest side; None when the bytes are not an accepted image
    (a thumbnail is never a reason to refuse an item the encoder took)."""
    try:
        check_image(image, max_pixels)  # format allow-list and pixel limit from the header
        with Image.open(io.BytesIO(image)) as opened:
            width, height = opened.size
            if opened.getexif().get(EXIF_ORIENTATION) in ROTATED:
                width, height = height, width
            opened.draft("RGB", (size, size))  # JPEG: decode at a reduced scale (a 12 MP photo in ~10 ms)
            picture = _on_white(ImageOps.exif_transpose(opened))
        picture.thumbnail((size, size), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        picture.save(out, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    except (ModelError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None
    return Thumbnail(out.getvalue(), width, height)


class Thumbnails(ItemFiles):
    @classmethod
    def of(cls, collection_dir: Path) -> Thumbnails:
        """The thumbnails of the collection whose directory is ``collection_dir`` (``Collection.directory``)."""
        return cls(collection_dir / THUMBS_DIR)

    def put_many(self, ids: Sequence[str], images: Sequence[bytes | None]) -> int:
        """Make and keep a thumbnail of ``images[i]`` for ``ids[i]``; None (or bytes that are not an image)
        drops the id's thumbnail. One image shared by several rows (a photo's faces) is decoded once.
        Returns how many thumbnails were written."""
        made: dict[bytes, Thumbnail | None] = {}
        thumbnails: list[Thumbnail | None] = []
        for image in images:
            if image is None:
                thumbnails.append(None)
                continue
            if image not in made:
                made[image] = make_thumbnail(image)
            thumbnails.append(made[image])
        self.write_many(ids, thumbnails)
        return sum(t is not None for t in thumbnails)

    def write_many(self, ids: Sequence[str], thumbnails: Sequence[Thumbnail | None]) -> None:
        """Keep ``thumbnails[i]`` (made elsewhere, e.g. by a job's worker) for ``ids[i]`` durably; None drops it."""
        if len(ids) != len(thumbnails):
            raise ValueError(f"{len(ids)} ids but {len(thumbnails)} thumbnails")
        self.write([
            (i, None, b"") if t is None else (i, {"width": t.source_width, "height": t.source_height}, t.jpeg)
            for i, t in zip(ids, thumbnails, strict=True)
        ])  # fmt: skip

    def delete(self, ids: Sequence[str]) -> None:
        self.write_many(ids, [None] * len(ids))

    def get(self, item_id: str) -> Thumbnail | None:
        """The thumbnail of ``item_id``; None when there is none (or its file is not intact)."""
        found = self.read(item_id)
        if found is None:
            return None
        header, jpeg = found
        if not isinstance(header.get("width"), int) or not isinstance(header.get("height"), int):
            return None
        return Thumbnail(jpeg, header["width"], header["height"])
