"""The one ingest path: raw items -> encoder inputs -> rows to write (ids, vectors, payloads, versions,
kept sources) and the items that failed, with why.

The REST upsert, the REST query and ``/v1/embed`` inputs, and every job runner (embedded, Redis
worker, backfill: all through ``indexer.jobs.encode``) go through here, so the same bad input gets
the same reason text everywhere and a face photo gives the same rows. Three steps, all pure (no I/O,
no threads, no service):

1. ``plan``: what can be checked before encoding. Each raw item's encoder input (``encoder_input``:
   the one modality check, UTF-8 / JSON / image-header checks; records become canonical JSON text),
   each given vector checked against its version's dimension. Items that do not fit fail here.
2. Encoding, by the caller. Jobs call ``encode_inputs`` (the encoder, synchronously); the server's
   encoder hub batches and caches, but finds failing inputs with the same ``preprocess_each`` and
   splits the output with the same ``split_output``. Either way: one ``Embedded`` per input (one
   vector, or one per detected face with its box and score, or the error that input raised alone).
3. ``rows_of``: faces expanded to ``{id}#face{n}`` with ``source_id`` and ``face`` (box, score) in the
   payload, NaN/Inf output and "no face found" as failures, kept sources for collections that keep
   them (faces keep none: one image gives several items).

What a failure means is the caller's: a job records it against the item and writes the rest; the
REST upsert is atomic, so it refuses the whole request with the first failure, named after its item
(``refusal``), except "no face found", which it reports under ``skipped``.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import numpy as np

from indexer.errors import InvalidInput
from indexer.kept_sources import KeptSource
from indexer.thumbnails import Thumbnail, make_thumbnail
from indexer.types import FloatArray
from indexer.validation import as_matrix, check_id, check_payload, check_version, load_json
from models.core.batching import Budget, forward_grouped
from models.core.encoder import Batch, Encoder
from models.core.errors import ERSError
from models.core.images import check_image

FACE_SEPARATOR = "#face"  # a face item's id: f"{source id}{FACE_SEPARATOR}{n}"
NO_FACE = "no face found"
NOT_FINITE = "the encoder produced NaN or Inf for this input"
# "path": a file's bytes (job sources), read as the encoder's modality; "image": image bytes (REST).
ItemKind = Literal["path", "text", "image", "vector", "record"]
_NOUNS = {"text": "text", "image": "images", "record": "records"}


@dataclass
class Item:
    """One source item. ``value`` is a path (until a job loads it), text, an image (bytes, or base64
    text from a REST body), vector list or record dict; a loaded path item holds the file's bytes.
    ``version``: the encoder version a given vector is of (None: the collection's)."""

    id: str
    kind: ItemKind
    value: Any
    payload: dict[str, Any] | None = None
    version: str | None = None


@dataclass
class Failure:
    """An item that cannot be written, and why; ``error``, when known, is what raised (its class
    gives the REST status)."""

    id: str
    reason: str
    error: Exception | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "reason": self.reason}


@dataclass
class Embedded:
    """What one encoder input gave: one row, or one per detected face (with ``faces[i]`` its box and
    score); ``error`` when this input alone failed preprocessing."""

    vectors: np.ndarray
    faces: list[dict[str, Any]] = field(default_factory=list)
    error: Exception | None = None


@dataclass(frozen=True)
class Destination:
    """Where items go: the collection, the encoder raw items are embedded with (None: vectors only)
    and its modality, the dimension of each version's vectors, and whether sources are kept."""

    collection: str
    encoder: str | None
    modality: str | None
    dim_of: Callable[[str | None], int]
    keep_sources: bool = False
    max_pixels: int = 40_000_000


@dataclass
class Plan:
    """Per item index: its encoder input, its checked vector, or its failure (exactly one)."""

    inputs: dict[int, Any] = field(default_factory=dict)
    vectors: dict[int, FloatArray] = field(default_factory=dict)
    failures: dict[int, Failure] = field(default_factory=dict)


@dataclass
class Rows:
    """Rows ready for ``Collection.upsert``, in item order; ``done`` counts the items written."""

    ids: list[str] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)
    payloads: list[dict[str, Any] | None] = field(default_factory=list)
    versions: list[str | None] = field(default_factory=list)
    sources: list[KeptSource | None] = field(default_factory=list)
    # per row, the small picture the web console shows (image and face rows; None for the others)
    thumbnails: list[Thumbnail | None] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    done: int = 0

    def matrix(self, dim: int) -> FloatArray:
        if not self.vectors:
            return np.zeros((0, dim), dtype=np.float32)
        return np.vstack(self.vectors).astype(np.float32)


def decode_base64_image(value: str, what: str) -> bytes:
    try:
        return _image_bytes(value)
    except InvalidInput as exc:
        raise labelled(exc, what) from exc


def _image_bytes(value: str | bytes) -> bytes:
    """Image bytes from bytes (an upload, a file) or base64 text (a data URL too)."""
    if not isinstance(value, str):
        return bytes(value)
    if value.startswith("data:") and "," in value:
        value = value.split(",", 1)[1]  # data URL
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput("image is not valid base64") from exc


