"""Analytics charts: one bar per day up to 92 days, one bar per week beyond (the 365-day and "all"
pages drew 366 bars per rule — ~870 KB of HTML at 1M alerts); totals never change with the bars."""

from __future__ import annotations

from datetime import date, timedelta

from cds_engine.service.review.charts import day_chart


def test_short_windows_have_a_bar_per_day() -> None:
    start = date(2026, 1, 1)
    chart = day_chart({start: 3, start + timedelta(days=29): 2}, start, start + timedelta(days=29))
    assert len(chart.bars) == 30 and chart.unit == "day" and chart.total == 5
    assert chart.bars[0].label == "2026-01-01" and chart.peak == 3


def test_long_windows_have_a_bar_per_week_and_keep_every_alert() -> None:
    end = date(2026, 12, 31)
    start = end - timedelta(days=364)
    per_day = {start + timedelta(days=i): 1 for i in range(365)}
    chart = day_chart(per_day, start, end)
    assert chart.unit == "week" and len(chart.bars) == 53
    assert chart.total == 365 and chart.peak == 7
    assert chart.bars[0].label == f"week of {start.isoformat()}" and chart.bars[-1].count == 1
