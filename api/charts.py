"""The ops page's charts of the last hour, drawn as inline SVG: no script, no CDN, no I/O.

Each chart is one ``<svg role="img">`` whose ``aria-label`` and ``<title>`` summarise it in
words. It scales to its container (a ``viewBox``, ``width="100%"``, no pixel size). The time
axis has a tick every 5 minutes and a label in UTC every 15; the value axis has ticks at
round steps from 0 to a round top above the largest value (`value_axis`), each labelled,
with a grid line. Every minute is one element carrying ``data-minute``
(``2026-11-27T14:03Z``) and ``data-value`` (empty when the minute has no data), zeros
included, so a test can read the numbers back; over it, a transparent column as tall as the
plot (``data-hover-minute``) holds the minute's value in a ``<title>``, which the browser
shows on hover wherever the pointer is in that minute, even over a zero-height bar. Colours
are presentation attributes, not ``style``, so no Content-Security-Policy for inline styles
is needed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from markupsafe import Markup

from shared.ops.activity import Minute

# The drawing's own units; the browser scales them to the container's width. Small enough
# that the 10-unit text stays legible on a phone, large enough for 60 bars.
WIDTH, HEIGHT = 360, 150
LEFT, RIGHT, TOP, BOTTOM = 40, 6, 16, 18
PLOT_WIDTH, PLOT_HEIGHT = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
BASELINE = TOP + PLOT_HEIGHT
LABEL_EVERY_MINUTES = 15
TICK_EVERY_MINUTES = 5
MOST_VALUE_STEPS = 5  # the value axis' ticks above 0, at most: 6 labels fit 116 units
INK, MUTED, GRID = "#1d232a", "#5f6b76", "#dde2e7"
BAR = "#1f5fae"
LINES = ("#1f5fae", "#b35c00", "#1e6b35", "#a1261b")  # one per series, in order

Value = float | None


@dataclass(frozen=True)
class Chart:
    """One chart as the page shows it: an element id suffix, a caption and the SVG."""

    key: str
    caption: str
    svg: Markup


def last_hour_charts(minutes: Sequence[Minute]) -> list[Chart]:
    """The page's charts of ``shared.ops.activity.last_hour``: one per measure."""
    starts = [minute.start for minute in minutes]

    def bars(key: str, caption: str, values: Sequence[Value], summed: bool = True) -> Chart:
        return Chart(key, caption, bar_chart(caption, starts, values, summed=summed))

    lateness = {
        "p50": [minute.lateness_p50 for minute in minutes],
        "p99": [minute.lateness_p99 for minute in minutes],
    }
    return [
        bars("sent", "Sent per minute", [minute.sent for minute in minutes]),
        bars("retried", "Retried per minute", [minute.retried for minute in minutes]),
        bars(
            "dead-lettered",
            "Dead-lettered per minute",
            [minute.dead_lettered for minute in minutes],
        ),
        bars("missed", "Missed per minute", [minute.missed for minute in minutes]),
        Chart(
            "lateness",
            "Lateness per minute",
            line_chart("Lateness per minute", starts, lateness, unit="s"),
        ),
        bars(
            "queue-depth",
            "Queue depth (ready messages)",
            [minute.queue_depth for minute in minutes],
            summed=False,
        ),
    ]


def bar_chart(
    title: str,
    minutes: Sequence[datetime],
    values: Sequence[Value],
    unit: str = "",
    *,
    summed: bool = True,
) -> Markup:
    """One bar per minute (``<rect data-minute data-value>``), zero-height for 0 or None.

    ``minutes`` are the minutes' UTC starts, oldest first; ``values[i]`` is minute ``i``'s,
    None for no data. ``summed``: the values are counts, summarised by their total;
    otherwise samples (a queue's depth), summarised by the latest. Either way they are
    whole numbers, so the value axis steps by 1 at least.
    """
    _same_length(minutes, values)
    axis = value_axis(values, unit, whole=True)
    step = PLOT_WIDTH / max(len(minutes), 1)
    parts = [_frame(title, _bar_summary(title, minutes, values, unit, summed), axis)]
    parts.append(_time_axis(minutes))
    parts.append(Markup('<g fill="{}">').format(BAR))
    for index, (minute, value) in enumerate(zip(minutes, values, strict=True)):
        height = 0.0 if value is None else PLOT_HEIGHT * max(value, 0) / axis.top
        parts.append(
            Markup(
                '<rect x="{}" y="{}" width="{}" height="{}" data-minute="{}" data-value="{}"/>'
            ).format(
                _number(LEFT + index * step + step * 0.125),
                _number(BASELINE - height),
                _number(step * 0.75),
                _number(height),
                _stamp(minute),
                _data(value),
            )
        )
    parts.append(Markup("</g>"))
    parts.append(
        _hover_columns(
            minutes,
            [
                _point_label(minute, [("", value)], unit)
                for minute, value in zip(minutes, values, strict=True)
            ],
        )
    )
    parts.append(Markup("</svg>"))
    return Markup("").join(parts)


