"""Small charts drawn on the server as inline SVG: no JavaScript, no library, readable without colour.

Every label passes through ``escape``: sources and usernames are data, not markup.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import date, datetime

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


def _hour_step(slot: float) -> int:
    """Label every hour where the labels fit, else every 2nd, 3rd, 6th or 12th hour."""
    return next((step for step in (1, 2, 3, 6) if step * slot >= 34), 12)


def hourly_bars(
    points: Sequence[tuple[datetime, int]], *, title: str, width: int = 960, height: int = 220, min_hours: int = 12
) -> SafeString:
    """A bar per hour of ``points`` (oldest first), with the axis maximum, hour labels as often as they
    fit and the date under the first one and under each midnight.

    Leading hours without rankings are left out, down to the last ``min_hours``, and a note says so: a
    project whose rankings all came in the last hour shows that hour as a bar with its count among a few
    labelled hours, not as a sliver at the edge of two empty days.
    """
    left, right, top, bottom = 36, 8, 32, 36  # room above for the bars' counts and the note
    plot_w, plot_h = width - left - right, height - top - bottom
    first = next((i for i, (_, n) in enumerate(points) if n), len(points))
    shown = list(points[min(first, max(len(points) - min_hours, 0)):])
    skipped = len(points) - len(shown)
    peak = _nice_max(max((n for _, n in shown), default=0))
    slot = plot_w / max(len(shown), 1)
    every = _hour_step(slot)
    base = top + plot_h
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-labelledby="chart-title-hourly">',
        f'<title id="chart-title-hourly">{escape(title)}</title>',
        f'<line x1="{left}" y1="{base}" x2="{width - right}" y2="{base}" class="axis"/>',
        f'<text x="{left - 4}" y="{top + 8}" text-anchor="end" class="tick">{peak:g}</text>',
        f'<text x="{left - 4}" y="{base}" text-anchor="end" class="tick">0</text>',
        f'<line x1="{left}" y1="{top}" x2="{width - right}" y2="{top}" class="grid"/>',
    ]
    if not any(n for _, n in points):
        parts.append(
            f'<text x="{left + plot_w / 2:.1f}" y="{top + plot_h / 2:.1f}" text-anchor="middle" class="tick">'
            f"no rankings in the last {len(points)} hours</text>"
        )
    elif skipped:
        parts.append(
            f'<text x="{width - right}" y="12" text-anchor="end" class="tick">'
            f"no rankings in the {skipped} hours before</text>"
        )
    dated = False
    for i, (hour, n) in enumerate(shown):
        h = plot_h * n / peak
        x = left + i * slot
        parts.append(
            f'<rect x="{x + 1:.1f}" y="{base - h:.1f}" width="{max(slot - 2, 1):.1f}" height="{h:.1f}" class="bar">'
            f"<title>{hour:%Y-%m-%d %H}:00 UTC: {n} rankings</title></rect>"
        )
        if n and slot >= 22:
            parts.append(f'<text x="{x + slot / 2:.1f}" y="{base - h - 3:.1f}" text-anchor="middle" class="tick">{n}</text>')
        if hour.hour % every == 0:
            parts.append(f'<text x="{x + slot / 2:.1f}" y="{base + 14}" text-anchor="middle" class="tick">{hour:%H}h</text>')
            if not dated or hour.hour == 0:
                parts.append(
                    f'<text x="{x + slot / 2:.1f}" y="{base + 28}" text-anchor="middle" class="tick">{hour:%b %d}</text>'
                )
                dated = True
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


def _ticks(low: float, high: float, count: int = 4) -> list[float]:
    """Round tick values spanning [low, high] (steps of 1, 2, 2.5 or 5 × 10^k)."""
    span = high - low
    if span <= 0:
        return [low]
    raw = span / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step - 1e-9) * step
    out = []
    value = first
    while value <= high + step * 1e-6:
        out.append(round(value, 12))
        value += step
    return out


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000 or abs(value) < 0.01:
        return f"{value:.3g}"
    return f"{value:.4g}"


# Advance of a character as a share of the font size: narrow letters and punctuation, wide letters,
# capitals, everything else. The server cannot measure text, so it budgets for DejaVu Sans (Debian's
# sans-serif, among the widest: lowercase 0.28–0.64 em, "m" 0.97, capitals up to 0.99), rounded up, so
# that what it lays out never runs past the edge in any common font.
_NARROW = set("fijlrt.,:;!|'/()[] -")
_WIDE = set("mwMW@%…")


def text_width(text: str, *, size: float = 12) -> float:
    """Estimated width of ``text`` at font size ``size`` in SVG user units (at or above DejaVu Sans's)."""
    em = sum(0.42 if c in _NARROW else 1.0 if c in _WIDE else 0.8 if c.isupper() else 0.65 for c in text)
    return em * size


def _fit(text: str, width: float, *, size: float = 12) -> str:
    """``text``, cut with an ellipsis where it would be wider than ``width``."""
    if text_width(text, size=size) <= width:
        return text
    while text and text_width(text + "…", size=size) > width:
        text = text[:-1]
    return text + "…"


LEGEND_SWATCH, LEGEND_GAP, LEGEND_ROW = 18, 14, 16


def legend_layout(names: Sequence[str], *, x0: float, x1: float) -> list[tuple[float, int, str]]:
    """(x, row, shown text) per legend entry, left to right, wrapped onto a new row where an entry would
    run past ``x1``; a name wider than a whole row is cut with an ellipsis (its full name stays in the
    entry's tooltip)."""
    out, x, row = [], x0, 0
    for name in names:
        shown = _fit(name, x1 - x0 - LEGEND_SWATCH - 4)
        entry = LEGEND_SWATCH + 4 + text_width(shown)
        if x > x0 and x + entry > x1:
            x, row = x0, row + 1
        out.append((x, row, shown))
        x += entry + LEGEND_GAP
    return out


def line_chart(
    series: Sequence[tuple[str, Sequence[tuple[float, float]]]],
    *,
    title: str,
    chart_id: str,
    x_label: str = "step",
    width: int = 560,
    height: int = 220,
) -> SafeString:
    """Lines of (x, y) points, one per named series, with a legend; series differ by dash pattern and
    marker as well as colour (classes ``s0`` … ``s5``), so the chart reads in greyscale too.

    A series of few points (an eval every N steps) gets a marker on each point with its value as a
    tooltip; a long one gets markers only at its ends. The ``<desc>`` states first, last and best values.
    """
    left, right, top, bottom = 52, 12, 26, 30
    # The legend wraps onto as many rows as it needs above the plot; the chart grows by them, not the
    # plot shrinks (a PPO run logs six reward series, wider together than one row).
    legend = legend_layout([name for name, _ in series], x0=left, x1=width - right)
    extra = LEGEND_ROW * max((row for _, row, _ in legend), default=0)
    top, height = top + extra, height + extra
    plot_w, plot_h = width - left - right, height - top - bottom
    points = [(x, y) for _, pts in series for x, y in pts]
    cid = escape(chart_id)
    head = [
        f'<svg class="chart line-chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-labelledby="chart-title-{cid} chart-desc-{cid}">',
        f'<title id="chart-title-{cid}">{escape(title)}</title>',
    ]
    if not points:
        head.append(f'<desc id="chart-desc-{cid}">no points yet</desc>')
        head.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" class="tick">no points yet</text></svg>')
        return mark_safe("".join(head))
    x_lo, x_hi = min(x for x, _ in points), max(x for x, _ in points)
    y_lo, y_hi = min(y for _, y in points), max(y for _, y in points)
    if y_hi == y_lo:
        pad = abs(y_hi) * 0.1 or 1.0
        y_lo, y_hi = y_lo - pad, y_hi + pad
    else:
        pad = (y_hi - y_lo) * 0.06
        y_lo, y_hi = y_lo - pad, y_hi + pad
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1

    def sx(x: float) -> float:
        return left + plot_w * (x - x_lo) / (x_hi - x_lo)

    def sy(y: float) -> float:
        return top + plot_h * (1 - (y - y_lo) / (y_hi - y_lo))

    described = []
    for name, pts in series:
        if pts:
            ys = [y for _, y in pts]
            described.append(
                f"{name}: {len(pts)} points, first {_fmt(ys[0])}, last {_fmt(ys[-1])}, min {_fmt(min(ys))}, max {_fmt(max(ys))}"
            )
    parts = [*head, f'<desc id="chart-desc-{cid}">{escape("; ".join(described))}</desc>']
    for tick in _ticks(y_lo, y_hi):
        y = sy(tick)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{left - 5}" y="{y + 4:.1f}" text-anchor="end" class="tick">{_fmt(tick)}</text>')
    for tick in _ticks(x_lo, x_hi, count=5):
        x = sx(tick)
        parts.append(f'<text x="{x:.1f}" y="{height - 12}" text-anchor="middle" class="tick">{_fmt(tick)}</text>')
    parts.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{width - right}" y2="{top + plot_h}" class="axis"/>')
    parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" class="axis"/>')
    parts.append(f'<text x="{width - right}" y="{height - 1}" text-anchor="end" class="tick">{escape(x_label)}</text>')
    for i, ((name, pts), (lx, row, shown)) in enumerate(zip(series, legend, strict=True)):
        cls = f"s{i % 6}"
        ly = 11 + LEGEND_ROW * row
        parts.append(
            f'<g class="legend-entry"><title>{escape(name)}</title>'
            f'<line x1="{lx:.1f}" y1="{ly}" x2="{lx + LEGEND_SWATCH:.1f}" y2="{ly}" class="series {cls}"/>'
            f'<text x="{lx + LEGEND_SWATCH + 4:.1f}" y="{ly + 4}" class="label">{escape(shown)}</text></g>'
        )
        if not pts:
            continue
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        parts.append(f'<polyline points="{coords}" class="series {cls}"/>')
        marked = pts if len(pts) <= 30 else [pts[0], pts[-1]]
        for x, y in marked:
            parts.append(
                f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" class="marker {cls}">'
                f"<title>{escape(name)} at {escape(x_label)} {_fmt(x)}: {_fmt(y)}</title></circle>"
            )
    parts.append("</svg>")
    return mark_safe("".join(parts))


def agreement_timeline(points: Sequence[dict], *, step: str) -> SafeString:
    """The project's pairwise agreement per day or week (the quality report's ``timeline``: ``start`` ISO
    dates, ``pairwise`` or None, ``n``), as a line over days since the first period; periods without a
    figure (no comparison yet) are left out."""
    if not points:
        return line_chart([], title="Pairwise agreement over time", chart_id="agreement")
    first = date.fromisoformat(points[0]["start"])
    pts = [((date.fromisoformat(p["start"]) - first).days, p["pairwise"]) for p in points if p["pairwise"] is not None]
    return line_chart(
        [(f"pairwise agreement per {step}", pts)],
        title=f"Pairwise agreement per {step}, from {first.isoformat()}",
        chart_id="agreement",
        x_label=f"days since {first.isoformat()}",
    )
