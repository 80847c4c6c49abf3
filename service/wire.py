"""Request and response bodies on the wire: JSON, or msgpack with vectors as raw float32 bytes.

A body is JSON (``application/json``, or no ``Content-Type`` at all, as before msgpack existed) or
msgpack (``application/msgpack``; ``application/x-msgpack`` and ``application/vnd.msgpack`` too). A
msgpack body has the JSON body's fields; a vector may be a msgpack ``bin`` of little-endian float32
bytes, which is moved into the model's ``vector_b64`` slot as bytes (``service.schemas.VectorBytes``)
rather than copied into a list of floats. ``docs/api_formats.md`` is the client's side of this.

The answer is JSON unless ``Accept`` prefers msgpack; errors are always the JSON error envelope.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Literal, TypeVar

import msgpack
import numpy as np
import orjson
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from indexer.errors import InvalidInput
from indexer.types import FloatArray
from service.runtime.errors import ServiceError

Body = TypeVar("Body", bound=BaseModel)
Format = Literal["json", "msgpack", "multipart"]
JSON = "application/json"
MSGPACK = "application/msgpack"
MSGPACK_TYPES = frozenset({MSGPACK, "application/x-msgpack", "application/vnd.msgpack"})
FLOAT32 = np.dtype("<f4")


class UnsupportedMediaType(ServiceError):
    """The body's ``Content-Type`` is none the operation reads (415)."""

    code = "unsupported_media_type"


class MalformedBody(ServiceError):
    """The body cannot be read as its ``Content-Type`` says (400): broken msgpack, say."""

    code = "malformed_body"


# An ASGI scope key: a msgpack body an outer layer already unpacked (a reader's forwarding check reads
# its keys), so that ``read`` does not unpack it a second time.
UNPACKED = "ers.unpacked_body"


def media_format(content_type: str, multipart: bool = False) -> Format | None:
    """The body format a ``Content-Type`` value names (none at all reads as JSON); None: none read here."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type in ("", JSON) or (media_type.startswith("application/") and media_type.endswith("+json")):
        return "json"
    if media_type in MSGPACK_TYPES:
        return "msgpack"
    if multipart and media_type == "multipart/form-data":
        return "multipart"
    return None


def body_format(request: Request, multipart: bool = False) -> Format:
    """The format of the request's body from its ``Content-Type``; 415 for one not read here."""
    content_type = request.headers.get("content-type", "")
    fmt = media_format(content_type, multipart)
    if fmt is None:
        media_type = content_type.split(";", 1)[0].strip().lower()
        accepted = f"{JSON}, {MSGPACK} or multipart/form-data" if multipart else f"{JSON} or {MSGPACK}"
        raise UnsupportedMediaType(f"Content-Type {media_type!a} is not read here; send {accepted}")
    return fmt


async def read(request: Request, model: type[Body], fmt: Format, lists: str) -> Body:
    """The request's body as ``model`` (``parse``), reusing a msgpack value an outer layer unpacked."""
    raw = await request.body()
    return parse(model, raw, fmt, lists, request.scope.get(UNPACKED) if fmt == "msgpack" else None)


def parse(model: type[Body], raw: bytes, fmt: Format, lists: str, unpacked: Any = None) -> Body:
    """The body as ``model``. ``lists`` names the field holding the entries whose ``vector`` may be
    msgpack ``bin`` ("items", "queries"; "" for a body that is itself one query). ``unpacked``: the
    msgpack body already unpacked (None: unpack ``raw``)."""
    try:
        if fmt == "json":
            return model.model_validate_json(raw)
        doc = unpack(raw) if unpacked is None else unpacked
        return model.model_validate(_lift_binary_vectors(doc, lists), strict=True)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from exc


def unpack(raw: bytes) -> Any:
    """One msgpack value, the whole body; 400 when it is not that."""
    try:
        return msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException) as exc:  # trailing bytes, bad UTF-8, non-string keys too
        raise MalformedBody(f"the body is not one valid msgpack value: {exc or type(exc).__name__}") from exc


def _lift_binary_vectors(body: Any, lists: str) -> Any:
    """Move each entry's ``bin`` vector into ``vector_b64`` (as bytes), where the model takes it
    without a copy; anything else is left for the model's validation to judge."""
    if not isinstance(body, dict):
        return body
    entries = [body] if not lists else body.get(lists)
    if not isinstance(entries, list):
        return body
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict):
            continue
        where = f"{lists}[{n}]" if lists else "body"
        if isinstance(entry.get("vector_b64"), bytes):
            raise InvalidInput(
                f"{where}: vector_b64 must be base64 text; send raw float32 bytes as 'vector' (msgpack bin)"
            )
        if isinstance(entry.get("vector"), bytes):
            if entry.get("vector_b64") is not None:
                raise InvalidInput(f"{where}: give exactly one of 'vector' or 'vector_b64'")
            entry["vector_b64"] = entry.pop("vector")
    return body


def floats_of(value: str | bytes, what: str) -> FloatArray:
    """The float32 numbers of a ``vector_b64`` (base64 text) or msgpack ``bin`` (raw bytes), not
    copied; the caller checks the dimension and that every number is finite (``as_matrix``)."""
    if isinstance(value, str):
        try:
            value = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:  # ValueError: a non-ASCII character
            raise InvalidInput(f"{what}: vector_b64 is not valid base64 ({exc})") from exc
    if not value:
        raise InvalidInput(f"{what} is empty")
    if len(value) % FLOAT32.itemsize:
        raise InvalidInput(
            f"{what} is {len(value)} bytes, not a whole number of float32 values (4 bytes each, little-endian)"
        )
    return np.frombuffer(value, dtype=FLOAT32)


def wants_msgpack(request: Request) -> bool:
    """Whether ``Accept`` prefers msgpack to JSON (by q-value; the first named on a tie)."""
    accept = request.headers.get("accept")
    if not accept or "msgpack" not in accept:
        return False
    best: tuple[float, str] | None = None
    for part in accept.split(","):
        media_type, *params = (p.strip() for p in part.split(";"))
        kind = "msgpack" if media_type.lower() in MSGPACK_TYPES else "json" if media_type.lower() == JSON else None
        if kind is None:
            continue
        quality = next((_q(p[2:]) for p in params if p.lower().startswith("q=")), 1.0)
        if best is None or quality > best[0]:
            best = (quality, kind)
    return best is not None and best[1] == "msgpack" and best[0] > 0


def _q(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0


def respond(request: Request, body: dict[str, Any], status_code: int = 200) -> Response:
    """``body`` as msgpack when the client asked for it, else JSON (orjson; NumPy arrays as lists).
    NumPy vectors become ``bin`` float32 bytes in msgpack."""
    if wants_msgpack(request):
        return Response(msgpack.packb(body, default=_msgpack_default), status_code, media_type=MSGPACK)
    try:
        content = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    except orjson.JSONEncodeError:  # an integer over 64 bits in a payload logged before they were refused
        content = json.dumps(body, default=_json_default).encode()
    return Response(content, status_code, media_type=JSON)


def _msgpack_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return np.ascontiguousarray(value, dtype=FLOAT32).tobytes()
    raise TypeError(f"{type(value).__name__} cannot be sent as msgpack")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON")