def line_chart(
    title: str,
    minutes: Sequence[datetime],
    series: Mapping[str, Sequence[Value]],
    unit: str = "s",
) -> Markup:
    """One line per series (e.g. ``{"p50": [...], "p99": [...]}``), broken where a minute
    has no data, with a point per minute (``<circle data-series data-minute data-value>``,
    radius 0 and ``data-value=""`` for no data)."""
    for values in series.values():
        _same_length(minutes, values)
    axis = value_axis([value for values in series.values() for value in values], unit)
    step = PLOT_WIDTH / max(len(minutes), 1)
    parts = [_frame(title, _line_summary(title, minutes, series, unit), axis)]
    parts.append(_time_axis(minutes))
    legend_x = WIDTH - RIGHT
    for (name, _), colour in reversed(list(zip(series.items(), LINES, strict=False))):
        parts.append(
            Markup(
                '<text x="{}" y="10" text-anchor="end" font-size="10" fill="{}">\u25cf {}</text>'
            ).format(_number(legend_x), colour, name)
        )
        legend_x -= 10 + 6 * (len(name) + 2)
    for (name, values), colour in zip(series.items(), LINES, strict=False):
        points = [
            None
            if value is None
            else (LEFT + (index + 0.5) * step, BASELINE - PLOT_HEIGHT * max(value, 0) / axis.top)
            for index, value in enumerate(values)
        ]
        path = _path(points)
        if path:
            parts.append(
                Markup('<path d="{}" fill="none" stroke="{}" stroke-width="1.5"/>').format(
                    path, colour
                )
            )
        parts.append(Markup('<g fill="{}">').format(colour))
        for minute, value, point in zip(minutes, values, points, strict=True):
            x, y = point if point is not None else (0.0, float(BASELINE))
            parts.append(
                Markup(
                    '<circle cx="{}" cy="{}" r="{}" data-series="{}" data-minute="{}" '
                    'data-value="{}"/>'
                ).format(
                    _number(x),
                    _number(y),
                    "0" if point is None else "1.8",
                    name,
                    _stamp(minute),
                    _data(value),
                )
            )
        parts.append(Markup("</g>"))
    labels = [
        _point_label(minute, [(name, values[index]) for name, values in series.items()], unit)
        for index, minute in enumerate(minutes)
    ]
    parts.append(_hover_columns(minutes, labels))
    parts.append(Markup("</svg>"))
    return Markup("").join(parts)


@dataclass(frozen=True)
class ValueAxis:
    """A value axis: ticks at a round step from 0 up to its top (the first tick at or
    above the largest value), labelled in one unit: a chart of lateness up to 90 minutes
    reads 0, 20 min, 40 min, … rather than a mix of seconds and minutes."""

    ticks: tuple[float, ...]  # in the values' own unit, from 0
    scale: float  # how many of the values' unit one label unit is (60 for minutes)
    unit: str  # the labels' unit: "", "s", "min" or "h"
    decimals: int

    @property
    def top(self) -> float:
        return self.ticks[-1]

    def label(self, value: float) -> str:
        if value == 0:
            return "0"
        shown = value / self.scale
        if self.decimals == 0 and abs(shown) >= 10_000:
            text = _compact(shown)
        else:
            text = f"{shown:,.{self.decimals}f}"
        return f"{text} {self.unit}" if self.unit else text


