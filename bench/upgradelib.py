"""Helpers of ``bench/upgrade.py --mode pretrained``: real texts, the synthetic-but-real-based gallery, the
calibration manifest and evaluation set, the encoder rate, the RSS sampler and the timed rows."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

from models.core.encoder import Encoder, encode
from models.data.text_retrieval import emoji_names, load_retrieval_set
from models.data.xray_reports import load_reports

EVAL_PAIRS = 400  # labelled (impression, findings) pairs, as tests/service/test_pretrained_upgrade.py
POLL_S = 0.05  # task polling interval: the figures are this coarse


def text_pool(cache_dir: Path, size: int, seed: int = 0) -> list[str]:
    """``size`` distinct real texts: IU X-ray findings and impression sections and emoji Unicode names."""
    texts = {t.strip() for r in load_reports(cache_dir) for t in (r.findings, r.impression) if t.strip()}
    texts |= {name for _, name, _ in emoji_names(cache_dir)}
    ordered = sorted(texts)  # set order varies between runs; the sample must not
    pick = np.random.default_rng(seed).permutation(len(ordered))[:size]
    return [ordered[i] for i in pick]


def gallery_chunks(base: np.ndarray, n: int, chunk: int, noise: float, seed: int = 0) -> Iterator[np.ndarray]:
    """``n`` unit rows, ``chunk`` at a time (never all in memory): a random row of ``base`` plus gaussian
    noise of ``noise`` per dimension, re-normalised."""
    rng = np.random.default_rng(seed)
    for start in range(0, n, chunk):
        rows = base[rng.integers(0, len(base), min(chunk, n - start))]
        rows = rows + rng.normal(0.0, noise, rows.shape).astype(np.float32)
        yield (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def xray_eval_and_calibration(cache_dir: Path, calibration: int) -> tuple[dict[str, Any], list[str]]:
    """(eval-set body, calibration texts): the gate's labelled task is ``EVAL_PAIRS`` impression/findings
    pairs of the X-ray ``val`` split labelled by report; calibration is ``calibration`` unlabelled texts
    (impressions and findings) of the other reports (the ``test`` split, then the rest of ``val``), so the two
    share no report."""
    val = load_retrieval_set("xray", "val", cache_dir)
    answer = dict(zip(val.document_labels.tolist(), val.documents, strict=False))
    pairs = list(zip(val.queries[:EVAL_PAIRS], val.query_labels[:EVAL_PAIRS].tolist(), strict=True))
    body = {"inputs": [q for q, _ in pairs] + [answer[y] for _, y in pairs], "labels": [str(y) for _, y in pairs] * 2}
    rest = load_retrieval_set("xray", "test", cache_dir)
    others = [*zip(rest.queries, rest.documents, strict=True), *((q, answer[y]) for q, y in
              zip(val.queries[EVAL_PAIRS:], val.query_labels[EVAL_PAIRS:].tolist(), strict=True))]  # fmt: skip
    texts = [t for pair in others for t in pair][:calibration]
    return body, texts


def write_manifest(path: Path, texts: list[str]) -> dict[str, str]:
    """A JSONL manifest job source of ``texts`` (no labels: fit-only inputs); the source spec to send."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = (json.dumps({"id": f"c{i}", "text": t}) for i, t in enumerate(texts))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"type": "manifest", "path": str(path)}


def encode_rate(encoder: Encoder, texts: list[str], batch: int = 64) -> dict[str, float]:
    """Texts per second through ``encode`` in batches of ``batch``, after one untimed warm-up batch. The
    texts are sorted by length first, as the service's batcher and jobs do: the cheapest padding, which
    flatters re-embedding."""
    ordered = sorted(texts, key=len)
    encode(encoder, ordered[:batch])
    started = time.perf_counter()
    for i in range(0, len(ordered), batch):
        encode(encoder, ordered[i : i + batch])
    seconds = time.perf_counter() - started
    return {"texts": len(ordered), "seconds": seconds, "per_s": len(ordered) / seconds}


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class RssSampler(threading.Thread):
    """The process RSS every ``every`` seconds: the overall peak, and the peak of the current window."""

    def __init__(self, every: float = 0.02) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        self.every, self.stop = every, threading.Event()
        self.peak = self.window_peak = self.window_base = rss_mb()

    def run(self) -> None:
        while not self.stop.is_set():
            now = rss_mb()
            self.peak, self.window_peak = max(self.peak, now), max(self.window_peak, now)
            time.sleep(self.every)

    def open_window(self) -> None:
        self.window_base = self.window_peak = rss_mb()

    def window(self) -> dict[str, float]:
        """RSS before the window, and its peak over it, in MiB."""
        self.window_peak = max(self.window_peak, rss_mb())
        return {"rss_before_mb": self.window_base, "peak_extra_mb": self.window_peak - self.window_base}


