"""A collection's labelled evaluation set: the data the compatibility gate (``indexer.upgrade.gate``)
measures a new encoder on. It is stored in the metadata store (``PUT /v1/collections/{name}/eval-set``),
or sent with one migration for that gate only. Items of one label are relevant to each other, so at
least one label must occur twice for any query to have a match.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from indexer.errors import InvalidInput, LimitExceeded
from indexer.ingest import decode_base64_image
from indexer.segments import EVAL_NAMESPACE
from indexer.store.base import MetadataStore
from indexer.upgrade.errors import EvalSetNotFound

MAX_EVAL_ITEMS = 20_000


@dataclass
class EvalSet:
    inputs: list[Any]
    labels: list[Any]
    source: Literal["request", "collection"]


def check_eval_set(inputs: Sequence[Any], labels: Sequence[Any]) -> None:
    if len(inputs) != len(labels):
        raise InvalidInput(f"evaluation set: {len(inputs)} inputs but {len(labels)} labels")
    if len(inputs) < 2:
        raise InvalidInput("evaluation set: at least 2 labelled inputs are needed")
    if len(inputs) > MAX_EVAL_ITEMS:
        raise LimitExceeded(f"evaluation set: at most {MAX_EVAL_ITEMS} items")
    if max(Counter(json.dumps(y, sort_keys=True) for y in labels).values()) < 2:
        raise InvalidInput("evaluation set: no label occurs twice, so no query can have a match")


def put_eval_set(store: MetadataStore, name: str, inputs: list[Any], labels: list[Any]) -> dict[str, Any]:
    check_eval_set(inputs, labels)
    store.put_doc(EVAL_NAMESPACE, name, {"inputs": inputs, "labels": labels, "updated_at": time.time()})
    return describe_eval_set(store, name)


def describe_eval_set(store: MetadataStore, name: str) -> dict[str, Any]:
    doc = store.get_doc(EVAL_NAMESPACE, name)
    if doc is None:
        raise EvalSetNotFound(name)
    return {"size": len(doc["inputs"]), "labels": len(set(map(json.dumps, doc["labels"]))),
            "updated_at": doc.get("updated_at")}  # fmt: skip


def delete_eval_set(store: MetadataStore, name: str) -> None:
    store.delete_doc(EVAL_NAMESPACE, name)


def stored_eval_set(store: MetadataStore, name: str) -> EvalSet | None:
    doc = store.get_doc(EVAL_NAMESPACE, name)
    return EvalSet(doc["inputs"], doc["labels"], "collection") if doc is not None else None


def model_inputs(values: Sequence[Any], modality: str) -> list[Any]:
    """Eval inputs as the encoder takes them: text as is, images from base64."""
    if modality in ("image", "face"):
        return [decode_base64_image(str(v), f"evaluation input {i}") for i, v in enumerate(values)]
    return list(values)