def value_axis(values: Sequence[Value], unit: str = "", *, whole: bool = False) -> ValueAxis:
    """The axis for ``values`` (None for no data): at most `MOST_VALUE_STEPS` steps of 1, 2
    or 5 times a power of ten. ``whole``: the values are whole numbers (counts), so the step
    is 1 at least. Seconds past two minutes are labelled in minutes, past two hours in
    hours, as `_human` writes them."""
    largest = max((value for value in values if value is not None and value > 0), default=0.0)
    scale, shown = 1.0, unit
    if unit == "s" and largest >= 7200:
        scale, shown = 3600.0, "h"
    elif unit == "s" and largest >= 120:
        scale, shown = 60.0, "min"
    span = largest / scale or 1.0
    step = _round_step(span / MOST_VALUE_STEPS)
    if whole or shown == "min":
        step = max(step, 1.0)
    count = max(math.ceil(span / step - 1e-9), 1)
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    ticks = tuple(round(index * step, decimals) * scale for index in range(count + 1))
    return ValueAxis(ticks=ticks, scale=scale, unit=shown, decimals=decimals)


def _round_step(least: float) -> float:
    """The smallest of 1, 2 and 5 times a power of ten that is at least ``least``."""
    power = 10.0 ** math.floor(math.log10(least))
    return next(f * power for f in (1, 2, 5, 10) if f * power >= least * (1 - 1e-9))


def _compact(value: float) -> str:
    """A large round tick value in few characters: 20k, 1.5M."""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.3g}{suffix}"
    return f"{value:,.0f}"


def _frame(title: str, summary: str, axis: ValueAxis) -> Markup:
    """The opening ``<svg>`` with its summary and the value axis: a labelled tick and a
    grid line at each of its values, the baseline darker."""
    parts = [
        Markup(
            '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="100%" '
            'role="img" aria-label="{summary}" font-family="system-ui, sans-serif" '
            'data-chart="{title}"><title>{summary}</title>'
        ).format(w=WIDTH, h=HEIGHT, summary=summary, title=title)
    ]
    for tick in axis.ticks:
        y = _number(BASELINE - PLOT_HEIGHT * tick / axis.top)
        parts.append(
            Markup(
                '<line x1="{tick_x}" y1="{y}" x2="{right}" y2="{y}" stroke="{stroke}"/>'
                '<text x="{label_x}" y="{y}" dy="3.5" text-anchor="end" font-size="10" '
                'fill="{muted}" data-tick="{value}">{label}</text>'
            ).format(
                tick_x=LEFT - 2,
                y=y,
                right=WIDTH - RIGHT,
                stroke=MUTED if tick == 0 else GRID,
                label_x=LEFT - 4,
                muted=MUTED,
                value=_data(tick),
                label=axis.label(tick),
            )
        )
    return Markup("").join(parts)


def _time_axis(minutes: Sequence[datetime]) -> Markup:
    """A tick every 5 minutes, longer with an ``HH:MM`` label every quarter hour, and "UTC"
    under the value axis."""
    step = PLOT_WIDTH / max(len(minutes), 1)
    parts = [
        Markup('<text x="{}" y="{}" text-anchor="end" font-size="9" fill="{}">UTC</text>').format(
            LEFT - 4, HEIGHT - 4, MUTED
        )
    ]
    for index, minute in enumerate(minutes):
        if minute.minute % TICK_EVERY_MINUTES:
            continue
        x = LEFT + (index + 0.5) * step
        labelled = minute.minute % LABEL_EVERY_MINUTES == 0
        parts.append(
            Markup('<line x1="{x}" y1="{base}" x2="{x}" y2="{tick}" stroke="{muted}"/>').format(
                x=_number(x), base=BASELINE, tick=BASELINE + (4 if labelled else 2), muted=MUTED
            )
        )
        if not labelled:
            continue
        # Labels at either end stay inside the drawing.
        anchor = "start" if index < 4 else "end" if index > len(minutes) - 5 else "middle"
        label_x = x - step / 2 if anchor == "start" else x + step / 2 if anchor == "end" else x
        parts.append(
            Markup(
                '<text x="{label_x}" y="{y}" text-anchor="{anchor}" font-size="10" '
                'fill="{ink}">{label}</text>'
            ).format(
                label_x=_number(label_x),
                y=HEIGHT - 4,
                anchor=anchor,
                ink=INK,
                label=minute.strftime("%H:%M"),
            )
        )
    return Markup("").join(parts)


