"""Image decoding under fuzzing: ``check_image`` (header only) and ``decode_image`` (pixels).

The invariant, for any bytes: either the image is accepted (an allowed format, a size within the
pixel limit, and pixels that decode to an ``(H, W, 3)`` uint8 array of that size, turned at most by
the EXIF orientation), or it is refused with ``InvalidEncoderInput`` (422) or ``InputTooLarge``
(413). Any other exception would reach the API as a 500, and a check that passes where decoding then
fails in an unexpected way is the same defect one step later. The header check and the decode must
also agree on what they refuse: an image that ``check_image`` refuses never decodes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from models.core.errors import InputTooLarge, InvalidEncoderInput
from models.core.images import ALLOWED_FORMATS, check_image, decode_image
from tests.fuzz.invariant import InvariantBroken

if TYPE_CHECKING:
    from tests.fuzz.api import FuzzApi

NAME = "images"
MAX_PIXELS = 1_000_000  # what the fuzzing app serves with (ERS_MAX_IMAGE_PIXELS): bombs are cut early
REFUSALS = (InvalidEncoderInput, InputTooLarge)


class ImageHarness:
    """Stateless: decoding needs no server, and nothing accumulates between inputs."""

    def one(self, data: bytes) -> None:
        try:
            fmt, width, height = check_image(data, MAX_PIXELS)
        except REFUSALS:
            _refused_too(data)
            return
        if fmt not in ALLOWED_FORMATS or width <= 0 or height <= 0 or width * height > MAX_PIXELS:
            raise InvariantBroken(f"check_image accepted {fmt} {width}x{height} (limit {MAX_PIXELS} pixels)")
        try:
            pixels = decode_image(data, MAX_PIXELS)
        except REFUSALS:
            return  # a valid header over corrupt or truncated pixels: refused at decode time
        _check_pixels(pixels, {(height, width), (width, height)})

    def check(self) -> None:
        """No state to restart."""


def _refused_too(data: bytes) -> None:
    try:
        pixels = decode_image(data, MAX_PIXELS)
    except REFUSALS:
        return
    raise InvariantBroken(f"check_image refused the bytes but decode_image returned {_describe(pixels)}")


def _check_pixels(pixels: Any, shapes: set[tuple[int, int]]) -> None:
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise InvariantBroken(f"decode_image returned {_describe(pixels)}, not an (H, W, 3) uint8 array")
    if pixels.shape[:2] not in shapes:
        raise InvariantBroken(f"decode_image returned {pixels.shape[:2]}; the header said one of {sorted(shapes)}")


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"an array {value.shape} {value.dtype}"
    return type(value).__name__


def make(api: FuzzApi | None = None) -> ImageHarness:
    return ImageHarness()


mutate = None  # libFuzzer's own byte mutations suit binary formats best
