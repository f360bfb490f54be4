"""Alerts-per-day bar charts as plain numbers for an SVG template: readable without JavaScript.

The template draws the bars; this module only does the arithmetic (scales, ticks, labels), so
every value that reaches the page is a number or an escaped label.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta

__all__ = ["Bar", "Chart", "day_chart"]

MAX_DAYS = 366
#: longer windows are drawn one bar per week: 366 daily bars per rule made the "all" page ~870 KB
#: and half of its time was spent rendering them (bench/review.py at 1M alerts)
WEEKLY_AFTER_DAYS = 92


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    day: date
    count: int
    label: str = ""  # "2026-01-05" or "week of 2026-01-05"


@dataclass
class Chart:
    width: int
    height: int
    plot_left: int
    plot_bottom: int
    bars: list[Bar] = field(default_factory=list)
    y_ticks: list[tuple[float, int]] = field(default_factory=list)
    x_labels: list[tuple[float, str]] = field(default_factory=list)
    total: int = 0
    peak: int = 0
    start: date | None = None
    end: date | None = None
    unit: str = "day"  # what one bar counts: "day" or "week"


def _nice_max(value: int) -> int:
    for step in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10000):
        if value <= step * 4:
            return max(step * ((value + step - 1) // step), step)
    return value


def day_chart(per_day: Mapping[date, int], start: date, end: date, *, width: int = 720,
              height: int = 180) -> Chart:
    """Bars for every day from ``start`` to ``end`` (zeros included), at most the last MAX_DAYS."""
    if end < start:
        start, end = end, start
    start = max(start, end - timedelta(days=MAX_DAYS - 1))
    all_days = [start + timedelta(days=i) for i in range((end - start).days + 1)]
    step = 7 if len(all_days) > WEEKLY_AFTER_DAYS else 1
    days = all_days[::step]  # the first day of each bar
    counts = [sum(per_day.get(d, 0) for d in all_days[i:i + step]) for i in range(0, len(all_days), step)]
    left, top, bottom_pad = 40, 10, 28
    plot_w, plot_h = width - left - 10, height - top - bottom_pad
    bottom = top + plot_h
    peak = max(counts, default=0)
    scale_max = _nice_max(max(peak, 1))
    slot = plot_w / len(days)
    bar_w = max(slot * 0.8, 1.0)
    chart = Chart(width=width, height=height, plot_left=left, plot_bottom=bottom, peak=peak, start=start,
                  end=end, unit="week" if step == 7 else "day")
    for i, (d, n) in enumerate(zip(days, counts, strict=True)):
        h = plot_h * n / scale_max
        label = f"week of {d.isoformat()}" if step == 7 else d.isoformat()
        chart.bars.append(Bar(x=round(left + i * slot + (slot - bar_w) / 2, 2), y=round(bottom - h, 2),
                              width=round(bar_w, 2), height=round(h, 2), day=d, count=n, label=label))
        chart.total += n
    for value in sorted({scale_max * k // 4 for k in range(5)}):
        chart.y_ticks.append((round(bottom - plot_h * value / scale_max, 2), value))
    every = max(1, -(-len(days) // 5))  # at most 5 full-date labels (YYYY-MM-DD)
    for i in range(0, len(days), every):
        chart.x_labels.append((round(left + i * slot + slot / 2, 2), days[i].isoformat()))
    return chart
