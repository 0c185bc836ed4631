"""The ops page's charts: well-formed SVG, one element per minute carrying its number, a
summary in words, time labels in UTC, and any text escaped."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

import pytest

from api.charts import bar_chart, last_hour_charts, line_chart
from shared.ops.activity import Minute

SVG = "{http://www.w3.org/2000/svg}"
FIRST = datetime(2026, 11, 27, 13, 4, tzinfo=UTC)  # the hour 13:04 to 14:03
MINUTES = [FIRST + timedelta(minutes=i) for i in range(60)]


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)


def points(root: ET.Element, tag: str = "rect") -> dict[str, str]:
    return {el.attrib["data-minute"]: el.attrib["data-value"] for el in root.iter(SVG + tag)}


def test_each_minute_is_one_bar_carrying_its_value() -> None:
    values = [0] * 60
    values[0], values[59] = 3, 7  # 13:04 and 14:03

    root = parse(bar_chart("Sent per minute", MINUTES, values))

    bars = points(root)
    assert len(bars) == 60
    assert bars["2026-11-27T13:04Z"] == "3" and bars["2026-11-27T14:03Z"] == "7"
    assert [bars[f"{m:%Y-%m-%dT%H:%MZ}"] for m in MINUTES[1:59]] == ["0"] * 58
    heights = [float(el.attrib["height"]) for el in root.iter(SVG + "rect")]
    assert heights[59] > heights[0] > 0 and heights[1:59] == [0.0] * 58


def test_the_summary_gives_the_total_and_the_busiest_minute() -> None:
    values = [0] * 60
    values[59], values[20], values[21] = 7, 20, 15

    root = parse(bar_chart("Sent per minute", MINUTES, values))

    summary = "Sent per minute, last hour: 42 in all, most 20 at 13:24 UTC"
    assert root.attrib["role"] == "img"
    assert root.attrib["aria-label"] == summary
    assert root.find(SVG + "title") is not None
    assert root.findtext(SVG + "title") == summary


def test_an_empty_hour_renders_sixty_zero_bars() -> None:
    root = parse(bar_chart("Retried per minute", MINUTES, [0] * 60))

    assert list(points(root).values()) == ["0"] * 60
    assert root.attrib["aria-label"] == "Retried per minute, last hour: 0 in all"


def test_it_scales_to_its_container_and_labels_its_axes() -> None:
    values = [0] * 60
    values[30] = 7

    root = parse(bar_chart("Sent per minute", MINUTES, values))

    assert root.attrib["width"] == "100%" and "height" not in root.attrib
    assert root.attrib["viewBox"].startswith("0 0 ")
    labels = [el.text for el in root.iter(SVG + "text")]
    # The value axis: 0 and the maximum; the time axis: every quarter hour, in UTC.
    assert {"0", "7", "UTC", "13:15", "13:30", "13:45", "14:00"} <= set(labels)
    assert not [label for label in labels if label and label.endswith((":04", ":10"))]


def test_text_is_escaped() -> None:
    title = 'Sent <script>alert("x")</script> & more'

    svg = bar_chart(title, MINUTES, [1] * 60, unit="<b>")

    assert "<script>" not in svg and "<b>" not in svg
    root = parse(svg)
    assert root.attrib["aria-label"].startswith(title + ", last hour: 60 <b> in all")
    assert root.findtext(SVG + "title", "").startswith(title)


def test_queue_depth_samples_are_summarised_by_the_latest_and_gaps_stay_empty() -> None:
    depths: list[float | None] = [None] * 60
    depths[10], depths[40] = 12, 4

    root = parse(bar_chart("Queue depth", MINUTES, depths, summed=False))

    bars = points(root)
    assert bars["2026-11-27T13:14Z"] == "12" and bars["2026-11-27T13:44Z"] == "4"
    assert list(bars.values()).count("") == 58
    assert root.attrib["aria-label"] == "Queue depth, last hour: latest 4, most 12 at 13:14 UTC"


def test_a_line_chart_has_a_point_per_minute_and_series() -> None:
    p50: list[float | None] = [None] * 60
    p99: list[float | None] = [None] * 60
    p50[5], p50[6], p50[30] = 0.25, 0.5, 0.125
    p99[5], p99[6], p99[30] = 1.5, 2.75, 0.5

    root = parse(line_chart("Lateness per minute", MINUTES, {"p50": p50, "p99": p99}))

    circles = list(root.iter(SVG + "circle"))
    assert len(circles) == 120
    by_series = {
        name: {
            c.attrib["data-minute"]: c.attrib["data-value"]
            for c in circles
            if c.attrib["data-series"] == name
        }
        for name in ("p50", "p99")
    }
    assert by_series["p99"]["2026-11-27T13:10Z"] == "2.75"
    assert by_series["p50"]["2026-11-27T13:34Z"] == "0.125"
    assert list(by_series["p50"].values()).count("") == 57
    # The line is broken over the minutes without a value: two runs per series.
    assert [path.attrib["d"].count("M") for path in root.iter(SVG + "path")] == [2, 2]
    assert root.attrib["aria-label"] == (
        "Lateness per minute, last hour: p50 highest 0.50 s at 13:10 UTC; "
        "p99 highest 2.75 s at 13:10 UTC"
    )


def test_a_line_chart_without_data_says_so() -> None:
    root = parse(line_chart("Lateness per minute", MINUTES, {"p50": [None] * 60}))

    assert root.attrib["aria-label"] == "Lateness per minute, last hour: p50 no data"
    assert list(root.iter(SVG + "path")) == []


def test_the_page_gets_one_chart_per_measure() -> None:
    hour = [Minute(m, 0, 0, 0, 0, None, None, None) for m in MINUTES]
    hour[59] = Minute(MINUTES[59], 4, 1, 2, 3, 0.5, 1.25, 9)

    charts = last_hour_charts(hour)

    assert [chart.key for chart in charts] == [
        "sent",
        "retried",
        "dead-lettered",
        "missed",
        "lateness",
        "queue-depth",
    ]
    last = "2026-11-27T14:03Z"
    values = [points(parse(chart.svg), "rect").get(last) for chart in charts]
    assert values == ["4", "1", "2", "3", None, "9"]
    lateness = parse(charts[4].svg)
    assert {c.attrib["data-value"] for c in lateness.iter(SVG + "circle")} == {"", "0.5", "1.25"}


def test_values_must_match_the_minutes() -> None:
    with pytest.raises(ValueError):
        bar_chart("Sent per minute", MINUTES, [0] * 59)


def test_long_lateness_reads_in_minutes_and_hours() -> None:
    p99: list[float | None] = [None] * 60
    p99[0], p99[1] = 5400.0, 0.5

    root = parse(line_chart("Lateness per minute", MINUTES, {"p99": p99}))

    assert (
        root.attrib["aria-label"]
        == "Lateness per minute, last hour: p99 highest 90 min at 13:04 UTC"
    )
    assert "90 min" in [el.text for el in root.iter(SVG + "text")]  # the value axis' maximum
    p99[0] = 4 * 3600.0
    assert "highest 4.0 h" in line_chart("Lateness", MINUTES, {"p99": p99})
