"""Charts of the training pages, drawn on the server as inline SVG (see ``annotation.charts``).

A run's ``metrics`` are whatever its engine logged, one dict per logged step. Every numeric series is
plotted; the ones people look for first get their own panels, in this order: loss, reward, KL and
accuracy (of the reward model: how often it scores the chosen answer above the rejected one). Series
of a family share a panel (``loss`` and ``losses/value_loss``; ``train/accuracy`` and
``eval/accuracy``); anything else gets a small panel of its own.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from annotation.charts import line_chart

# Bookkeeping columns of metrics.jsonl (rundir.RunDir.log_metrics), never curves.
NOT_CURVES = {"step", "total_steps", "time", "elapsed", "epoch", "prompts_done"}
FAMILIES = (
    ("loss", "Loss"),
    ("reward", "Reward"),
    ("terms", "Reward terms (each term's mean, before its weight)"),
    ("kl", "KL divergence to the reference policy"),
    ("accuracy", "Accuracy"),
)
MAX_OTHER_PANELS = 6
_TOKEN = re.compile(r"[/_.\-\s]+")


_TERM = re.compile(r"^rewards/(.+)/(mean|std)$")


def family(key: str) -> str | None:
    """Which panel a metric belongs to, from the words of its name (``objective/kl`` → kl); the terms of a
    composed reward (``rewards/<term>/mean``, as PPO and TRL log them) share a panel of their own."""
    if _TERM.match(key):
        return "terms"
    words = set(_TOKEN.split(key.lower()))
    if words & {"kl", "kld"}:
        return "kl"
    if words & {"accuracy", "acc"}:
        return "accuracy"
    if words & {"reward", "rewards", "score", "scores"}:
        return "reward"
    if words & {"loss", "losses"}:
        return "loss"
    return None


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def metric_series(metrics: Sequence[dict]) -> dict[str, list[tuple[float, float]]]:
    """Every numeric, finite series in ``metrics``, keyed by name in alphabetical order (not the order
    of appearance: PostgreSQL's jsonb does not keep a row's key order, and a chart's colours and legend
    must not depend on the database); x is the logged ``step`` (the row's index where a row has none)."""
    series: dict[str, list[tuple[float, float]]] = {}
    for index, row in enumerate(metrics or []):
        if not isinstance(row, dict):
            continue
        x = _number(row.get("step"))
        x = float(index) if x is None else x
        for key, value in row.items():
            y = _number(value)
            if key in NOT_CURVES or y is None or (key.startswith("rewards/") and key.endswith("/std")):
                continue  # a term's spread within a batch (TRL logs it) would double the terms panel
            series.setdefault(str(key), []).append((x, y))
    return dict(sorted(series.items()))


def run_panels(metrics: Sequence[dict], *, id_prefix: str) -> tuple[list[dict], dict[str, float]]:
    """(panels, figures): a panel ``{"title", "svg"}`` per family present, then one per other series;
    a series with a single point is no curve, so it goes to ``figures`` (name → value) instead."""
    series = metric_series(metrics)
    curves = {k: v for k, v in series.items() if len(v) > 1}
    figures = {k: v[-1][1] for k, v in series.items() if len(v) == 1}
    panels = []
    grouped: dict[str, list[tuple[str, list]]] = {}
    others = []
    for key, points in curves.items():
        fam = family(key)
        if fam is None:
            others.append((key, points))
        else:
            grouped.setdefault(fam, []).append((key, points))
    for fam, title in FAMILIES:
        if fam in grouped:
            chart_id = f"{id_prefix}-{fam}"
            panels.append({"title": title, "svg": line_chart(grouped[fam], title=title, chart_id=chart_id)})
    for i, (key, points) in enumerate(others[:MAX_OTHER_PANELS]):
        panels.append({"title": key, "svg": line_chart([(key, points)], title=key, chart_id=f"{id_prefix}-other{i}")})
    for key, points in others[MAX_OTHER_PANELS:]:
        figures[key] = points[-1][1]
    return panels, figures


def _half_up(value: float) -> int:
    """Rounded as the table beside the chart rounds (Django's floatformat), so both show one number."""
    return math.floor(value + 0.5)


def leaderboard_chart(rows: Sequence[dict], *, width: int = 640) -> SafeString:
    """Bradley–Terry ratings as dots with their 95 % intervals as whiskers, best first."""
    if not rows:
        return mark_safe("")
    row_h, label_w, note_w, top = 26, 130, 120, 22
    height = top + len(rows) * row_h + 8
    plot_w = width - label_w - note_w
    lo = min(r["ci_low"] for r in rows)
    hi = max(r["ci_high"] for r in rows)
    pad = max((hi - lo) * 0.08, 10.0)
    lo, hi = lo - pad, hi + pad

    def sx(v: float) -> float:
        return label_w + plot_w * (v - lo) / (hi - lo)

    parts = [
        f'<svg class="chart interval-chart" viewBox="0 0 {width} {height}" role="img" aria-labelledby="chart-title-leaderboard">',
        '<title id="chart-title-leaderboard">Bradley–Terry rating of each source with its 95 % interval</title>',
        f'<line x1="{sx(1000):.1f}" y1="{top - 6}" x2="{sx(1000):.1f}" y2="{height - 4}" class="grid"/>',
        f'<text x="{sx(1000):.1f}" y="{top - 9}" text-anchor="middle" class="tick">1000</text>',
    ]
    for i, r in enumerate(rows):
        y = top + i * row_h + row_h / 2
        label = r["source"] if len(r["source"]) <= 18 else r["source"][:17] + "…"
        note = f"{_half_up(r['rating'])} [{_half_up(r['ci_low'])}, {_half_up(r['ci_high'])}]"
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 4:.1f}" text-anchor="end" class="label">{escape(label)}</text>'
            f'<line x1="{sx(r["ci_low"]):.1f}" y1="{y:.1f}" x2="{sx(r["ci_high"]):.1f}" y2="{y:.1f}" class="whisker"/>'
            f'<line x1="{sx(r["ci_low"]):.1f}" y1="{y - 5:.1f}" x2="{sx(r["ci_low"]):.1f}" y2="{y + 5:.1f}" class="whisker"/>'
            f'<line x1="{sx(r["ci_high"]):.1f}" y1="{y - 5:.1f}" x2="{sx(r["ci_high"]):.1f}" y2="{y + 5:.1f}" class="whisker"/>'
            f'<circle cx="{sx(r["rating"]):.1f}" cy="{y:.1f}" r="5" class="dot">'
            f"<title>{escape(r['source'])}: {escape(note)} from {r['comparisons']} comparisons</title></circle>"
            f'<text x="{label_w + plot_w + 8}" y="{y + 4:.1f}" class="label">{escape(note)}</text>'
        )
    parts.append("</svg>")
    return mark_safe("".join(parts))
