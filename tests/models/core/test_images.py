"""Image decoding: transparency on white, EXIF-free arrays, header-only checks."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from models.core.errors import InputTooLarge, InvalidEncoderInput
from models.core.images import check_image, decode_image


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def test_transparent_pixels_become_white_not_black() -> None:
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 0))  # fully transparent black
    image.putpixel((0, 0), (200, 10, 10, 255))
    rgb = decode_image(encoded(image))
    assert rgb.shape == (4, 4, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == (200, 10, 10) and tuple(rgb[3, 3]) == (255, 255, 255)
    palette = image.convert("P")
    palette.info["transparency"] = palette.getpixel((3, 3))
    assert tuple(decode_image(encoded(palette))[3, 3]) == (255, 255, 255)


def test_header_check_and_array_inputs() -> None:
    data = encoded(Image.new("RGB", (30, 20)), "JPEG")
    assert check_image(data, max_pixels=600) == ("JPEG", 30, 20)
    with pytest.raises(InputTooLarge, match="the limit is 599"):
        check_image(data, max_pixels=599)
    gray = np.zeros((5, 6), dtype=np.uint8)
    assert decode_image(gray).shape == (5, 6, 3)
    with pytest.raises(InvalidEncoderInput, match="uint8"):
        decode_image(gray.astype(np.float32))
    with pytest.raises(InvalidEncoderInput, match="not accepted"):
        check_image(encoded(Image.new("RGB", (8, 8)), "ICO"), 10_000)
