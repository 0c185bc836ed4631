"""The ops page's charts: well-formed SVG, one element per minute carrying its number, a
summary in words, axes with round ticks and time labels in UTC, each minute's value on
hover, and any text escaped."""

from __future__ import annotations

import itertools
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

import pytest

from api.charts import (
    BASELINE,
    LEFT,
    PLOT_HEIGHT,
    PLOT_WIDTH,
    TOP,
    bar_chart,
    last_hour_charts,
    line_chart,
    value_axis,
)
from shared.ops.activity import Minute

SVG = "{http://www.w3.org/2000/svg}"
FIRST = datetime(2026, 11, 27, 13, 4, tzinfo=UTC)  # the hour 13:04 to 14:03
MINUTES = [FIRST + timedelta(minutes=i) for i in range(60)]


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)


def points(root: ET.Element, tag: str = "rect") -> dict[str, str]:
    return {
        el.attrib["data-minute"]: el.attrib["data-value"]
        for el in root.iterfind(f".//{SVG}{tag}[@data-minute]")
    }


def value_ticks(root: ET.Element) -> list[tuple[str, float]]:
    """The value axis' labels, bottom up, with their height above the baseline."""
    return [
        (el.text or "", BASELINE - float(el.attrib["y"]))
        for el in root.iterfind(f".//{SVG}text[@data-tick]")
    ]


def hover_titles(root: ET.Element) -> dict[str, str]:
    return {
        el.attrib["data-hover-minute"]: el.findtext(SVG + "title", "")
        for el in root.iterfind(f".//{SVG}rect[@data-hover-minute]")
    }


def test_each_minute_is_one_bar_carrying_its_value() -> None:
    values = [0] * 60
    values[0], values[59] = 3, 7  # 13:04 and 14:03

    root = parse(bar_chart("Sent per minute", MINUTES, values))

    bars = points(root)
    assert len(bars) == 60
    assert bars["2026-11-27T13:04Z"] == "3" and bars["2026-11-27T14:03Z"] == "7"
    assert [bars[f"{m:%Y-%m-%dT%H:%MZ}"] for m in MINUTES[1:59]] == ["0"] * 58
    heights = [float(el.attrib["height"]) for el in root.iterfind(f".//{SVG}rect[@data-minute]")]
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
    # The value axis: round steps up to above the maximum; the time axis: every quarter
    # hour, in UTC.
    assert [label for label, _ in value_ticks(root)] == ["0", "2", "4", "6", "8"]
    assert {"UTC", "13:15", "13:30", "13:45", "14:00"} <= set(labels)
    assert not [label for label in labels if label and label.endswith((":04", ":10"))]


def test_the_value_axis_has_evenly_spaced_ticks_with_grid_lines_and_bars_to_scale() -> None:
    values = [0] * 60
    values[30] = 7

    root = parse(bar_chart("Sent per minute", MINUTES, values))

    ticks = value_ticks(root)
    assert [height for _, height in ticks] == pytest.approx([PLOT_HEIGHT * n / 4 for n in range(5)])
    grid = {
        BASELINE - float(el.attrib["y1"])
        for el in root.iter(SVG + "line")
        if el.attrib["y1"] == el.attrib["y2"] and float(el.attrib["x2"]) >= LEFT + PLOT_WIDTH
    }
    assert sorted(grid) == pytest.approx([height for _, height in ticks])
    tallest = max(float(el.attrib["height"]) for el in root.iterfind(f".//{SVG}rect[@data-minute]"))
    assert tallest == pytest.approx(PLOT_HEIGHT * 7 / 8)


