"""The upgrade domain without HTTP: what ``Migrations`` loads, checks, gates, records and leaves
behind, on real collections, store, job runner and encoders (``conftest``). The same flows through
the API, on trained models: tests/service/test_migrations.py and test_backfill.py."""

from __future__ import annotations

import pytest

from indexer.errors import InvalidInput
from indexer.upgrade.errors import MigrationRefused
from indexer.upgrade.eval_set import EvalSet
from tests.indexer.upgrade.conftest import LABELS, OTHER, TEXTS, V1, V2, WIDTH, MakeUpgrades, embed


def test_spec_check_refuses_before_any_gate(make_upgrades: MakeUpgrades) -> None:
    up = make_upgrades()
    collection = up.gallery()
    with pytest.raises(MigrationRefused, match=f"{OTHER} is not compatible_with it") as refused:
        up.migrations.migrate(collection, OTHER, force=True)
    assert V1 in refused.value.message and "--compatible-with" in refused.value.message
    assert up.loaded == [OTHER]  # the old model is not loaded for a migration refused by spec
    with pytest.raises(InvalidInput, match="already serves"):
        up.migrations.migrate(collection, V1)
    assert collection.config.encoder == V1 and collection.state.history == []


def test_gate_measures_against_the_old_models_on_the_eval_set(make_upgrades: MakeUpgrades) -> None:
    up = make_upgrades()
    collection = up.gallery()
    # v2's first dims are v1's vectors: new/old equals old/old, and the criterion wants better
    with pytest.raises(MigrationRefused, match=f"compatibility gate failed for {V2} \\(vs {V1}: new/old top-1"):
        up.migrations.migrate(collection, V2, eval_set=EvalSet(TEXTS, LABELS, "request"))
    assert up.loaded == [V2, V1] and collection.config.encoder == V1

    up.migrations.put_eval_set(collection, TEXTS, LABELS)
    entry = up.migrations.migrate(collection, V2, force=True)
    report = entry["reports"][V1]
    assert (entry["gate"], entry["forced"], entry["eval_source"]) == ("forced", True, "collection")
    assert report["compat_dims"] == WIDTH and report["new_old"]["top1"] == report["old_old"]["top1"]
    assert (collection.config.encoder, collection.config.dim) == (V2, WIDTH + 8)
    assert entry["cancelled_backfills"] == [] and collection.state.history == [entry]


def test_without_data_the_card_report_is_the_gate(make_upgrades: MakeUpgrades) -> None:
    card = {"old": V1, "new": V2, "criterion_met": True, "new_old": {"top1": 0.9}, "old_old": {"top1": 0.8}}
    up = make_upgrades(card=card)
    collection = up.gallery()
    entry = up.migrations.migrate(collection, V2)
    assert (entry["gate"], entry["eval_source"], entry["reports"]) == ("passed", "card", {V1: card})
    assert up.loaded == [V2]  # no evaluation data: no old model to load


def test_without_data_or_card_only_force_migrates(make_upgrades: MakeUpgrades) -> None:
    up = make_upgrades()
    collection = up.gallery()
    with pytest.raises(MigrationRefused, match="no evaluation set to check"):
        up.migrations.migrate(collection, V2)
    entry = up.migrations.migrate(collection, V2, force=True)
    assert (entry["gate"], entry["eval_source"], entry["reports"]) == ("forced", "missing", {})


def test_a_refused_background_migration_leaves_no_job(make_upgrades: MakeUpgrades) -> None:
    up = make_upgrades()
    plain = up.gallery("plain")
    with pytest.raises(MigrationRefused, match="does not keep sources"):
        up.migrations.migrate(plain, V2, force=True, backfill="background")
    assert up.loaded == []  # refused before any model is loaded

    kept = up.gallery("kept", keep_sources=True)
    with pytest.raises(MigrationRefused, match="no evaluation set"):
        up.migrations.migrate(kept, V2, backfill="background")
    assert up.loaded == [V2] and up.store.list_jobs() == []  # the job stored before the gate is gone

    entry = up.migrations.migrate(kept, V2, force=True, backfill="background")
    job = up.runner.get(entry["backfill_job"])
    assert entry["backfill"] == "background" and job["source"] == {"type": "backfill", "to": V2}


def test_rollback_returns_to_the_previous_encoder(make_upgrades: MakeUpgrades) -> None:
    up = make_upgrades()
    collection = up.gallery()
    with pytest.raises(InvalidInput, match="no migration to roll back"):
        up.migrations.rollback(collection)
    up.migrations.migrate(collection, V2, force=True)
    new = up.migrations.get_encoder(V2)
    collection.upsert(["n0", "n1"], embed(new, TEXTS[:2]))  # written as v2: v1 queries cannot meet them
    entry = up.migrations.rollback(collection)
    assert (entry["kind"], entry["from"], entry["to"]) == ("rollback", V2, V1)
    assert entry["unsearchable"] == {V2: 2} and entry["cancelled_backfills"] == []
    assert (collection.config.encoder, collection.config.dim) == (V1, WIDTH)
    status = up.migrations.status(collection)
    assert [h["kind"] for h in status["history"]] == ["migrate", "rollback"]
    assert status["active"] == V1 and status["versions"] == {V1: len(TEXTS), V2: 2}