def _hover_columns(minutes: Sequence[datetime], labels: Sequence[str]) -> Markup:
    """A transparent column over each minute, the plot's full height, whose ``<title>`` the
    browser shows while the pointer is anywhere in that minute. Drawn last, so on top."""
    step = PLOT_WIDTH / max(len(minutes), 1)
    parts = [Markup('<g fill="{}" fill-opacity="0" class="hover">').format(INK)]
    for index, (minute, label) in enumerate(zip(minutes, labels, strict=True)):
        parts.append(
            Markup(
                '<rect x="{}" y="{}" width="{}" height="{}" data-hover-minute="{}">'
                "<title>{}</title></rect>"
            ).format(
                _number(LEFT + index * step),
                TOP,
                # A hundredth wider than the step once rounded: no gap between columns.
                _number(math.ceil(step * 100) / 100 + 0.01),
                PLOT_HEIGHT,
                _stamp(minute),
                label,
            )
        )
    parts.append(Markup("</g>"))
    return Markup("").join(parts)


def _bar_summary(
    title: str, minutes: Sequence[datetime], values: Sequence[Value], unit: str, summed: bool
) -> str:
    """E.g. "Sent per minute, last hour: 42 in all, most 7 at 14:03 UTC"."""
    known = [
        (value, minute) for minute, value in zip(minutes, values, strict=True) if value is not None
    ]
    if not known:
        return f"{title}, last hour: no data"
    most, at = max(known, key=lambda pair: pair[0])  # the first minute of the maximum
    if summed:
        head = f"{_human(sum(value for value, _ in known), unit)} in all"
    else:
        head = f"latest {_human(known[-1][0], unit)}"
    if most <= 0:
        return f"{title}, last hour: {head}"
    return f"{title}, last hour: {head}, most {_human(most, unit)} at {at:%H:%M} UTC"


def _line_summary(
    title: str, minutes: Sequence[datetime], series: Mapping[str, Sequence[Value]], unit: str
) -> str:
    """E.g. "Lateness per minute, last hour: p50 highest 0.21 s at 14:03 UTC; p99 …"."""
    said = []
    for name, values in series.items():
        known = [(v, minute) for minute, v in zip(minutes, values, strict=True) if v is not None]
        if known:
            most, at = max(known, key=lambda pair: pair[0])
            said.append(f"{name} highest {_human(most, unit)} at {at:%H:%M} UTC")
        else:
            said.append(f"{name} no data")
    return f"{title}, last hour: {'; '.join(said) or 'no data'}"


def _point_label(minute: datetime, values: Sequence[tuple[str, Value]], unit: str) -> str:
    """E.g. "14:03 UTC: 7", or for series "14:03 UTC: p50 0.21 s, p99 no data"."""
    said = [
        f"{f'{name} ' if name else ''}{'no data' if value is None else _human(value, unit)}"
        for name, value in values
    ]
    return f"{minute:%H:%M} UTC: {', '.join(said)}"


def _path(points: Sequence[tuple[float, float] | None]) -> str:
    """An SVG path through the points, lifting the pen over the missing ones."""
    commands = []
    pen_down = False
    for point in points:
        if point is None:
            pen_down = False
            continue
        commands.append(f"{'L' if pen_down else 'M'}{_number(point[0])} {_number(point[1])}")
        pen_down = True
    return " ".join(commands)


def _same_length(minutes: Sequence[datetime], values: Sequence[Value]) -> None:
    if len(minutes) != len(values):
        raise ValueError(f"{len(values)} values for {len(minutes)} minutes")


def _stamp(minute: datetime) -> str:
    return minute.strftime("%Y-%m-%dT%H:%MZ")


def _data(value: Value) -> str:
    """A value as ``data-value`` holds it: exact (an int as is, a float round-tripping)."""
    if value is None:
        return ""
    return str(value) if isinstance(value, int) else repr(float(value))


def _number(value: float) -> str:
    """A coordinate, to a hundredth of a unit."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _human(value: float, unit: str) -> str:
    """A value for people: counts as integers, seconds to three significant places, and
    long durations in minutes or hours (lateness after an outage), so labels stay short."""
    if unit == "s" and abs(value) >= 120:
        minutes = value / 60
        return f"{minutes:.0f} min" if abs(minutes) < 120 else f"{minutes / 60:,.1f} h"
    if float(value).is_integer() and abs(value) < 1e15:
        text = f"{int(value):,}"
    elif abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}" if unit else text