def no_encoder(collection: str) -> str:
    return f"collection '{collection}' has no encoder: send vectors, or create it with an encoder"


def reason_of(exc: Exception) -> str:
    if isinstance(exc, ERSError):  # ItemError's reason is its message
        return exc.message
    return f"{type(exc).__name__}: {exc}"


def labelled(exc: ERSError, what: str) -> ERSError:
    """The same error (same class, so the same HTTP status) with its message naming what it is about."""
    out = copy.copy(exc)
    out.message = f"{what}: {exc.message}"
    out.args = (out.message,)
    return out


def refusal(failure: Failure) -> ERSError:
    """A failed item as the error that refuses a whole (atomic) request: ``item 'id': reason``."""
    what = f"item '{failure.id}'"
    if isinstance(failure.error, ERSError):
        return labelled(failure.error, what)
    return InvalidInput(f"{what}: {failure.reason}")


def canonical_record(record: Any) -> str:
    """Canonical JSON text: the record encoders parse it, the embedding cache keys on it, and it is
    the kept source."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"))


def encoder_input(kind: str, value: Any, modality: str, max_pixels: int, what: str | None = None) -> Any:
    """The encoder input for a raw value, checked against the encoder's modality (an image may come as
    base64 text); raises the same error, with the same reason, on every path (``what`` prefixes it:
    "query", "input 3")."""
    try:
        return _encoder_input(kind, value, modality, max_pixels)
    except ERSError as exc:
        if what is None:
            raise
        raise labelled(exc, what) from exc


def _encoder_input(kind: str, value: Any, modality: str, max_pixels: int) -> Any:
    if modality == "text":
        if kind == "path":
            try:
                return bytes(value).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidInput(f"file is not UTF-8 text: {exc.reason}") from exc
        if kind == "text":
            if not str(value).isascii():
                try:  # JSON can carry a lone surrogate ("\ud800"), which no tokenizer, cache key or log can hold
                    str(value).encode("utf-8")
                except UnicodeEncodeError as exc:
                    raise InvalidInput("text is not valid Unicode (a lone surrogate)") from exc
            return value
    elif modality in ("image", "face"):
        if kind in ("path", "image"):
            data = _image_bytes(value)  # base64 (REST JSON) is decoded here, once
            check_image(data, max_pixels)  # format allow-list and pixel limit before any decoding
            return data
    elif modality == "record":
        if kind == "path":
            try:
                return canonical_record(load_json(value, "file"))
            except InvalidInput as exc:  # the parser's own words, after the reason that matters here
                raise InvalidInput(f"file is not a JSON record: {exc.__cause__}") from exc
        if kind == "record":
            return canonical_record(value)
    raise InvalidInput(f"this collection's encoder takes {modality} input, not {_NOUNS.get(kind, kind)}")


def plan(items: Sequence[Item], dest: Destination) -> Plan:
    """Everything checked before encoding: ids, payloads (``indexer.validation``: nothing that cannot be
    logged gets further), given vectors, and each raw item's encoder input."""
    out = Plan()
    for n, item in enumerate(items):
        try:
            check_id(item.id)
            check_payload(item.payload)
            check_version(item.version)
            if item.kind == "vector":
                out.vectors[n] = _vector(item.value, dest.dim_of(item.version or dest.encoder))
            elif dest.modality is None:
                raise InvalidInput(no_encoder(dest.collection))
            else:
                out.inputs[n] = encoder_input(item.kind, item.value, dest.modality, dest.max_pixels)
        except ERSError as exc:
            out.failures[n] = Failure(item.id, reason_of(exc), exc)
    return out


def _vector(value: Any, dim: int) -> FloatArray:
    if isinstance(value, list | tuple) and len(value) != dim:  # an empty one too: its length is what is wrong
        raise InvalidInput(f"vector has dimension {len(value)}, collection expects {dim}")
    return as_matrix(value, dim)[0]


def preprocess_each(encoder: Encoder, inputs: Sequence[Any]) -> tuple[list[int], Batch | None, dict[int, Exception]]:
    """(inputs that made it, their preprocessed batch, the error of each that did not). The batch is
    preprocessed in one call; only if that raises is each input preprocessed alone to find the culprits."""
    try:
        return list(range(len(inputs))), encoder.preprocess(inputs), {}
    except Exception:  # find which input(s) broke the batch; each keeps its own error
        pass
    good: list[int] = []
    errors: dict[int, Exception] = {}
    for n, value in enumerate(inputs):
        try:
            encoder.preprocess([value])
            good.append(n)
        except Exception as exc:
            errors[n] = exc
    return good, encoder.preprocess([inputs[n] for n in good]) if good else None, errors


