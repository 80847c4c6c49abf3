"""The web console in a real browser (Debian's chromium, headless) against a real ``ers serve`` with
real encoders, checking what a user sees: the key prompt on a 401 and the key never in a URL, the
collections page, a text query finding the expected emoji, thumbnails and an uploaded image finding
its twin, "more like this", a filter narrowing the results, face boxes and face verification, an
upload job reaching 100%, and a migration refused by the gate, forced, and rolled back, each after a
confirmation."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from models.data.emoji import flatten_png
from tests.ui.conftest import KEY, NEW, OLD, PICTURES_ENCODER, Console, Traffic, sign_in

# text queries searched through the two-branch model's text tower
PICTURE_QUERIES = ("ghost", "polar bear", "alarm clock")


def result_ids(page: Any) -> list[str]:
    return [str(i) for i in page.locator(".results-grid .result").evaluate_all("els => els.map(e => e.dataset.id)")]


def search_text(page: Any, text: str) -> None:
    page.fill(".query-text", text)
    page.keyboard.press("Enter")
    page.locator(".results-head h2", has_text=text).wait_for()
    page.locator(".results-grid:not(.busy)").wait_for()


def test_a_401_brings_up_the_key_prompt_and_the_key_stays_in_the_tab(
    page: Any, console: Console, traffic: Traffic
) -> None:
    page.goto(f"{console.url}/ui/#/collections")
    prompt = page.locator("#key-dialog[open]")
    prompt.wait_for()  # the first API call was answered 401
    page.fill("#key-input", "wrong-key")
    page.locator("#key-form button[type=submit]").click()
    page.locator("#key-message", has_text="refused").wait_for()  # asked again, and told why
    page.fill("#key-input", KEY)
    page.locator("#key-form button[type=submit]").click()
    page.locator(".card.collection[data-collection=emoji-names]").wait_for()
    assert not prompt.is_visible()
    assert page.evaluate("sessionStorage.getItem('ers.apiKey')") == KEY
    assert page.evaluate("JSON.stringify(localStorage) + document.cookie").find(KEY) == -1

    # a key the server stops accepting (here: another one in the tab) brings the prompt back
    page.evaluate("sessionStorage.setItem('ers.apiKey', 'revoked-key')")
    page.locator(".tabs a[data-page=jobs]").click()
    prompt.wait_for()
    page.fill("#key-input", KEY)
    page.locator("#key-form button[type=submit]").click()
    page.locator(".upload").wait_for()
    page.locator(".key-status button", has_text="Forget key").click()
    assert page.evaluate("sessionStorage.getItem('ers.apiKey')") is None
    prompt.wait_for()

    assert traffic.urls and all(KEY not in u and "wrong-key" not in u and "revoked" not in u for u in traffic.urls)
    sent = [a for a in traffic.api_auth if a is not None]
    assert f"Bearer {KEY}" in sent and "Bearer wrong-key" in sent  # keys travel in the header only


def test_collections_show_their_state_and_one_is_created_then_deleted(page: Any, console: Console) -> None:
    sign_in(page, console, "/collections")
    card = page.locator(".card.collection[data-collection=emoji-names]")
    assert card.locator("[data-stat=count] dd").inner_text().startswith(f"{len(console.names):,}")
    assert card.locator("[data-stat=dim] dd").inner_text() == "384"
    assert card.locator("[data-stat=metric] dd").inner_text() == "cosine"
    assert card.locator("[data-stat=encoder] dd").inner_text() == "minilm-l6@1"
    assert "Flat" in card.locator("[data-stat=index] dd").inner_text()
    segment = card.locator(".segments tr[data-version='minilm-l6@1']")
    assert segment.locator("td").nth(1).inner_text() == f"{len(console.names):,}"

    page.get_by_role("button", name="New collection").click()
    page.fill("input[name=name]", "scratch")
    page.fill("input[name=dim]", "8")
    page.get_by_role("button", name="Create").click()
    scratch = page.locator(".card.collection[data-collection=scratch]")
    scratch.wait_for()
    assert console.api.get("/v1/collections/scratch").json()["dim"] == 8

    scratch.get_by_role("button", name="Delete").click()
    page.locator("dialog.confirm[open]", has_text="scratch").get_by_role("button", name="Cancel").click()
    assert console.api.get("/v1/collections/scratch").status_code == 200  # cancelled: still there
    scratch.get_by_role("button", name="Delete").click()
    page.locator("dialog.confirm[open]").get_by_role("button", name="Delete collection").click()
    scratch.wait_for(state="detached")
    assert console.api.get("/v1/collections/scratch").status_code == 404


def test_a_text_query_shows_the_expected_emoji(page: Any, console: Console) -> None:
    sign_in(page, console, "/search/emoji-names")
    page.locator(".results-grid .result").first.wait_for()  # a sample of the collection
    search_text(page, "a cup of hot coffee")
    coffee = console.emojis["hot beverage"]  # ☕'s Unicode name: the words differ, the meaning matches
    assert result_ids(page)[0] == coffee.code
    card = page.locator(f".result[data-id='{coffee.code}']")
    assert card.locator(".result-title").inner_text() == "1. hot beverage"
    assert card.locator(".pill.version").inner_text() == "minilm-l6@1"
    assert re.fullmatch(r"0\.\d{4}", card.locator(".score").inner_text())
    assert "Food & Drink" in card.locator(".kv[data-field=category]").inner_text()
    search_text(page, "rocket to space")
    assert result_ids(page)[0] == console.emojis["rocket"].code


def test_a_text_query_shows_thumbnails_of_the_expected_emoji(page: Any, console: Console) -> None:
    """Text -> image through the two-branch model's text tower: the console shows, in order, what the
    REST search returns for the same text; the pictures are the thumbnails the upsert kept.

    (Which emoji the tiny model ranks first depends on the installed numeric libraries: ranking
    quality is measured in tests/models/training/test_two_branch.py, not here.)"""
    sign_in(page, console, "/search/emoji-pictures")
    page.locator(".results-grid .result").first.wait_for()
    for query in PICTURE_QUERIES:
        search_text(page, query)
        shown = result_ids(page)
        r = console.api.post("/v1/collections/emoji-pictures/search", json={"text": query, "k": len(shown)})
        assert r.status_code == 200, r.text
        assert shown == [str(hit["id"]) for hit in r.json()["results"]], query
        card = page.locator(f".result[data-id='{shown[0]}']")
        thumb = card.locator("img.thumb[data-loaded=true]")
        thumb.wait_for()  # a picture, fetched with the key
        assert thumb.evaluate("img => img.naturalWidth") >= 64
        assert card.locator(".pill.version").inner_text() == PICTURES_ENCODER


def test_thumbnails_show_an_uploaded_image_finds_its_twin_and_a_click_finds_more_like_it(
    page: Any, console: Console, tmp_path: Any
) -> None:
    sign_in(page, console, "/search/emoji-images")
    first = page.locator(".results-grid .result img.thumb[data-loaded=true]").first
    first.wait_for()  # the sample grid shows pictures, fetched with the key
    assert first.evaluate("img => img.naturalWidth") >= 64 and first.get_attribute("src").startswith("blob:")

    banana = console.emojis["banana"]
    query = tmp_path / "banana-twitter.png"
    query.write_bytes(flatten_png(banana.twitter_png))
    page.set_input_files(".query-file", str(query))
    page.locator(".results-head h2", has_text="banana-twitter.png").wait_for()
    page.locator(".results-grid:not(.busy)").wait_for()
    assert result_ids(page)[0] == banana.code  # the Google-style drawing of the same emoji
    top = page.locator(".results-grid .result").first
    top.locator("img.thumb[data-loaded=true]").wait_for()
    assert top.locator(".result-title").inner_text().endswith("banana")

    top.click()  # more like this: a search with the item's own vector, the item left out
    page.locator(".results-head h2", has_text=f"more like {banana.code}").wait_for()
    page.locator(".results-grid:not(.busy)").wait_for()
    ids = result_ids(page)
    assert len(ids) == 10 and banana.code not in ids
    assert page.locator(".query-id").input_value() == banana.code


def test_a_filter_narrows_the_results(page: Any, console: Console) -> None:
    sign_in(page, console, "/search/emoji-names")
    page.locator(".results-grid .result").first.wait_for()
    search_text(page, "red")
    categories = page.locator(".kv[data-field=category] .v").all_inner_texts()
    assert len(categories) == 10 and set(categories) != {"Food & Drink"}

    page.get_by_role("button", name="+ Add filter").click()
    page.locator(".filter-field").fill("category")
    page.locator(".filter-value").fill("Food & Drink")
    assert page.locator(".filter-preview").inner_text() == '{"category":"Food & Drink"}'
    page.locator(".run-search").click()
    page.locator(".filter-used").wait_for()
    page.locator(".results-grid:not(.busy)").wait_for()
    narrowed = page.locator(".kv[data-field=category] .v").all_inner_texts()
    assert narrowed and set(narrowed) == {"Food & Drink"}
    assert any("apple" in t for t in page.locator(".result-title").all_inner_texts())


def test_an_upload_jobs_progress_reaches_100_percent_with_its_errors(page: Any, console: Console) -> None:
    sign_in(page, console, "/jobs")
    page.locator(".upload select").select_option("emoji-jobs")
    pictures = console.images[:24]
    files = [{"name": f"{e.code}.png", "mimeType": "image/png", "buffer": flatten_png(e.twitter_png)} for e in pictures]
    files.append({"name": "broken.png", "mimeType": "image/png", "buffer": b"this is not a picture"})
    page.set_input_files(".job-files", files)
    page.fill(".job-batch", "4")
    page.get_by_role("button", name="Start job").click()
    job = page.locator(".job[data-state=succeeded]").filter(has_text="emoji-jobs")
    job.wait_for(timeout=60_000)
    assert job.locator(".job-progress").inner_text() == "25 / 25"
    assert job.locator(".job-pct").inner_text() == "100.0%"
    assert job.locator("[role=progressbar]").get_attribute("aria-valuenow") == "100"
    job.locator(".job-errors summary").click()
    error = job.locator(".job-errors tr", has_text="broken.png")
    assert "could not be decoded" in error.inner_text()
    assert console.api.get("/v1/collections/emoji-jobs").json()["count"] == 24


def test_a_migration_is_refused_then_forced_and_rolled_back_after_confirmations(page: Any, console: Console) -> None:
    sign_in(page, console, "/upgrades/drawings")
    active = page.locator(".active-encoder")
    assert active.inner_text() == OLD
    page.fill(".migrate-to", NEW)
    page.locator(".migrate").click()
    page.locator("dialog.confirm[open]", has_text=f"to {NEW}").get_by_role("button", name="Check and switch").click()
    refusal = page.locator(".refusal")
    refusal.wait_for()
    assert "compatibility gate failed" in refusal.inner_text()  # v2 is compatible, but not better: the gate says no
    assert active.inner_text() == OLD

    page.check(".migrate-force")
    page.locator(".migrate").click()
    page.locator("dialog.confirm[open]").get_by_role("button", name="Switch (force)").click()
    page.locator("[data-outcome=migrated]").wait_for()
    page.locator(".active-encoder", has_text=NEW).wait_for()
    report = page.locator("[data-outcome=migrated] .report")
    assert "criterion not met" in report.inner_text() and "new / old" in report.inner_text()
    entry = page.locator(".history li[data-kind=migrate]")
    assert entry.count() == 1 and "forced" in entry.locator(".timeline-head").inner_text()
    assert console.api.get("/v1/collections/drawings/migrations").json()["active"] == NEW

    page.locator(".rollback").click()
    page.locator("dialog.confirm[open]").get_by_role("button", name="Cancel").click()
    assert console.api.get("/v1/collections/drawings/migrations").json()["active"] == NEW  # not confirmed
    page.locator(".rollback").click()
    page.locator("dialog.confirm[open]").get_by_role("button", name="Roll back").click()
    page.locator("[data-outcome=rollback]", has_text=f"Rolled back to {OLD}").wait_for()
    page.locator(".active-encoder", has_text=OLD).wait_for()
    assert page.locator(".history li[data-entry]").count() == 2
    assert console.api.get("/v1/collections/drawings/migrations").json()["active"] == OLD


def test_face_results_show_their_boxes_and_two_photos_are_verified(page: Any, console: Console, tmp_path: Any) -> None:
    sign_in(page, console, "/search/faces")
    page.locator(".results-grid .result").first.wait_for()
    query = tmp_path / "obama3.jpg"
    query.write_bytes(console.photos["obama3"])  # not in the collection
    page.set_input_files(".query-file", str(query))
    page.locator(".results-head h2", has_text="obama3.jpg").wait_for()
    page.locator(".results-grid:not(.busy)").wait_for()
    assert {i.split("#")[0] for i in result_ids(page)[:2]} == {"obama", "obama2"}

    # each face is outlined on its photo, where the detector found it (the box is in the photo's pixels)
    top = page.locator(".results-grid .result").first
    top.locator("img.thumb[data-loaded=true]").wait_for()
    box = top.locator(".face-box").bounding_box()
    frame = top.locator(".thumb-frame").bounding_box()
    top_id = quote(result_ids(page)[0], safe="")
    x1, _, x2, _ = console.api.get(f"/v1/collections/faces/items/{top_id}").json()["payload"]["face"]["box"]
    source_width = console.api.get(f"/v1/collections/faces/thumbnails/{top_id}").headers["x-source-width"]
    scale = frame["width"] / int(source_width)
    assert abs(box["x"] - frame["x"] - x1 * scale) < 3 and abs(box["width"] - (x2 - x1) * scale) < 3
    group = page.locator(".result[data-id^='sample2#face']")
    assert group.count() >= 2 and group.first.locator(".face-box").count() == 1

    page.locator(".seg button[data-mode=verify]").click()
    slots = page.locator(".verify input[type=file]")
    for name, slot in (("obama", 0), ("obama3", 1)):
        (tmp_path / f"{name}.jpg").write_bytes(console.photos[name])
        slots.nth(slot).set_input_files(str(tmp_path / f"{name}.jpg"))
    page.get_by_role("button", name="Compare faces").click()
    page.locator(".verdict[data-same=true]", has_text="Same person").wait_for()
    assert re.search(
        r"distance 0\.\d{3} · threshold \d\.\d{3} · face-resnet@1", page.locator(".verify-result").inner_text()
    )
    (tmp_path / "biden.jpg").write_bytes(console.photos["biden"])
    slots.nth(1).set_input_files(str(tmp_path / "biden.jpg"))
    page.get_by_role("button", name="Compare faces").click()
    page.locator(".verdict[data-same=false]", has_text="Different people").wait_for()
