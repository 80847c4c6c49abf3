"""Report tables (rich): measured rows with their ratio to a reference row, and the targets."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.table import Table

from searchlib.load import Row

# (row, the row it is compared with or None, target ratio or None)
Compared = tuple[Row, Row | None, float | None]


def verdict(ok: bool) -> str:
    return "[bold green]PASS[/]" if ok else "[bold red]FAIL[/]"


def fmt(x: float, digits: int = 0) -> str:
    return "-" if x != x else f"{x:,.{digits}f}"


def ratio(row: Row, base: Row) -> float:
    return row.qps / base.qps if base.qps else float("nan")


def round_ratios(row: Row, base: Row) -> list[float]:
    """The ratio per interleaved round (both rows ran in every round, side by side)."""
    return [a / b for a, b in zip(row.round_qps, base.round_qps, strict=False) if b]


def best(*rows: Row) -> Row:
    """The reference at its best concurrency: the row with the most queries/s."""
    return max(rows, key=lambda r: r.qps)


def new_table(title: str, caption: str = "") -> Table:
    return Table(
        title=title,
        caption=caption or None,
        title_justify="left",
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        title_style="bold",
        caption_style="",
    )


def perf_table(title: str, rows: list[Compared], caption: str = "") -> Table:
    table = new_table(title, caption)
    table.add_column("row", no_wrap=True)
    cols = ("conc", "q/call", "calls/s", "queries/s", "p50 ms", "p99 ms", "srv CPU/call", "bench CPU/call")
    for col in (*cols, "busy", "others", "÷ ref", "per round", "target"):
        table.add_column(col, justify="left" if col == "target" else "right", no_wrap=True)
    for row, base, target in rows:
        ratio_text = rounds_text = target_text = ""
        if base is not None and base.qps:
            value, per_round = ratio(row, base), round_ratios(row, base)
            ratio_text = f"{value:.2f}"
            rounds_text = f"{min(per_round):.2f}-{max(per_round):.2f}" if len(per_round) > 1 else ""
            target_text = "" if target is None else f">= {target:.2f} {verdict(value >= target)}"
        table.add_row(
            row.name + (f" [red]({row.errors} errors)[/]" if row.errors else ""),
            str(row.concurrency),
            str(row.queries_per_call),
            fmt(row.calls_per_s),
            fmt(row.qps),
            fmt(row.pct(50), 2),
            fmt(row.pct(99), 2),
            f"{row.per_call_ms(row.server_cpu_s):.2f} ms",
            f"{row.per_call_ms(row.client_cpu_s):.2f} ms",
            f"{100 * row.machine_busy:.0f}%",
            f"{row.other_cores:.2f}",
            ratio_text,
            rounds_text,
            target_text,
        )
    return table


def targets_table(title: str, lines: list[tuple[str, str, str, bool | None]], caption: str = "") -> Table:
    """One line per target: (what, measured, target, passed or None for information)."""
    table = new_table(title, caption)
    for col in ("target", "measured", "wanted", ""):
        table.add_column(col, no_wrap=True)
    for what, measured, wanted, ok in lines:
        table.add_row(what, measured, wanted, "" if ok is None else verdict(ok))
    return table


def summary(rows: list[Compared]) -> list[dict[str, Any]]:
    out = []
    for row, base, target in rows:
        item = row.summary()
        if base is not None:
            item.update(reference=base.name, ratio=ratio(row, base), round_ratios=round_ratios(row, base))
            if target is not None:
                item.update(target=target, passed=ratio(row, base) >= target)
        out.append(item)
    return out


TargetLine = tuple[str, str, str, bool | None]


def capacity_lines(api_best: dict[str, Row], ref: dict[str, Row], target: float, nb: int) -> list[TargetLine]:
    """Table 1's targets: REST ÷ in-process queries/s, each side at its best concurrency."""
    cap_lines: list[TargetLine] = []
    for what in ("single", "batch"):
        a, r = api_best[what], ref[what]
        label = "single queries" if what == "single" else f"batches of {nb}"
        cap_lines.append(
            (
                f"REST ÷ in-process queries/s, {label} (best concurrency: {a.concurrency} / {r.concurrency})",
                f"{ratio(a, r):.2f} ({fmt(a.qps)} / {fmt(r.qps)})",
                f">= {target:.2f}",
                ratio(a, r) >= target,
            )
        )
    return cap_lines
