"""The peers table (markdown), the goal lines, and the ``<!-- peers:begin -->`` block of a doc."""

from __future__ import annotations

from pathlib import Path
from typing import Any

BEGIN, END = "<!-- peers:begin -->", "<!-- peers:end -->"
Goal = tuple[str, str, str, bool | None]  # (goal, measured, wanted, passed; None: could not be measured)


def _f(x: float | None, digits: int = 0) -> str:
    return "–" if x is None or x != x else f"{x:,.{digits}f}"


def describe(r: dict[str, Any]) -> tuple[str, str]:
    """(system, index / parameters) cells of a result."""
    if r["system"] == "ERS":
        tuned = ", ".join(f"{k} {v}" for k, v in r["tuned"].items() if v is not None)
        active = r["active_index"] + (f", {tuned}" if tuned else "")
        workers = f", --workers {r['workers']}" if r.get("workers_flag") else ""
        name = f"ERS REST (`{r['wire']}`{workers})"
        if r["index"] == "auto":
            return name, f"`auto` → `{active}`"
        return name, f"`{r['index']}`" + (f" (serving `{active}`)" if r["active_index"] != r["index"] else
                                           (f", {tuned}" if tuned else ""))  # fmt: skip
    if r["system"] == "Chroma":
        return f"Chroma {r['version']} REST", r["params"]
    return f"{r['library']} {r['version']} in-process", r["params"]


def table(results: dict[str, list[dict[str, Any]]], target: float, k: int) -> str:
    head = (
        f"| set | system | index | recall@{k} | single QPS | single p50 / p99 ms | batch QPS | batch p50 / p99 ms "
        "| bytes / vector | ingest vectors/s | ready s |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for name, rows in results.items():
        for r in rows:
            system, index = describe(r)
            s, b = r["single"], r["batch"]
            conc = f" (c{s['concurrency']})" if "concurrency" in s else f" ({s.get('threads', 1)} thr)"
            bconc = (
                f" (×{b['batch']}, c{b['concurrency']})"
                if "concurrency" in b
                else f" (×{b['batch']}, {b['threads']} thr)"
            )
            flag = "" if r["recall"] >= target else " ✗"
            lines.append(
                f"| {name} | {system} | {index} | {r['recall']:.3f}{flag} | {_f(s['qps'])}{conc} "
                f"| {_f(s['p50_ms'], 2)} / {_f(s['p99_ms'], 2)} | {_f(b['qps'])}{bconc} "
                f"| {_f(b['p50_ms'], 1)} / {_f(b['p99_ms'], 1)} | {_f(r['bytes_per_vector'])} "
                f"| {_f(r['ingest_per_s'])} | {_f(r['ready_s'], 1)} |"
            )
    return head + "\n".join(lines) + "\n"


def _pick(rows: list[dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    return [r for r in rows if all(r.get(key) == value for key, value in match.items())]


def goals(results: dict[str, list[dict[str, Any]]], target: float) -> list[Goal]:
    out: list[Goal] = []
    for name, rows in results.items():
        autos = sorted(_pick(rows, system="ERS", index="auto"), key=lambda r: r["workers"])
        chroma = _pick(rows, system="Chroma")
        hnsw = _pick(rows, system="in-process", library="hnswlib")
        main = autos[-1] if autos else None  # the most workers measured
        if main and chroma:
            ratio = main["single"]["qps"] / chroma[0]["single"]["qps"]
            out.append((f"{name}: ERS `auto` (--workers {main['workers']}) single QPS ÷ Chroma",
                        f"{ratio:.2f} ({_f(main['single']['qps'])} / {_f(chroma[0]['single']['qps'])})",
                        ">= 2", ratio >= 2))  # fmt: skip
        else:
            out.append((f"{name}: ERS single QPS ÷ Chroma", "not measured (needs ERS auto and Chroma)", ">= 2", None))
        if main and hnsw:
            ratio = main["batch"]["qps"] / hnsw[0]["batch"]["qps"]
            out.append((f"{name}: ERS `auto` batch QPS ÷ hnswlib in-process batch (all cores)",
                        f"{ratio:.2f} ({_f(main['batch']['qps'])} / {_f(hnsw[0]['batch']['qps'])}; recall "
                        f"{main['recall']:.3f} vs {hnsw[0]['recall']:.3f})", ">= 0.5", ratio >= 0.5))  # fmt: skip
        else:
            out.append((f"{name}: ERS batch ÷ hnswlib", "not measured (needs ERS auto and hnswlib)", ">= 0.5", None))
        w1 = autos[0] if autos else None
        hand = [r for r in _pick(rows, system="ERS", workers=w1["workers"] if w1 else 1) if r["index"] != "auto"]
        good = [r for r in hand if r["recall"] >= target]
        if w1 and good:
            best = max(good, key=lambda r: r["single"]["qps"])
            ratio = w1["single"]["qps"] / best["single"]["qps"]
            ok = ratio >= 0.9 and w1["recall"] >= target
            out.append((f"{name}: ERS `auto` single QPS ÷ best hand-picked (`{best['index']}`, recall >= {target})",
                        f"{ratio:.2f} ({_f(w1['single']['qps'])} / {_f(best['single']['qps'])}; auto recall "
                        f"{w1['recall']:.3f})", f">= 0.9 at recall >= {target}", ok))  # fmt: skip
        else:
            why = "no hand-picked index reached the target recall" if hand else "no hand-picked index measured"
            out.append((f"{name}: ERS `auto` ÷ best hand-picked", f"not measured ({why})", ">= 0.9", None))
        by_workers = {r["workers"]: r for r in autos}
        if 1 in by_workers and 2 in by_workers:
            ratio = by_workers[2]["single"]["qps"] / by_workers[1]["single"]["qps"]
            out.append((f"{name}: ERS `auto` single QPS, --workers 2 ÷ --workers 1",
                        f"{ratio:.2f} ({_f(by_workers[2]['single']['qps'])} / {_f(by_workers[1]['single']['qps'])})",
                        ">= 1.5", ratio >= 1.5))  # fmt: skip
        else:
            out.append((f"{name}: --workers 2 ÷ --workers 1", "not measured (run with --workers 1,2)", ">= 1.5", None))
    return out


def goals_markdown(lines: list[Goal]) -> str:
    mark = {True: "**PASS**", False: "**FAIL**", None: "not measured"}
    body = "".join(f"| {g} | {m} | {w} | {mark[ok]} |\n" for g, m, w, ok in lines)
    return "| goal | measured | wanted | |\n|---|---|---|---|\n" + body


def document(header: list[str], results: dict[str, list[dict[str, Any]]], goal_lines: list[Goal],
             notes: list[str], target: float, k: int) -> str:  # fmt: skip
    return (
        "\n".join(header) + "\n\n" + table(results, target, k) + "\n" + goals_markdown(goal_lines) + "\n"
        + "\n".join(f"- {n}" for n in notes) + "\n"
    )  # fmt: skip


def replace_block(doc: Path, text: str) -> None:
    """Put ``text`` between the ``<!-- peers:begin -->`` / ``<!-- peers:end -->`` markers of ``doc``."""
    old = doc.read_text()
    if BEGIN not in old or END not in old:
        raise SystemExit(f"{doc} has no {BEGIN} ... {END} block to replace; add the two lines where the table goes")
    head, rest = old.split(BEGIN, 1)
    doc.write_text(head + BEGIN + "\n" + text + rest[rest.index(END) :])
