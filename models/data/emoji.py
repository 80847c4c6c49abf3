"""Emoji image–text pairs in two drawing styles, from the ``emoji-datasource`` npm packages.

``emoji-datasource-google`` 16.0.0 and ``emoji-datasource-twitter`` 16.0.0 each hold ``emoji.json``
(name, short names, category, subcategory, image file name, ``has_img_<style>`` flags; MIT, from
iamcal/emoji-data) and ``img/<style>/64/<image>`` PNGs, 64×64 RGBA. The images are Google's Noto
Emoji (Apache-2.0) and Twitter's Twemoji (CC-BY 4.0: credit "Twemoji by Twitter, Inc. and other
contributors" when showing them). Each concept drawn in both styles is one ``Emoji`` (1,911 in
16.0.0; skin-tone variations are left out): real image–text pairs, and ~1.9k "identities" with
one image per style for cross-style retrieval (index one style, query with the other).

The tarballs are fetched with ``npm pack`` into ``cache_dir`` (sha256-pinned, see ``Fetcher``) and
read in one sequential pass each: no extraction of thousands of small files.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from models.core.errors import ZooError
from models.core.fetch import Fetcher, Package

VERSION = "16.0.0"
GOOGLE = Package(
    "npm", "emoji-datasource-google", VERSION, f"emoji-datasource-google-{VERSION}.tgz",
    "fb5fd131b362aab7a55542d2a147a79708cce0a8b1c1bbacd470172708b5c438",
)  # fmt: skip
TWITTER = Package(
    "npm", "emoji-datasource-twitter", VERSION, f"emoji-datasource-twitter-{VERSION}.tgz",
    "f64a530c63bca463bd8317fdc4615ce63a53a0c65018e4ce2d848aaba7a28877",
)  # fmt: skip
STYLES = {"google": GOOGLE, "twitter": TWITTER}
LICENSES = {
    "metadata": "MIT (emoji.json, iamcal/emoji-data)",
    "google": "Apache-2.0 (Noto Emoji images)",
    "twitter": "CC-BY-4.0 (Twemoji graphics by Twitter, Inc. and other contributors)",
}
METADATA_MEMBER = "package/emoji.json"
IMAGE_SIZE = 64


@dataclass(frozen=True)
class Emoji:
    code: str  # the unified code points, e.g. "1F60E" or "1F1EF-1F1F5": a stable id
    name: str  # the Unicode name as emoji.json gives it, e.g. "SMILING FACE WITH SUNGLASSES"
    short_names: tuple[str, ...]
    category: str  # e.g. "Smileys & Emotion"
    subcategory: str  # e.g. "face-smiling"
    google_png: bytes = field(repr=False)
    twitter_png: bytes = field(repr=False)

    @property
    def text(self) -> str:
        """The name in lower case ("smiling face with sunglasses"), for text encoders and display."""
        return self.name.lower()

    def png(self, style: str) -> bytes:
        if style not in STYLES:
            raise ValueError(f"unknown emoji style '{style}'; known: {sorted(STYLES)}")
        return self.google_png if style == "google" else self.twitter_png


def _read_members(tarball: Path, wanted: set[str]) -> dict[str, bytes]:
    """The bytes of every ``wanted`` member, in one sequential pass over the (gzipped) tarball."""
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(tarball, "r:gz") as tf:
            for member in tf:
                if member.isfile() and member.name in wanted:
                    fileobj = tf.extractfile(member)
                    if fileobj is not None:
                        with fileobj:
                            found[member.name] = fileobj.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ZooError(f"{tarball.name}: cannot read the tarball: {exc}") from exc
    return found


def _select(entries: list[dict[str, Any]], limit: int | None) -> list[dict[str, Any]]:
    """``limit`` entries spread evenly over the sort order, so a small sample still covers every category."""
    if limit is None or limit >= len(entries):
        return entries
    if limit <= 0:
        return []
    step = len(entries) / limit
    return [entries[int(i * step)] for i in range(limit)]


def load_emoji(cache_dir: Path, limit: int | None = None, fetcher: Fetcher | None = None) -> list[Emoji]:
    """Every emoji drawn in both the Google and the Twitter style, in emoji.json's sort order.

    ``limit`` keeps that many, evenly spaced over the sort order (all categories stay represented).
    Downloads the two npm tarballs (~136 MB) into ``cache_dir`` once; ZooError names what is
    missing (npm itself, a registry failure, a sha256 mismatch, a member missing from a tarball).
    """
    fetcher = fetcher or Fetcher(cache_dir)
    tarballs = {style: fetcher.fetch(package) for style, package in STYLES.items()}
    raw = _read_members(tarballs["google"], {METADATA_MEMBER}).get(METADATA_MEMBER)
    if raw is None:
        raise ZooError(f"{GOOGLE.filename}: {METADATA_MEMBER} is missing")
    try:
        metadata: list[dict[str, Any]] = json.loads(raw)
        both = [e for e in metadata if all(e.get(f"has_img_{style}") for style in STYLES)]
        both.sort(key=lambda e: (int(e.get("sort_order", 0)), str(e["unified"])))
        chosen = _select(both, limit)
        paths = {style: {f"package/img/{style}/{IMAGE_SIZE}/{e['image']}" for e in chosen} for style in STYLES}
    except (ValueError, KeyError, TypeError) as exc:
        raise ZooError(f"{GOOGLE.filename}: {METADATA_MEMBER} is not the expected emoji-data format: {exc!r}") from exc
    images = {style: _read_members(tarballs[style], paths[style]) for style in STYLES}
    for style in STYLES:
        missing = paths[style] - images[style].keys()
        if missing:
            raise ZooError(f"{STYLES[style].filename}: {len(missing)} images flagged present are missing, "
                           f"e.g. {sorted(missing)[:3]}")  # fmt: skip
    out = []
    for e in chosen:
        png = {style: images[style][f"package/img/{style}/{IMAGE_SIZE}/{e['image']}"] for style in STYLES}
        out.append(
            Emoji(
                code=str(e["unified"]),
                name=str(e.get("name") or e.get("short_name") or e["unified"]),
                short_names=tuple(str(s) for s in e.get("short_names") or ()),
                category=str(e.get("category") or ""),
                subcategory=str(e.get("subcategory") or ""),
                google_png=png["google"],
                twitter_png=png["twitter"],
            )
        )
    return out


def flatten_png(data: bytes, background: tuple[int, int, int] = (255, 255, 255)) -> bytes:
    """The image composited onto an opaque ``background``, as PNG bytes.

    Emoji PNGs are transparent around the drawing; a decoder that converts RGBA to RGB by dropping
    alpha exposes whatever colour the transparent pixels store, which differs between the two styles
    (EfficientNet-Lite0 cross-style recall@1 on all 1,911: 0.23 with alpha dropped, 0.41 on white).
    """
    with Image.open(io.BytesIO(data)) as image:
        rgba = image.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (*background, 255))
    canvas.alpha_composite(rgba)
    out = io.BytesIO()
    canvas.convert("RGB").save(out, format="PNG")
    return out.getvalue()
