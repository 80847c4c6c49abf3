"""The REST side of a backward-compatible upgrade, the same for every encoder family (issue 14):
a v1 collection of real items, its cross-test figures through search, migration to v2 without
re-embedding, v2 queries on the v1 gallery, a mixed gallery, and a rollback to v1's exact results.
Each step is checked against the offline ``ers compat`` report of the same items."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from service.cli.main import app as cli_app


@dataclass
class EvalItems:
    field: str  # "image" (base64), "text" or "record": how the API takes an item
    values: list[Any]
    labels: list[Any]
    files: list[bytes] | None = None  # images: the raw bytes, written beside the JSONL for `ers compat`


def write_jsonl(items: EvalItems, where: Path, name: str) -> Path:
    """``items`` as ``ers compat`` reads them (images as files beside the JSONL)."""
    where.mkdir(parents=True, exist_ok=True)
    lines = []
    for n, (value, label) in enumerate(zip(items.values, items.labels, strict=True)):
        if items.field == "image":
            assert items.files is not None
            (where / f"{name}-{n}.png").write_bytes(items.files[n])
            value = f"{name}-{n}.png"
        lines.append(json.dumps({items.field: value, "label": label}))
    (where / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    return where / f"{name}.jsonl"


def offline_report(
    old: Path, new: Path, items: EvalItems, where: Path, queries: EvalItems | None = None
) -> dict[str, Any]:
    """``ers compat OLD NEW --data items.jsonl [--queries queries.jsonl] --json`` (exit 0: criterion
    met, 1: not met)."""
    args = ["compat", str(old), str(new), "--data", str(write_jsonl(items, where, "items")), "--json"]
    if queries is not None:
        args += ["--queries", str(write_jsonl(queries, where, "queries"))]
    result = CliRunner().invoke(cli_app, args)
    assert result.exit_code in (0, 1), result.output
    report: dict[str, Any] = json.loads(result.stdout)
    assert (result.exit_code == 0) == report["criterion_met"]
    return report


def source(hit: dict[str, Any]) -> str:
    """The id a client gave the item a hit belongs to (a face collection stores each face apart, as
    ``<id>#face<n>`` with the item's id in ``source_id``)."""
    return str(hit["payload"].get("source_id", hit["id"]))


def top1(client: TestClient, name: str, items: EvalItems, leave_out: bool = True) -> tuple[float, list[list[str]]]:
    """Top-1 through REST search (as the report scores it: query i is gallery item ``g<i>`` and is left
    out of its results, unless the queries are apart from the gallery), and every query's hit ids."""
    correct, ids = 0, []
    for start in range(0, len(items.values), 32):
        queries = [{items.field: v, "k": 6} for v in items.values[start : start + 32]]
        r = client.post(f"/v1/collections/{name}/search/batch", json={"queries": queries})
        assert r.status_code == 200, r.text
        for i, hits in enumerate(r.json()["results"], start):
            others = [h for h in hits if not leave_out or source(h) != f"g{i}"]
            correct += others[0]["payload"]["label"] == items.labels[i]
            ids.append([h["id"] for h in hits])
    return correct / len(items.values), ids


def upgrade_through_the_api(
    client: TestClient,
    v1: str,
    v2: str,
    items: EvalItems,
    extra: EvalItems,
    report: dict[str, Any],
    migrated: Callable[[TestClient], None] | None = None,
    queries: tuple[EvalItems, dict[str, Any]] | None = None,
) -> None:
    """The whole upgrade of collection ``c`` from ``v1`` to ``v2``; ``extra``: items written after it;
    ``migrated``: more checks of the migrated collection, before anything new is written. ``report``:
    ``ers compat`` of the items (what the migration's gate measures); ``queries``: queries of another
    kind and their ``ers compat --queries`` report, which the REST searches then follow instead of
    the items' (a record collection takes record queries with its query tower)."""
    searched, expected = queries if queries is not None else (items, report)
    leave_out = queries is None
    assert client.post("/v1/collections", json={"name": "c", "encoder": v1}).status_code == 201
    gallery = [{"id": f"g{i}", items.field: v, "payload": {"label": y}}
               for i, (v, y) in enumerate(zip(items.values, items.labels, strict=True))]  # fmt: skip
    assert client.put("/v1/collections/c/items", json={"items": gallery}).json()["upserted"] == len(gallery)
    old_old, before = top1(client, "c", searched, leave_out)
    assert old_old == pytest.approx(expected["old_old"]["top1"], abs=1e-9)  # REST = the offline report
    eval_set = {"inputs": items.values, "labels": items.labels}
    assert client.put("/v1/collections/c/eval-set", json=eval_set).status_code == 200

    gated = client.post("/v1/collections/c/migrations", json={"to": v2, "backfill": "none"})
    assert gated.status_code == (201 if report["criterion_met"] else 409), gated.text
    if not report["criterion_met"]:  # the gate refuses what the report says is not better; forced to go on
        gated = client.post("/v1/collections/c/migrations", json={"to": v2, "backfill": "none", "force": True})
        assert gated.status_code == 201, gated.text
    served = gated.json()["migration"]["reports"][v1]
    for test in ("old_old", "new_old", "new_new"):  # the gate measured what `ers compat` measures
        assert served[test]["top1"] == pytest.approx(report[test]["top1"], abs=1e-9), test

    new_old, _ = top1(client, "c", searched, leave_out)  # v2 queries against the v1 gallery, nothing re-embedded
    assert new_old == pytest.approx(expected["new_old"]["top1"], abs=1e-9)
    if migrated is not None:
        migrated(client)

    added = [{"id": f"n{i}", extra.field: v, "payload": {"label": y}}
             for i, (v, y) in enumerate(zip(extra.values, extra.labels, strict=True))]  # fmt: skip
    assert client.put("/v1/collections/c/items", json={"items": added}).json()["upserted"] == len(added)
    k = len(items.values) + len(added)
    probe = {extra.field: extra.values[0]} if leave_out else {searched.field: searched.values[0]}  # a query's kind
    answer = client.post("/v1/collections/c/search", json={**probe, "k": k})
    assert answer.status_code == 200, answer.text
    mixed = answer.json()["results"]
    if leave_out:  # a query of the items' own kind finds the item itself first
        assert source(mixed[0]) == "n0"
    assert {h["encoder_version"] for h in mixed} == {v1, v2}  # one ranking over both versions
    assert all((h["encoder_version"] == v2) == source(h).startswith("n") for h in mixed)  # new items are v2
    assert [h["score"] for h in mixed] == sorted((h["score"] for h in mixed), reverse=True)

    back = client.post("/v1/collections/c/migrations/rollback")
    assert back.status_code == 201 and back.json()["active"] == v1
    after, again = top1(client, "c", searched, leave_out)
    assert (after, again) == (old_old, before)  # v1's results exactly
