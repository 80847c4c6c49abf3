"""One small line-plot helper for the benches' PNGs (Pillow only: no plotting library is a dependency).

Each series is a list of points (x, mean, half-width of the 95% interval); the plot draws the means
joined by lines, the intervals as vertical bars, optional horizontal reference lines, and a legend.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image, ImageDraw

Point = tuple[float, float, float]  # x, mean, 95% half-width
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127)]  # fmt: skip


def line_plot(
    path: Path,
    series: Mapping[str, Sequence[Point]],
    title: str,
    x_label: str,
    y_label: str,
    log_x: bool = True,
    references: Mapping[str, float] | None = None,
    size: tuple[int, int] = (900, 560),
) -> None:
    """Write ``path`` (PNG): one coloured line per series, dashed grey lines for ``references``."""
    width, height = size
    left, right, top, bottom = 70, 30, 58, 150  # the title, then the y label above the axes
    points = [p for s in series.values() for p in s]
    if not points:
        raise ValueError("nothing to plot")
    fx = math.log10 if log_x else float
    xs = [fx(p[0]) for p in points]
    ys = [v for p in points for v in (p[1] - p[2], p[1] + p[2])] + list((references or {}).values())
    x0, x1 = min(xs), max(xs)
    x0, x1 = (x0 - 0.5, x1 + 0.5) if x0 == x1 else (x0 - 0.05 * (x1 - x0), x1 + 0.05 * (x1 - x0))
    y0, y1 = min(ys), max(ys)
    y0, y1 = y0 - 0.05 * (y1 - y0 or 1), y1 + 0.05 * (y1 - y0 or 1)

    def at(x: float, y: float) -> tuple[float, float]:
        px = left + (fx(x) - x0) / (x1 - x0) * (width - left - right)
        return px, top + (y1 - y) / (y1 - y0) * (height - top - bottom)

    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle([left, top, width - right, height - bottom], outline=(0, 0, 0))
    draw.text((left, 8), title, fill=(0, 0, 0))
    for i in range(6):  # y ticks
        y = y0 + (y1 - y0) * i / 5
        _, py = at(10**x0 if log_x else x0, y)
        draw.line([left - 4, py, left, py], fill=(0, 0, 0))
        draw.text((8, py - 6), f"{y:.3f}", fill=(0, 0, 0))
    last_label = -1e9
    for x in sorted({p[0] for p in points}):  # x ticks at the measured points; labels that would overlap skipped
        px, _ = at(x, y0)
        draw.line([px, height - bottom, px, height - bottom + 4], fill=(0, 0, 0))
        if px - last_label < 48:
            continue
        last_label = px
        draw.text(
            (px - 14, height - bottom + 8),
            f"{x:g}" if x < 10 else f"{x:,.0f}" if x < 1e5 else f"{x / 1e3:,.0f}k",
            fill=(0, 0, 0),
        )
    draw.text(((width - left) // 2, height - bottom + 26), x_label + (" (log scale)" if log_x else ""), fill=(0, 0, 0))
    draw.text((8, top - 20), y_label, fill=(0, 0, 0))
    legend = []
    for (label, value), colour in zip((references or {}).items(), [(150, 150, 150)] * 8, strict=False):
        _, py = at(10**x0 if log_x else x0, value)
        for px in range(left, width - right, 12):
            draw.line([px, py, px + 6, py], fill=colour, width=1)
        legend.append((label, colour, True))
    for (label, pts), colour in zip(series.items(), PALETTE * 4, strict=False):
        ordered = sorted(pts)
        for a, b in itertools.pairwise(ordered):
            draw.line([*at(a[0], a[1]), *at(b[0], b[1])], fill=colour, width=2)
        for x, mean, half in ordered:
            px, py = at(x, mean)
            draw.line([px, at(x, mean - half)[1], px, at(x, mean + half)[1]], fill=colour, width=1)
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
        legend.append((label, colour, False))
    for i, (label, colour, dashed) in enumerate(legend):
        x, y = left + (i % 3) * 280, height - bottom + 50 + (i // 3) * 22
        draw.line([x, y + 6, x + 30, y + 6], fill=colour, width=1 if dashed else 3)
        draw.text((x + 38, y), label, fill=(0, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
