"""Safe image decoding shared by every image and face encoder.

An allow-list of formats, a pixel limit checked from the header before pixels are decoded
(decompression bombs), EXIF orientation honoured, and a clear error for corrupt bytes.
"""

from __future__ import annotations

import io
import struct
import warnings
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from models.core.errors import InputTooLarge, InvalidEncoderInput

ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"})
DEFAULT_MAX_PIXELS = 40_000_000


def _open_checked(data: bytes, max_pixels: int) -> Any:
    """Open ``data`` lazily (header only) and enforce the format allow-list and the pixel limit."""
    if not isinstance(data, bytes | bytearray) or not data:
        raise InvalidEncoderInput("image is empty or not bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image: Any = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputTooLarge(
            f"image rejected as a decompression bomb ({exc}); the limit is {max_pixels} pixels"
        ) from exc
    except UnidentifiedImageError as exc:  # PIL's text names the BytesIO's address: one input, many reasons
        raise InvalidEncoderInput(
            "image could not be decoded (corrupt or not an image): cannot identify image file"
        ) from exc
    except (OSError, SyntaxError, ValueError, TypeError, struct.error) as exc:
        raise InvalidEncoderInput(f"image could not be decoded (corrupt or not an image): {exc}") from exc
    if image.format not in ALLOWED_FORMATS:
        raise InvalidEncoderInput(
            f"image format {image.format or 'unknown'} is not accepted; use one of {sorted(ALLOWED_FORMATS)}"
        )
    width, height = image.size
    if width * height > max_pixels:
        raise InputTooLarge(f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
    return image


def check_image(data: bytes, max_pixels: int) -> tuple[str, int, int]:
    """Validate format and size from the header alone (cheap); returns (format, width, height)."""
    image = _open_checked(data, max_pixels)
    return str(image.format), image.size[0], image.size[1]


def decode_image(data: bytes | np.ndarray | Image.Image, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """RGB ``uint8`` array ``(H, W, 3)`` from encoded bytes (or pass an array/PIL image through)."""
    if isinstance(data, np.ndarray):
        return _as_rgb_array(data)
    if isinstance(data, Image.Image):
        return np.asarray(_to_rgb(ImageOps.exif_transpose(data)))
    image = _open_checked(data, max_pixels)
    try:
        image.load()
        return np.asarray(_to_rgb(ImageOps.exif_transpose(image)))
    except (OSError, SyntaxError, ValueError, TypeError, struct.error) as exc:
        # Pillow's decoders raise any of these on hostile bytes (a TIFF whose offset is a fraction
        # gives a TypeError, found by fuzzing): each is the input's fault, never the server's
        raise InvalidEncoderInput(f"image could not be decoded (corrupt or truncated): {exc}") from exc


def _to_rgb(image: Any) -> Any:
    """RGB with transparency composited onto white (dropping alpha turns transparent pixels into
    whatever colour they happen to store, often black: emoji recall@1 0.23 -> 0.41 on white)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _as_rgb_array(array: np.ndarray) -> np.ndarray:
    if array.dtype != np.uint8:
        raise InvalidEncoderInput("image arrays must be uint8")
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim == 3 and array.shape[2] in (3, 4):
        return np.ascontiguousarray(array[:, :, :3])
    raise InvalidEncoderInput(f"image array must be HxW or HxWx3, got shape {array.shape}")
