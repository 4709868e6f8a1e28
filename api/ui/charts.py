"""Tiny server-side SVG charts for the dashboard: pure functions from numbers to markup.

No JavaScript and no chart library: each chart is an inline `<svg>` with a `<title>` and
`<desc>` for screen readers (the dashboard also prints the numbers in a table). Colours are
presentation attributes, not `style=`, so a CSP without 'unsafe-inline' allows them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

WIDTH = 720
HEIGHT = 220
PAD_LEFT = 56
PAD_RIGHT = 12
PAD_TOP = 12
PAD_BOTTOM = 40
AXIS = "#6b7280"
GRID = "#e5e7eb"


@dataclass(frozen=True)
class Series:
    """One named series; `None` values are gaps (a line breaks, a bar is absent)."""

    name: str
    values: Sequence[float | None]
    colour: str


def nice_max(value: float) -> float:
    """A round upper bound for an axis: 1, 2, 2.5 or 5 times a power of ten, at least `value`."""
    if value <= 0:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * magnitude >= value:
            return step * magnitude
    return 10 * magnitude  # pragma: no cover - the loop always returns


def _fmt(value: float) -> str:
    return f"{value:g}" if abs(value) < 1e6 else f"{value:.3g}"


def _frame(
    title: str,
    labels: Sequence[str],
    y_max: float,
    y_format: Callable[[float], str],
    body: list[str],
    series: Sequence[Series],
) -> Markup:
    plot_w = WIDTH - PAD_LEFT - PAD_RIGHT
    plot_h = HEIGHT - PAD_TOP - PAD_BOTTOM
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="100%" role="img" class="chart">',
        f"<title>{escape(title)}</title>",
        f"<desc>{escape(', '.join(s.name for s in series))} over {len(labels)} intervals</desc>",
    ]
    for i in range(5):  # horizontal grid lines and y labels at 0, ¼, ½, ¾ and the top
        v = y_max * i / 4
        y = PAD_TOP + plot_h - plot_h * i / 4
        parts.append(
            f'<line x1="{PAD_LEFT}" x2="{WIDTH - PAD_RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="{GRID}"/>'
        )
        parts.append(
            f'<text x="{PAD_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" fill="{AXIS}">'
            f"{escape(y_format(v))}</text>"
        )
    n = max(len(labels), 1)
    every = max(1, -(-n // 8))  # at most about 8 x labels
    for i, label in enumerate(labels):
        if i % every:
            continue
        x = PAD_LEFT + plot_w * (i + 0.5) / n
        parts.append(
            f'<text x="{x:.1f}" y="{HEIGHT - PAD_BOTTOM + 16}" text-anchor="middle" font-size="11" '
            f'fill="{AXIS}">{escape(label)}</text>'
        )
    parts.extend(body)
    parts.append(
        f'<line x1="{PAD_LEFT}" x2="{WIDTH - PAD_RIGHT}" y1="{PAD_TOP + plot_h}" y2="{PAD_TOP + plot_h}" '
        f'stroke="{AXIS}"/>'
    )
    x = PAD_LEFT
    for s in series:  # legend under the x labels
        parts.append(
            f'<rect x="{x}" y="{HEIGHT - 14}" width="10" height="10" fill="{escape(s.colour)}"/>'
        )
        parts.append(
            f'<text x="{x + 14}" y="{HEIGHT - 5}" font-size="11" fill="#111827">{escape(s.name)}</text>'
        )
        x += 24 + 7 * len(s.name)
    parts.append("</svg>")
    return Markup("".join(parts))


def bar_chart(
    title: str,
    labels: Sequence[str],
    series: Sequence[Series],
    *,
    y_format: Callable[[float], str] = _fmt,
) -> Markup:
    """Stacked bars, one per label, the series stacked bottom to top in order."""
    totals = [sum(s.values[i] or 0 for s in series) for i in range(len(labels))]
    y_max = nice_max(max(totals, default=0))
    plot_w = WIDTH - PAD_LEFT - PAD_RIGHT
    plot_h = HEIGHT - PAD_TOP - PAD_BOTTOM
    n = max(len(labels), 1)
    bar_w = max(1.0, plot_w / n * 0.8)
    body = []
    for i, label in enumerate(labels):
        x = PAD_LEFT + plot_w * i / n + (plot_w / n - bar_w) / 2
        base = 0.0
        for s in series:
            v = s.values[i] or 0
            if v <= 0:
                continue
            h = plot_h * v / y_max
            y = PAD_TOP + plot_h - plot_h * base / y_max - h
            body.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" fill="{escape(s.colour)}">'
                f"<title>{escape(label)} {escape(s.name)}: {escape(y_format(v))}</title></rect>"
            )
            base += v
    return _frame(title, labels, y_max, y_format, body, series)


def line_chart(
    title: str,
    labels: Sequence[str],
    series: Sequence[Series],
    *,
    y_format: Callable[[float], str] = _fmt,
    y_max: float | None = None,
) -> Markup:
    """One polyline per series; a gap (None) breaks the line; lone points get a dot."""
    values = [v for s in series for v in s.values if v is not None]
    top = y_max if y_max is not None else nice_max(max(values, default=0))
    plot_w = WIDTH - PAD_LEFT - PAD_RIGHT
    plot_h = HEIGHT - PAD_TOP - PAD_BOTTOM
    n = max(len(labels), 1)
    body = []
    for s in series:
        runs: list[list[tuple[float, float, int]]] = [[]]
        for i, v in enumerate(s.values):
            if v is None:
                runs.append([])
                continue
            x = PAD_LEFT + plot_w * (i + 0.5) / n
            y = PAD_TOP + plot_h - plot_h * min(v, top) / top
            runs[-1].append((x, y, i))
        for run in runs:
            if len(run) > 1:
                points = " ".join(f"{x:.1f},{y:.1f}" for x, y, _ in run)
                body.append(
                    f'<polyline points="{points}" fill="none" stroke="{escape(s.colour)}" stroke-width="2"/>'
                )
            for x, y, i in run:
                v = s.values[i]
                assert v is not None
                body.append(
                    f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{escape(s.colour)}">'
                    f"<title>{escape(labels[i])} {escape(s.name)}: {escape(y_format(v))}</title></circle>"
                )
    return _frame(title, labels, top, y_format, body, series)