def split_output(vectors: np.ndarray, batch: Batch, n: int) -> list[Embedded]:
    """An encoder's postprocessed output for ``n`` inputs, per input. A face encoder's batch says which
    input each face came from (``_owner``), with its box (``_boxes``) and detector score (``_scores``)."""
    owners = batch.get("_owner")
    if owners is None:
        return [Embedded(vectors[i : i + 1]) for i in range(n)]
    boxes = batch.get("_boxes", np.zeros((len(owners), 4)))
    scores = batch.get("_scores", np.ones(len(owners)))
    out = []
    for i in range(n):
        rows = np.flatnonzero(owners == i)
        faces = [{"box": [round(float(v), 1) for v in boxes[r]], "score": float(scores[r])} for r in rows]
        out.append(Embedded(vectors[rows], faces))
    return out


def merge(n: int, good: list[int], embedded: list[Embedded], errors: Mapping[int, Exception]) -> list[Embedded]:
    """One ``Embedded`` per input again: the encoded ones (``good``, in order) and the failed ones."""
    out = [Embedded(np.zeros((0, 0), dtype=np.float32), error=errors[i]) if i in errors else None for i in range(n)]
    for i, result in zip(good, embedded, strict=True):
        out[i] = result
    assert all(e is not None for e in out)
    return [e for e in out if e is not None]


def encode_inputs(encoder: Encoder, inputs: Sequence[Any], threads: int | None = None) -> list[Embedded]:
    """Encode in length-sorted forwards under the default padding budget (the failing inputs left
    out), with ``threads`` intra-op threads each. A failing forward pass is no input's fault: it
    propagates (a job runner retries the batch)."""
    good, batch, errors = preprocess_each(encoder, inputs)
    embedded: list[Embedded] = []
    if good and batch is not None:
        raw = forward_grouped(partial(encoder.forward, threads=threads), batch, Budget())
        embedded = split_output(encoder.postprocess(raw, batch), batch, len(good))
    return merge(len(inputs), good, embedded, errors)


def rows_of(items: Sequence[Item], planned: Plan, embedded: Sequence[Embedded], dest: Destination) -> Rows:
    """The rows to write and the failures, in item order; ``embedded`` answers ``planned.inputs`` in order."""
    results = dict(zip(planned.inputs, embedded, strict=True))
    out = Rows()
    for n, item in enumerate(items):
        if n in planned.failures:
            out.failures.append(planned.failures[n])
        elif n in planned.vectors:
            _add(out, item.id, planned.vectors[n], item.payload, item.version or dest.encoder, None)
            out.done += 1
        else:
            _add_embedded(out, item, planned.inputs[n], results[n], dest)
    return out


def _add_embedded(out: Rows, item: Item, value: Any, result: Embedded, dest: Destination) -> None:
    if result.error is not None:
        out.failures.append(Failure(item.id, reason_of(result.error), result.error))
        return
    face = dest.modality == "face"
    if face and len(result.vectors) == 0:
        out.failures.append(Failure(item.id, NO_FACE))
        return
    if not np.isfinite(result.vectors).all():
        out.failures.append(Failure(item.id, NOT_FINITE, InvalidInput(NOT_FINITE)))
        return
    # one thumbnail per image, made here so a Redis worker ships it with the vectors; every face row
    # of a photo shares it (the console draws the row's box on the whole photo)
    thumb = make_thumbnail(bytes(value), max_pixels=dest.max_pixels) if dest.modality in ("image", "face") else None
    if not face:
        kept = _kept(dest.modality, value) if dest.keep_sources else None
        _add(out, item.id, result.vectors[0], item.payload, dest.encoder, kept, thumb)
    for n, (vector, box) in enumerate(zip(result.vectors, result.faces, strict=True) if face else ()):
        payload = {**(item.payload or {}), "source_id": item.id, "face": box}
        _add(out, f"{item.id}{FACE_SEPARATOR}{n}", vector, payload, dest.encoder, None, thumb)  # faces keep no source
    out.done += 1


def _add(
    out: Rows, item_id: str, vector: np.ndarray, payload: Any, version: str | None, kept: Any,
    thumb: Thumbnail | None = None,
) -> None:  # fmt: skip
    out.ids.append(item_id)
    out.vectors.append(np.asarray(vector, dtype=np.float32))
    out.payloads.append(payload)
    out.versions.append(version)
    out.sources.append(kept)
    out.thumbnails.append(thumb)


def _kept(modality: str | None, value: Any) -> KeptSource | None:
    """The kept source of an encoder input: ``KeptSource.value()`` gives back what the encoder took."""
    if modality == "text":
        return KeptSource("text", str(value).encode("utf-8"))
    if modality == "record":
        return KeptSource.record(str(value))
    if modality == "image":
        return KeptSource("image", bytes(value))
    return None


def ingest(items: Sequence[Item], encoder: Encoder | None, dest: Destination, threads: int | None = None) -> Rows:
    """The whole path in one synchronous call (job runners): plan, encode, rows."""
    planned = plan(items, dest)
    embedded: list[Embedded] = []
    if planned.inputs:
        assert encoder is not None, "a destination with a modality needs its encoder"
        embedded = encode_inputs(encoder, list(planned.inputs.values()), threads)
    return rows_of(items, planned, embedded, dest)
