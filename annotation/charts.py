"""Small charts drawn on the server as inline SVG: no JavaScript, no library, readable without colour.

Every label passes through ``escape``: sources and usernames are data, not markup.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe


def _nice_max(value: float) -> float:
    """A round axis maximum at or above ``value`` (1, 2, 5 × 10^k)."""
    if value <= 0:
        return 1
    magnitude = 1
    while magnitude * 10 <= value:
        magnitude *= 10
    for step in (1, 2, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return 10 * magnitude


def hourly_bars(points: Sequence[tuple[datetime, int]], *, title: str, width: int = 960, height: int = 200) -> SafeString:
    """A bar per hour, with the axis maximum and a tick label every six hours."""
    left, right, top, bottom = 36, 8, 10, 24
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = _nice_max(max((n for _, n in points), default=0))
    slot = plot_w / max(len(points), 1)
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-labelledby="chart-title-hourly">',
        f'<title id="chart-title-hourly">{escape(title)}</title>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - right}" y2="{top + plot_h}" class="axis"/>',
        f'<text x="{left - 4}" y="{top + 8}" text-anchor="end" class="tick">{peak:g}</text>',
        f'<text x="{left - 4}" y="{top + plot_h}" text-anchor="end" class="tick">0</text>',
        f'<line x1="{left}" y1="{top}" x2="{width - right}" y2="{top}" class="grid"/>',
    ]
    for i, (hour, n) in enumerate(points):
        h = plot_h * n / peak
        x = left + i * slot
        parts.append(
            f'<rect x="{x + 1:.1f}" y="{top + plot_h - h:.1f}" width="{max(slot - 2, 1):.1f}" height="{h:.1f}" class="bar">'
            f"<title>{hour:%Y-%m-%d %H}:00 UTC: {n} rankings</title></rect>"
        )
        if hour.hour % 6 == 0:
            parts.append(
                f'<text x="{x + slot / 2:.1f}" y="{height - 6}" text-anchor="middle" class="tick">{hour:%H}h</text>'
            )
    parts.append("</svg>")
    return mark_safe("".join(parts))


def horizontal_bars(
    rows: Sequence[tuple[str, float, str]], *, title: str, chart_id: str, maximum: float | None = None, width: int = 560
) -> SafeString:
    """One labelled bar per row: (label, value, text shown after the bar)."""
    bar_h, gap, label_w, note_w = 18, 8, 140, 90
    height = max(len(rows), 1) * (bar_h + gap) + gap
    plot_w = width - label_w - note_w
    peak = maximum if maximum is not None else _nice_max(max((v for _, v, _ in rows), default=0))
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-labelledby="chart-title-{escape(chart_id)}">',
        f'<title id="chart-title-{escape(chart_id)}">{escape(title)}</title>',
    ]
    for i, (label, value, note) in enumerate(rows):
        y = gap + i * (bar_h + gap)
        w = plot_w * (value / peak if peak else 0)
        short = label if len(label) <= 20 else label[:19] + "…"
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end" class="label">{escape(short)}</text>'
            f'<rect x="{label_w}" y="{y}" width="{plot_w}" height="{bar_h}" class="track"/>'
            f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" class="bar"><title>{escape(label)}: {escape(note)}</title></rect>'
            f'<text x="{label_w + plot_w + 6}" y="{y + 13}" class="label">{escape(note)}</text>'
        )
    parts.append("</svg>")
    return mark_safe("".join(parts))