def timed_row(client: TestClient, collection: str, path: str, body: dict[str, Any] | None, query: dict[str, Any],
              rss: RssSampler) -> dict[str, Any]:  # fmt: skip
    """From sending ``POST path`` to serving: the answer, then (202) the task polled every ``POLL_S`` until
    it ends, then one search that must return hits. Phases: first seen while polling (as coarse as it)."""
    rss.open_window()
    started = time.perf_counter()
    answer = client.post(path, json=body)
    row: dict[str, Any] = {"status": answer.status_code, "answered_s": time.perf_counter() - started}
    if answer.status_code == 202:
        task_id, task = answer.json()["task"]["id"], {}
        seen: dict[str, float] = {}
        while True:
            task = client.get(f"/v1/collections/{collection}/migrations/tasks/{task_id}").json()
            seen.setdefault(task["phase"], time.perf_counter() - started)
            if task["state"] != "running":
                break
            time.sleep(POLL_S)
        row["task_s"] = time.perf_counter() - started
        marks = sorted(seen.items(), key=lambda kv: kv[1])
        row["phases_s"] = {p: round(marks[i + 1][1] - t, 3) for i, (p, t) in enumerate(marks[:-1])}
        row.update(state=task["state"], error=task["error"], report=task["report"], migration=task["migration"],
                   task_wall_s=(task["finished_at"] or 0) - task["started_at"])  # fmt: skip
        if task["state"] != "succeeded":
            return {**row, **rss.window()}
    elif answer.status_code == 201:
        row["state"], row["migration"] = "succeeded", answer.json()["migration"]
    else:
        return {**row, "state": "error", "error": answer.text[:500], **rss.window()}
    hits = client.post(f"/v1/collections/{collection}/search", json=query).json()["results"]
    row["serving_s"] = time.perf_counter() - started
    row["hits"], row["top_version"] = len(hits), hits[0]["encoder_version"] if hits else None
    return {**row, **rss.window()}


def gate_summary(row: dict[str, Any], old_key: str) -> str:
    """The gate's figures in one cell: R@10 on the held-out calibration task (bridged), or top-1 on the
    evaluation set (prefix)."""
    report = row.get("report") or (row.get("migration") or {}).get("pretrained")
    if report:
        figures = report.get("figures", {})
        shown = ", ".join(f"{k} {v:.3f}" for k, v in figures.items() if k in ("old/old", "new/new", row["method"]))
        met = {True: "met", False: "not met (forced)", None: "no task"}[report.get("criterion_met")]
        return f"R@10 {shown}; {met}"
    prefix = ((row.get("migration") or {}).get("reports") or {}).get(old_key)
    if prefix:
        met = "met" if prefix["criterion_met"] else "not met (forced)"
        return f"top-1 old/old {prefix['old_old']['top1']:.3f}, new/old {prefix['new_old']['top1']:.3f}; {met}"
    return "-"


def print_table(result: dict[str, Any], old: str, new: str) -> None:
    meta, reembed = result["meta"], result["reembed"]
    print(f"\nUpgrade of ONE collection of {meta['n']:,} stored 384-d vectors, {old} -> {new} "
          f"({meta['threads']} threads, {meta['cpus']} CPUs, load {meta['loadavg_before'][0]:.1f} -> "
          f"{meta['loadavg_after'][0]:.1f}; index {meta['index']})\n")  # fmt: skip
    print("| row | seconds to serving | speed-up vs re-embed | peak extra RSS (MiB) | gate figures | of which |")
    print("|---|---|---|---|---|---|")
    print(f"| re-embed (extrapolated) | {reembed['seconds_extrapolated']:.0f} | 1x | {reembed['peak_extra_mb']:.0f} "
          f"(during the rate sample) | - | {reembed['per_s']:.1f} texts/s on {reembed['texts']} texts × n "
          f"({reembed.get('per_s_after_rows', float('nan')):.1f} texts/s after the rows); "
          "writes and index build excluded |")  # fmt: skip
    if "prefix_unavailable" in meta:
        print(f"| prefix | - | - | - | - | unavailable: {meta['prefix_unavailable']} |")
    for row in result["rows"]:
        if "serving_s" not in row:
            print(f"| {row['row']} | - | - | {row['peak_extra_mb']:.0f} | {gate_summary(row, old)} | "
                  f"{row['state']}: {row.get('error')} |")  # fmt: skip
            continue
        waited = row.get("task_s", row["answered_s"])
        parts = [f"{p} {s:.2f}" for p, s in row.get("phases_s", {}).items() if p != "queued"]
        parts.append(
            f"{'answer' if 'task_s' not in row else 'task'} {waited:.2f}, first search {row['serving_s'] - waited:.2f}"
        )
        gate = gate_summary(row, old) if row["method"] != "rollback" else "-"
        print(f"| {row['row']} | {row['serving_s']:.2f} | {reembed['seconds_extrapolated'] / row['serving_s']:.0f}x | "
              f"{row['peak_extra_mb']:.0f} | {gate} | {'; '.join(parts)} |")  # fmt: skip
    setup, shutdown = result["setup"], result["shutdown"]
    print(f"\nsetup (not timed): {setup['write_s']:.0f} s writing, peak extra RSS {setup['peak_extra_mb']:.0f} MiB, "
          f"RSS after {setup['rss_after_mb']:.0f} MiB; shutdown {shutdown['seconds']:.0f} s, peak extra RSS "
          f"{shutdown['peak_extra_mb']:.0f} MiB")  # fmt: skip
    methods = [r for r in result["rows"] if r["method"] != "rollback"]
    worst = min((reembed["seconds_extrapolated"] / r["serving_s"] for r in methods if "serving_s" in r), default=0.0)
    met = worst >= 100 and all("serving_s" in r for r in methods)
    print(f"\noverall peak RSS {result['peak_rss_mb']:.0f} MiB; slowest method {worst:.0f}x faster than re-embedding "
          f"(goal 100x: {'met' if met else 'NOT met'})")  # fmt: skip