def test_the_time_axis_has_a_tick_every_five_minutes_and_a_label_every_quarter_hour() -> None:
    root = parse(bar_chart("Sent per minute", MINUTES, [1] * 60))

    ticks = [
        el for el in root.iter(SVG + "line") if float(el.attrib["y2"]) > BASELINE
    ]  # below the baseline
    assert len(ticks) == 12  # 13:05, 13:10, … 14:00
    step = PLOT_WIDTH / 60
    first = (MINUTES.index(FIRST + timedelta(minutes=1)) + 0.5) * step + LEFT
    assert float(ticks[0].attrib["x1"]) == pytest.approx(first, abs=0.01)
    long_ticks = [el for el in ticks if float(el.attrib["y2"]) > BASELINE + 2]
    assert len(long_ticks) == 4  # the labelled quarter hours


@pytest.mark.parametrize(
    ("values", "unit", "whole", "labels"),
    [
        ([0], "", True, ["0", "1"]),
        ([2], "", True, ["0", "1", "2"]),
        ([42], "", True, ["0", "10", "20", "30", "40", "50"]),
        ([123_456], "", True, ["0", "50k", "100k", "150k"]),
        ([0.21], "s", False, ["0", "0.05 s", "0.10 s", "0.15 s", "0.20 s", "0.25 s"]),
        ([2.75], "s", False, ["0", "1 s", "2 s", "3 s"]),
        ([130], "s", False, ["0", "1 min", "2 min", "3 min"]),
        ([5400], "s", False, ["0", "20 min", "40 min", "60 min", "80 min", "100 min"]),
        ([4 * 3600], "s", False, ["0", "1 h", "2 h", "3 h", "4 h"]),
    ],
)
def test_value_axis_ticks_are_round_and_in_one_unit(
    values: list[float], unit: str, whole: bool, labels: list[str]
) -> None:
    axis = value_axis(values, unit, whole=whole)

    assert [axis.label(tick) for tick in axis.ticks] == labels
    assert axis.ticks[0] == 0 and axis.top >= max(values)


def test_hovering_anywhere_in_a_minute_shows_its_value() -> None:
    values: list[float | None] = [0] * 60
    values[0], values[1], values[59] = 3, None, 7

    root = parse(bar_chart("Sent per minute", MINUTES, values))

    titles = hover_titles(root)
    assert len(titles) == 60
    assert titles["2026-11-27T13:04Z"] == "13:04 UTC: 3"
    assert titles["2026-11-27T13:05Z"] == "13:05 UTC: no data"
    assert titles["2026-11-27T13:06Z"] == "13:06 UTC: 0"  # a zero-height bar: still there
    assert titles["2026-11-27T14:03Z"] == "14:03 UTC: 7"
    columns = list(root.iterfind(f".//{SVG}rect[@data-hover-minute]"))
    # Each as tall as the plot; side by side, together as wide as it.
    assert {(float(el.attrib["y"]), float(el.attrib["height"])) for el in columns} == {
        (TOP, PLOT_HEIGHT)
    }
    spans = [
        (float(el.attrib["x"]), float(el.attrib["x"]) + float(el.attrib["width"])) for el in columns
    ]
    assert spans[0][0] == LEFT and spans[-1][1] >= LEFT + PLOT_WIDTH
    assert all(left <= right for (_, right), (left, _) in itertools.pairwise(spans))
    # Drawn after the bars, so on top of them.
    order = [el.attrib.get("data-minute") or "hover" for el in root.iter(SVG + "rect")]
    assert order.index("hover") == 60


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
    assert [label for label, _ in value_ticks(root)][-2:] == ["80 min", "100 min"]
    p99[0] = 4 * 3600.0
    assert "highest 4.0 h" in line_chart("Lateness", MINUTES, {"p99": p99})


def test_a_line_chart_shows_every_series_of_a_minute_on_hover() -> None:
    p50: list[float | None] = [None] * 60
    p99: list[float | None] = [None] * 60
    p50[5], p99[5] = 0.25, 1.5

    titles = hover_titles(parse(line_chart("Lateness", MINUTES, {"p50": p50, "p99": p99})))

    assert titles["2026-11-27T13:09Z"] == "13:09 UTC: p50 0.25 s, p99 1.50 s"
    assert titles["2026-11-27T13:10Z"] == "13:10 UTC: p50 no data, p99 no data"
