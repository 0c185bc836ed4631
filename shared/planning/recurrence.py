"""Recurrence: a task's RRULE expanded in its own time zone, each occurrence pinned to an instant.

A recurring task repeats a local wall time ("every Monday 09:00 in Europe/Paris"). Its rule
(SPEC §2.1, a subset of RFC 5545) is expanded by python-dateutil on naive wall times in the
task's zone, from the task's due date (DTSTART) on, and each wall time is then turned into a
UTC instant. Plain functions over plain values: the API, the producer and the CLI call them and
none re-derives occurrences; no database, no Flask, no Dramatiq.

The DST rule (SPEC §2.1, RFC 5545 §3.3.5): a wall time in a spring-forward gap moves forward
by the gap's length; a wall time in a fall-back overlap is taken once, at its first (earlier)
instant. In Europe/Paris clocks jump from 02:00 to 03:00 on 28 March 2027, so a daily 02:30
falls at 03:30 CEST (01:30 UTC) that day; they fall back from 03:00 to 02:00 on 31 October
2027, so 02:30 happens twice and the task falls once, at 02:30 CEST (00:30 UTC), never also
at 02:30 CET. Occurrences come out in strictly increasing instants: two wall times landing on
one instant (02:30 moved onto the rule's own 03:30) give one occurrence, and a wall time moved
past a later one is put back in time order, so nothing is doubled and nothing is skipped.

Choices made here, each explained where it is implemented:

- COUNT counts occurrences (distinct instants, in time order), and `Occurrence.index` is the
  0-based position among them: ``COUNT=5`` is five reminders even across a DST change.
- ``UNTIL=YYYYMMDD`` (a date) means up to the end of that day in the task's time zone;
  ``UNTIL=YYYYMMDDTHHMMSSZ`` is an instant. Both are inclusive.
- The search for a next occurrence is bounded: a rule with none in the next 400 years (one
  Gregorian cycle, after which the calendar repeats) has ended.
- BYSETPOS picks from the whole period (week, month, ...) and then drops what falls before the
  series start, also in the start's own week (dateutil would cut that week at DTSTART).
"""

from __future__ import annotations

import functools
import heapq
import math
import re
import zoneinfo
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import MAXYEAR, UTC, date, datetime, timedelta, tzinfo
from typing import Literal

from dateutil import rrule as du

from shared.planning.rules import normalize_due_at

FREQUENCIES = ("MINUTELY", "HOURLY", "DAILY", "WEEKLY", "MONTHLY", "YEARLY")
WEEKDAYS = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")
MAX_RULE_LENGTH = 500
MAX_ZONE_NAME_LENGTH = 64
MAX_INTERVAL = 1000
MAX_COUNT = 10_000

# The rule's parts in the order of RFC 5545's recur grammar, which is also the order of Rule.text.
_PARTS = (
    "FREQ",
    "UNTIL",
    "COUNT",
    "INTERVAL",
    "BYMINUTE",
    "BYHOUR",
    "BYDAY",
    "BYMONTHDAY",
    "BYMONTH",
    "BYSETPOS",
    "WKST",
)
# Named so that the answer says "not supported" rather than "unknown": real RFC 5545 (and RFC
# 7529, and dateutil's own BYEASTER) parts that the service chose to leave out.
_UNSUPPORTED_PARTS = frozenset({"BYSECOND", "BYWEEKNO", "BYYEARDAY", "BYEASTER", "RSCALE", "SKIP"})
_FREQ_CODES = {
    "YEARLY": du.YEARLY,
    "MONTHLY": du.MONTHLY,
    "WEEKLY": du.WEEKLY,
    "DAILY": du.DAILY,
    "HOURLY": du.HOURLY,
    "MINUTELY": du.MINUTELY,
}
# RFC 5545 §3.3.10: an ordinal counts within the month (MONTHLY) or the year (YEARLY).
_MAX_ORDINAL = {"MONTHLY": 5, "YEARLY": 53}
_LONGEST_MONTHS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)

_NAME = re.compile(r"[A-Z][A-Z0-9-]*")
_UNSIGNED = re.compile(r"[0-9]{1,5}")
_SIGNED = re.compile(r"[+-]?[0-9]{1,5}")
_DAY = re.compile(r"([+-]?[0-9]{1,2})?(MO|TU|WE|TH|FR|SA|SU)")
_UNTIL_INSTANT = re.compile(r"[0-9]{8}T[0-9]{6}Z")
_UNTIL_DATE = re.compile(r"[0-9]{8}")

# datetime requires every UTC offset to lie strictly within ±24 h, so a wall time `w` is never
# pinned earlier than `w - 24 h`, and two wall times 48 h apart never resolve in reverse order.
_MAX_OFFSET = timedelta(hours=24)
_LOOKBACK = 2 * _MAX_OFFSET
# The Gregorian calendar (leap years and weekdays) repeats every 400 years exactly.
_CYCLE_YEARS = 400
_CYCLE = timedelta(days=146_097)
# validate() measures the gaps between the first this-many wall times (or one cycle's worth).
GAP_CHECK_OCCURRENCES = 1000

RecurrenceField = Literal["time_zone", "recurrence"]


class RecurrenceError(ValueError):
    """A time zone or rule the service does not accept.

    ``str(error)`` is one sentence naming the problem, fit for an HTTP 422 detail; ``field``
    names the input at fault: ``"time_zone"`` or ``"recurrence"``.
    """

    def __init__(self, message: str, *, field: RecurrenceField) -> None:
        super().__init__(message)
        self.field: RecurrenceField = field

    def __reduce__(self) -> tuple[object, tuple[str]]:
        # The default rebuilds from args alone and would lose `field` (pickle, copy).
        return functools.partial(type(self), field=self.field), (str(self),)


def _rule_error(message: str) -> RecurrenceError:
    return RecurrenceError(message, field="recurrence")


def _shown(value: str) -> str:
    """A piece of user input quoted for an error message, cut short if long."""
    return repr(value if len(value) <= 40 else value[:37] + "...")


# -- time zones -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _zone_names() -> frozenset[str]:
    # available_timezones() lists the IANA names from the system database and the tzdata
    # package; "localtime" (the host's own zone, when /usr/share/zoneinfo has the link) and
    # "Factory" (tzdata's placeholder, offset "-00") name no place a user lives in.
    return frozenset(zoneinfo.available_timezones()) - {"localtime", "Factory"}


@functools.lru_cache(maxsize=1024)
def time_zone(name: str) -> zoneinfo.ZoneInfo:
    """The IANA zone called `name` ("Europe/Paris"; "UTC" always works).

    Only names from the IANA database are accepted, so file paths, "../x", "localtime" and
    names with NUL never reach the file system. Cached: it is called per task.

    Raises:
        RecurrenceError: field "time_zone", for an empty, over-long or unknown name.
    """
    if not isinstance(name, str):
        raise RecurrenceError("the time zone must be a string", field="time_zone")
    if not name:
        raise RecurrenceError("the time zone is empty", field="time_zone")
    if len(name) > MAX_ZONE_NAME_LENGTH:
        raise RecurrenceError(
            f"the time zone name is longer than {MAX_ZONE_NAME_LENGTH} characters",
            field="time_zone",
        )
    if name not in _zone_names():
        raise RecurrenceError(f"unknown time zone {_shown(name)}", field="time_zone")
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise RecurrenceError(f"unknown time zone {_shown(name)}", field="time_zone") from exc


def resolve(wall: datetime, zone: tzinfo) -> datetime:
    """The instant (aware, UTC) of the naive local wall time `wall` in `zone`.

    SPEC §2.1 / RFC 5545 §3.3.5: a wall time the clocks skipped (spring-forward gap) moves
    forward by the gap's length — 02:30 in Europe/Paris on 28 March 2027 is 03:30 CEST, 01:30
    UTC; a wall time the clocks showed twice (fall-back overlap) is taken at its first instant —
    02:30 on 31 October 2027 is 02:30 CEST, 00:30 UTC. For zoneinfo this is what ``fold=0``
    gives in both cases (PEP 495: the offset from before the transition); the code below finds
    the two cases itself, from both folds' offsets and a round trip, rather than rely on it.
    """
    if wall.tzinfo is not None:
        raise ValueError("resolve() takes a naive local wall time")
    offsets = set()
    for fold in (0, 1):
        offset = wall.replace(tzinfo=zone, fold=fold).utcoffset()
        if offset is None:
            raise ValueError(f"{zone!r} gives no UTC offset for {wall.isoformat()}")
        offsets.add(offset)
    candidates = sorted(wall - offset for offset in offsets)  # naive UTC, earliest first
    if len(candidates) == 1:
        return candidates[0].replace(tzinfo=UTC)
    shows_wall = [c for c in candidates if _wall_at(c.replace(tzinfo=UTC), zone) == wall]
    if len(shows_wall) == 2:
        # An overlap: the clocks showed `wall` twice. Take it once, the first time.
        return candidates[0].replace(tzinfo=UTC)
    if not shows_wall:
        # A gap: the clocks never showed `wall`. Reading it with the offset from before the
        # jump (the smaller one, clocks went forward) is the later candidate, which the clocks
        # show as `wall` plus the gap's length.
        return candidates[1].replace(tzinfo=UTC)
    # The folds disagree outside any transition (a tzinfo other than zoneinfo): the one
    # reading that round-trips is the instant.
    return shows_wall[0].replace(tzinfo=UTC)


def _wall_at(instant: datetime, zone: tzinfo) -> datetime:
    """The naive wall time the clocks in `zone` show at `instant`."""
    return instant.astimezone(zone).replace(tzinfo=None)


# -- rules ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """A recurrence rule as accepted by `parse_rule`; empty tuples are parts not given.

    ``text`` is the normalised RRULE value: upper case, parts in RFC 5545 order, values sorted
    without repeats, defaults (INTERVAL=1, WKST=MO) left out — equal rules have equal text.
    """

    text: str
    freq: str
    interval: int = 1
    count: int | None = None
    until: datetime | None = None  # UNTIL=...T...Z: aware UTC, inclusive
    until_date: date | None = None  # UNTIL=YYYYMMDD: the last local date, inclusive
    by_minute: tuple[int, ...] = ()
    by_hour: tuple[int, ...] = ()
    by_day: tuple[tuple[int, int], ...] = ()  # (ordinal, weekday 0=MO..6=SU); ordinal 0: every
    by_month_day: tuple[int, ...] = ()
    by_month: tuple[int, ...] = ()
    by_set_pos: tuple[int, ...] = ()
    week_start: int = 0


def parse_rule(text: str) -> Rule:
    """The rule `text`, an RRULE value in the subset of SPEC §2.1, checked and normalised.

    Accepted: FREQ (MINUTELY, HOURLY, DAILY, WEEKLY, MONTHLY, YEARLY; required), INTERVAL
    (1..1000), COUNT (1..10000) or UNTIL (a UTC date-time ``20271231T235959Z`` or a date
    ``20271231``, meaning to the end of that day in the task's zone), BYDAY (MO..SU; with an
    ordinal such as 1MO or -1FR only for MONTHLY, ±1..5, and YEARLY, ±1..53), BYMONTHDAY
    (±1..31, not with WEEKLY: RFC 5545 forbids it), BYMONTH (1..12), BYSETPOS (±1..366, with
    another BY part), BYHOUR (0..23), BYMINUTE (0..59), WKST (MO..SU). Case-insensitive, each
    part at most once, at most 500 characters, no "RRULE:" prefix, no DTSTART.

    Raises:
        RecurrenceError: field "recurrence", naming the first problem found.
    """
    if not isinstance(text, str):
        raise _rule_error("the rule must be a string")
    if not text:
        raise _rule_error("the rule is empty")
    if len(text) > MAX_RULE_LENGTH:
        raise _rule_error(f"the rule is longer than {MAX_RULE_LENGTH} characters")
    upper = text.upper()
    if upper.startswith("RRULE:"):
        raise _rule_error("give the rule without the 'RRULE:' prefix")
    if "DTSTART" in upper:
        raise _rule_error("DTSTART cannot be given: the task's due_at starts the series")
    if any(character.isspace() for character in text):
        raise _rule_error("the rule must not contain spaces or line breaks")

    values: dict[str, str] = {}
    for part in upper.split(";"):
        if not part:
            raise _rule_error("the rule has an empty part (';;' or a ';' at an end)")
        name, equals, value = part.partition("=")
        if not equals:
            raise _rule_error(f"{_shown(part)} is not a NAME=VALUE part")
        if not _NAME.fullmatch(name):
            raise _rule_error(f"{_shown(name)} is not a rule part name")
        if name in _UNSUPPORTED_PARTS or name.startswith("X-"):
            raise _rule_error(f"{name if len(name) <= 40 else _shown(name)} is not supported")
        if name not in _PARTS:
            raise _rule_error(f"unknown rule part {_shown(name)}")
        if name in values:
            raise _rule_error(f"{name} is given more than once")
        if not value:
            raise _rule_error(f"{name} has no value")
        values[name] = value

    if "FREQ" not in values:
        raise _rule_error("FREQ is required")
    freq = values["FREQ"]
    if freq not in _FREQ_CODES:
        if freq == "SECONDLY":
            raise _rule_error("FREQ=SECONDLY is not supported")
        raise _rule_error("FREQ must be one of " + ", ".join(FREQUENCIES))
    if "COUNT" in values and "UNTIL" in values:
        raise _rule_error("COUNT and UNTIL cannot both be given")

    until, until_date = _parse_until(values.get("UNTIL"))
    rule = Rule(
        text="",
        freq=freq,
        interval=_parse_number(values, "INTERVAL", 1, MAX_INTERVAL) or 1,
        count=_parse_number(values, "COUNT", 1, MAX_COUNT),
        until=until,
        until_date=until_date,
        by_minute=_parse_numbers(values, "BYMINUTE", 0, 59),
        by_hour=_parse_numbers(values, "BYHOUR", 0, 23),
        by_day=_parse_days(values.get("BYDAY"), freq),
        by_month_day=_parse_numbers(values, "BYMONTHDAY", 1, 31, signed=True),
        by_month=_parse_numbers(values, "BYMONTH", 1, 12),
        by_set_pos=_parse_numbers(values, "BYSETPOS", 1, 366, signed=True),
        week_start=_parse_weekday(values.get("WKST")),
    )
    if rule.by_month_day and freq == "WEEKLY":
        raise _rule_error("BYMONTHDAY cannot be used with FREQ=WEEKLY")
    if rule.by_set_pos and not (
        rule.by_minute or rule.by_hour or rule.by_day or rule.by_month_day or rule.by_month
    ):
        raise _rule_error(
            "BYSETPOS needs another BY part (BYDAY, BYMONTHDAY, BYMONTH, BYHOUR or BYMINUTE)"
        )
    return replace(rule, text=_rule_text(rule))


def _parse_number(values: dict[str, str], name: str, low: int, high: int) -> int | None:
    value = values.get(name)
    if value is None:
        return None
    if not _UNSIGNED.fullmatch(value) or not low <= int(value) <= high:
        raise _rule_error(f"{name} must be a whole number from {low} to {high}")
    return int(value)


def _parse_numbers(
    values: dict[str, str], name: str, low: int, high: int, *, signed: bool = False
) -> tuple[int, ...]:
    value = values.get(name)
    if value is None:
        return ()
    pattern = _SIGNED if signed else _UNSIGNED
    numbers = set()
    for item in value.split(","):
        # Signed parts count from the end with negative numbers: -1 is the last.
        if not pattern.fullmatch(item) or not low <= (abs if signed else int)(int(item)) <= high:
            allowed = f"{low} to {high}" + (f" or -{high} to -{low}" if signed else "")
            raise _rule_error(f"{name} value {_shown(item)} is not a whole number from {allowed}")
        numbers.add(int(item))
    return tuple(sorted(numbers))


def _parse_days(value: str | None, freq: str) -> tuple[tuple[int, int], ...]:
    if value is None:
        return ()
    days = set()
    for item in value.split(","):
        match = _DAY.fullmatch(item)
        if not match:
            raise _rule_error(
                f"BYDAY value {_shown(item)} is not a weekday such as MO or an ordinal"
                " weekday such as 1MO or -1FR"
            )
        ordinal = int(match[1]) if match[1] else 0
        if match[1] and freq not in _MAX_ORDINAL:
            # RFC 5545 §3.3.10 forbids it, and dateutil would silently drop the ordinal
            # (rrule.py line 614) and mean every such weekday.
            raise _rule_error(
                "BYDAY ordinals such as 1MO are only allowed with FREQ=MONTHLY or FREQ=YEARLY"
            )
        if match[1] and not 1 <= abs(ordinal) <= _MAX_ORDINAL[freq]:
            most = _MAX_ORDINAL[freq]
            raise _rule_error(
                f"BYDAY ordinal in {_shown(item)} must be from 1 to {most} or -{most} to -1"
                f" with FREQ={freq}"
            )
        days.add((ordinal, WEEKDAYS.index(match[2])))
    return tuple(sorted(days, key=lambda day: (day[1], day[0])))


def _parse_weekday(value: str | None) -> int:
    if value is None:
        return 0  # RFC 5545's default week start, Monday
    if value not in WEEKDAYS:
        raise _rule_error("WKST must be one of " + ", ".join(WEEKDAYS))
    return WEEKDAYS.index(value)


def _parse_until(value: str | None) -> tuple[datetime | None, date | None]:
    if value is None:
        return None, None
    try:
        if _UNTIL_INSTANT.fullmatch(value):
            return datetime.strptime(value, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC), None
        if _UNTIL_DATE.fullmatch(value):
            # RFC 5545 wants a date-time here; a bare date is what calendar users type, and
            # a date has no zone of its own, so it is the task's local date.
            return None, datetime.strptime(value, "%Y%m%d").date()
    except ValueError:
        pass
    raise _rule_error(
        "UNTIL must be a UTC date-time such as 20271231T235959Z or a date such as 20271231"
    )


def _rule_text(rule: Rule) -> str:
    def numbers(values: tuple[int, ...]) -> str:
        return ",".join(str(value) for value in values)

    parts = [f"FREQ={rule.freq}"]
    if rule.until is not None:
        parts.append(f"UNTIL={rule.until:%Y%m%dT%H%M%SZ}")
    if rule.until_date is not None:
        parts.append(f"UNTIL={rule.until_date:%Y%m%d}")
    if rule.count is not None:
        parts.append(f"COUNT={rule.count}")
    if rule.interval != 1:
        parts.append(f"INTERVAL={rule.interval}")
    if rule.by_minute:
        parts.append(f"BYMINUTE={numbers(rule.by_minute)}")
    if rule.by_hour:
        parts.append(f"BYHOUR={numbers(rule.by_hour)}")
    if rule.by_day:
        days = (f"{ordinal or ''}{WEEKDAYS[weekday]}" for ordinal, weekday in rule.by_day)
        parts.append("BYDAY=" + ",".join(days))
    if rule.by_month_day:
        parts.append(f"BYMONTHDAY={numbers(rule.by_month_day)}")
    if rule.by_month:
        parts.append(f"BYMONTH={numbers(rule.by_month)}")
    if rule.by_set_pos:
        parts.append(f"BYSETPOS={numbers(rule.by_set_pos)}")
    if rule.week_start != 0:
        parts.append(f"WKST={WEEKDAYS[rule.week_start]}")
    return ";".join(parts)


# -- series and occurrences -------------------------------------------------------------------


@dataclass(frozen=True)
class Series:
    """A task's due dates: `start` (its due_at, aware; DTSTART) repeated by `rule` in `time_zone`.

    ``rule`` None is a one-off task: a single occurrence at `start`.
    """

    start: datetime
    time_zone: str
    rule: Rule | None


@dataclass(frozen=True)
class Occurrence:
    """One due date of a series.

    Compare instants with `due_at`: by PEP 495 an aware time inside a fall-back overlap (as
    `local_due_at` can be) is never ``==`` to a datetime in another zone, even the same instant.
    """

    due_at: datetime  # the instant: UTC, aware, whole seconds
    local_due_at: datetime  # the same instant in the series' zone (its offset in utcoffset())
    wall: datetime  # the naive wall time the rule produced, before the DST rule; for `resume`
    index: int  # 0-based position among the series' occurrences (what COUNT counts)


@dataclass(frozen=True)
class _Pattern:
    """A rule with everything dateutil would take from its DTSTART written out.

    Spelled out like this the rule can be handed to dateutil from the start of any of the
    series' periods (see `period_start`) and yields exactly the series' wall times from there
    on: that is what lets `occurrences` resume without expanding from the series start.
    """

    freq: int  # dateutil's code: YEARLY=0 ... MINUTELY=5, so `<` means "coarser than"
    interval: int
    week_start: int
    by_month: tuple[int, ...] | None
    by_month_day: tuple[int, ...] | None
    by_weekday: tuple[du.weekday, ...] | None
    by_hour: tuple[int, ...] | None
    by_minute: tuple[int, ...] | None
    by_second: tuple[int, ...]
    by_set_pos: tuple[int, ...] | None

    @classmethod
    def of(cls, rule: Rule, start: datetime) -> _Pattern:
        freq = _FREQ_CODES[rule.freq]
        by_month = rule.by_month or None
        by_month_day = rule.by_month_day or None
        by_weekday = tuple(du.weekday(day, ordinal or None) for ordinal, day in rule.by_day)
        if not rule.by_month_day and not rule.by_day:
            # RFC 5545 and dateutil (rrule.py lines 520-531) take the day from DTSTART.
            if freq == du.YEARLY:
                by_month = by_month or (start.month,)
                by_month_day = (start.day,)
            elif freq == du.MONTHLY:
                by_month_day = (start.day,)
            elif freq == du.WEEKLY:
                by_weekday = (du.weekday(start.weekday()),)
        return cls(
            freq=freq,
            interval=rule.interval,
            week_start=rule.week_start,
            by_month=by_month,
            by_month_day=by_month_day,
            by_weekday=by_weekday or None,
            by_hour=rule.by_hour or ((start.hour,) if freq < du.HOURLY else None),
            by_minute=rule.by_minute or ((start.minute,) if freq < du.MINUTELY else None),
            by_second=(start.second,),
            by_set_pos=rule.by_set_pos or None,
        )

    def rrule(self, dtstart: datetime) -> du.rrule:
        return du.rrule(
            self.freq,
            dtstart=dtstart,
            interval=self.interval,
            # Always given: dateutil's default is calendar.firstweekday(), a process-wide
            # setting (rrule.py line 496), not RFC 5545's Monday.
            wkst=self.week_start,
            bymonth=self.by_month,
            bymonthday=self.by_month_day,
            byweekday=self.by_weekday,
            byhour=self.by_hour,
            byminute=self.by_minute,
            bysecond=self.by_second,
            bysetpos=self.by_set_pos,
        )

    def never_matches(self) -> bool:
        """True for rules the calendar alone rules out (BYMONTH=2;BYMONTHDAY=30, ...).

        Only a shortcut: `_walls` is bounded without it, but for a daily or finer rule its
        bound is hundreds of years of days, worth skipping for the mistakes users make.
        """
        months = self.by_month or range(1, 13)
        if self.by_month_day is not None and not any(
            abs(day) <= _LONGEST_MONTHS[month - 1] for month in months for day in self.by_month_day
        ):
            return True
        if self.by_set_pos is not None:
            times_a_day = len(self.by_hour or ()) * len(self.by_minute or ()) * len(self.by_second)
            most = {
                du.YEARLY: 366 * times_a_day,
                du.MONTHLY: 31 * times_a_day,
                du.WEEKLY: len({day.weekday for day in self.by_weekday or du.weekdays})
                * times_a_day,
                du.DAILY: times_a_day,
                du.HOURLY: len(self.by_minute or ()) * len(self.by_second),
                du.MINUTELY: len(self.by_second),
            }[self.freq]
            if all(abs(position) > most for position in self.by_set_pos):
                return True
        return False

    def period_start(self, wall: datetime) -> datetime:
        """The start of the period (year, month, week from WKST, ...) that `wall` falls in.

        dateutil builds the BYSETPOS set of a period from its first day (week: its DTSTART
        day, rrule.py line 1278), so it is always started at a period's start, with walls
        before the real start dropped afterwards.
        """
        if self.freq == du.YEARLY:
            return datetime(wall.year, 1, 1)
        if self.freq == du.MONTHLY:
            return datetime(wall.year, wall.month, 1)
        midnight = datetime(wall.year, wall.month, wall.day)
        if self.freq == du.WEEKLY:
            return midnight - timedelta(days=(wall.weekday() - self.week_start) % 7)
        if self.freq == du.DAILY:
            return midnight
        if self.freq == du.HOURLY:
            return wall.replace(minute=0, second=0, microsecond=0)
        return wall.replace(second=0, microsecond=0)

    def periods_before(self, period: datetime, span: timedelta) -> datetime:
        """A period start of the same series at least `span` before `period` (a period start).

        Raises:
            ValueError, OverflowError: when that is before year 1.
        """
        if self.freq == du.YEARLY:
            return period.replace(year=period.year - self.interval)
        if self.freq == du.MONTHLY:
            months = period.year * 12 + period.month - 1 - self.interval
            return datetime(months // 12, months % 12 + 1, 1)
        step = {
            du.WEEKLY: timedelta(weeks=self.interval),
            du.DAILY: timedelta(days=self.interval),
            du.HOURLY: timedelta(hours=self.interval),
            du.MINUTELY: timedelta(minutes=self.interval),
        }[self.freq]
        return period - step * math.ceil(span / step)


def _window(pattern: _Pattern, period: datetime) -> Iterator[datetime]:
    """The wall times from the period starting at `period`, for at least 400 years.

    dateutil ends a rule only at COUNT, at the first instance past UNTIL, or at year 9999: a
    rule with no further match never reaches an instance to compare with UNTIL and runs on to
    9999 (rrule.py lines 885-905, 919). Run it that close to 9999 instead: the calendar
    repeats every 400 years, so the rule is expanded a whole number of cycles later, where
    dateutil's own end comes 400 to 800 years after `period`, and moved back.
    """
    shift = _CYCLE_YEARS * max(0, (MAXYEAR - _CYCLE_YEARS + 1 - period.year) // _CYCLE_YEARS)
    try:
        walls = iter(pattern.rrule(period.replace(year=period.year + shift)))
    except ValueError:
        # BYHOUR/BYMINUTE that the INTERVAL never reaches (rrule.py line 1090).
        return
    while True:
        try:
            wall = next(walls)
        except (StopIteration, ValueError):
            # ValueError: the same for MINUTELY, found while iterating (rrule.py line 990).
            return
        yield wall.replace(year=wall.year - shift)


def _walls(pattern: _Pattern, anchor: datetime, not_before: datetime) -> Iterator[datetime]:
    """The series' wall times from the period of `anchor` on that are >= `not_before`.

    `anchor` is the series start or a period start of the series. Ends when 400 years or more
    pass without a wall time: for INTERVAL=1 the calendar has then repeated and none will
    ever come; a larger INTERVAL whose next wall time is further away counts as ended too.
    """
    if pattern.never_matches():
        return
    period = pattern.period_start(anchor)
    floor = not_before
    while True:
        last = None
        for wall in _window(pattern, period):
            if wall >= floor:
                yield wall
                last = wall
        if last is None:
            return
        period, floor = pattern.period_start(last), last + timedelta(seconds=1)


def _in_time_order(
    walls: Iterator[datetime],
    instant_of: Callable[[datetime], datetime],
    stop_after: datetime | None,
) -> Iterator[tuple[datetime, datetime]]:
    """(instant, wall) for each wall time, sorted by instant, then wall.

    Wall times come in order, but their instants need not: one moved forward out of a gap can
    land after the wall times that follow it (a gap longer than the rule's spacing). An
    instant is released once the wall times have gone 24 h past it, as none after that can
    resolve before it. Wall times stop being read once their instants must all be after
    `stop_after`.
    """
    pending: list[tuple[datetime, datetime]] = []
    for wall in walls:
        earliest = (wall - _MAX_OFFSET).replace(tzinfo=UTC)
        while pending and pending[0][0] <= earliest:
            yield heapq.heappop(pending)
        if stop_after is not None and earliest > stop_after:
            break
        heapq.heappush(pending, (instant_of(wall), wall))
    while pending:
        yield heapq.heappop(pending)


def _until_instant(rule: Rule, zone: tzinfo) -> datetime | None:
    """The rule's UNTIL as the last instant it allows."""
    if rule.until is not None:
        return rule.until
    if rule.until_date is not None:
        next_day = datetime.combine(rule.until_date + timedelta(days=1), datetime.min.time())
        return resolve(next_day, zone) - timedelta(seconds=1)
    return None


def _expand(
    rule: Rule,
    start: datetime,
    zone: tzinfo,
    *,
    resume: Occurrence | None,
    stop_after: datetime | None,
) -> Iterator[Occurrence]:
    """Every occurrence of a recurring series in order (from after `resume`, if given)."""
    start_wall = _wall_at(start, zone)
    pattern = _Pattern.of(rule, start_wall)
    until = _until_instant(rule, zone)
    if until is not None and (stop_after is None or until < stop_after):
        stop_after = until

    anchor, previous, index = start_wall, None, 0
    if resume is not None:
        # Wall times just before resume.wall can resolve after it (a gap moved them forward),
        # so the rule is restarted a couple of days of periods earlier, still on its INTERVAL
        # grid, and whatever resolves at or before the resume point is dropped: it was
        # produced then.
        previous, index = resume.due_at, resume.index + 1
        try:
            earlier = pattern.periods_before(pattern.period_start(resume.wall), _LOOKBACK)
        except (ValueError, OverflowError):
            earlier = None
        if earlier is not None and earlier > pattern.period_start(start_wall):
            anchor = earlier
    if rule.count is not None and index >= rule.count:
        return

    def instant_of(wall: datetime) -> datetime:
        # The series start is the instant it was given as, even when its wall time occurs
        # twice and it is the second one.
        return start if wall == start_wall else resolve(wall, zone)

    walls = _walls(pattern, anchor, start_wall)
    for instant, wall in _in_time_order(walls, instant_of, stop_after):
        if rule.count is not None and index >= rule.count:
            return
        if stop_after is not None and instant > stop_after:
            return
        if previous is not None and instant <= previous:
            # The same instant again (a wall time moved out of a gap onto the rule's next
            # one), or one that came before the resume point.
            continue
        yield Occurrence(instant, instant.astimezone(zone), wall, index)
        previous, index = instant, index + 1


def occurrences(
    series: Series,
    *,
    after: datetime | None = None,
    until: datetime | None = None,
    limit: int | None = None,
    resume: Occurrence | None = None,
    zone: tzinfo | None = None,
) -> Iterator[Occurrence]:
    """The series' occurrences in order, those with ``after <= due_at <= until``.

    Both bounds are optional and `limit` caps how many; a recurring series without COUNT or
    UNTIL never ends, so callers pass `until` or `limit`. Without `resume` the rule is
    expanded from the series start, which costs more the older the series. `resume` is an
    occurrence this function produced earlier for the same series and rule: expansion
    continues strictly after its instant from a couple of days before its wall time, on the
    rule's INTERVAL grid, without going back to the start; indexes continue from its index.
    `zone` replaces the zone named by the series (tests pass rules from another tzdata
    release to simulate an update).

    The iterator never runs unbounded without yielding: a rule with no further occurrence in
    400 years ends it (see `_walls`).

    Raises:
        RecurrenceError: field "time_zone", for a series whose zone is unknown.
        ValueError: for a naive `start`, `after` or `until`.
    """
    zone = zone if zone is not None else time_zone(series.time_zone)
    start = normalize_due_at(series.start)
    if after is not None:
        after = normalize_due_at(after) if after.microsecond == 0 else _round_up(after)
    if until is not None:
        until = normalize_due_at(until)
    if limit is not None and limit <= 0:
        return iter(())
    if series.rule is None:
        occurrence = Occurrence(start, start.astimezone(zone), _wall_at(start, zone), 0)
        everything: Iterator[Occurrence] = iter(
            () if resume is not None and resume.due_at >= start else (occurrence,)
        )
    else:
        everything = _expand(series.rule, start, zone, resume=resume, stop_after=until)
    return _bounded(everything, after, until, limit)


def _round_up(moment: datetime) -> datetime:
    return normalize_due_at(moment) + timedelta(seconds=1)


def _bounded(
    occurrences: Iterator[Occurrence],
    after: datetime | None,
    until: datetime | None,
    limit: int | None,
) -> Iterator[Occurrence]:
    produced = 0
    for occurrence in occurrences:
        if until is not None and occurrence.due_at > until:
            return
        if after is not None and occurrence.due_at < after:
            continue
        yield occurrence
        produced += 1
        if limit is not None and produced >= limit:
            return


def next_occurrence(series: Series, now: datetime) -> Occurrence | None:
    """The first occurrence due after `now` (None when the series has ended)."""
    # `after` is inclusive and rounded up to a whole second: one microsecond later makes it
    # strict.
    return next(occurrences(series, after=now + timedelta(microseconds=1), limit=1), None)


def validate(series: Series, min_interval_seconds: int) -> None:
    """Check that the series has an occurrence and that its occurrences are far enough apart.

    The spacing is measured between consecutive wall times of the rule, so a DST change never
    makes a valid rule invalid; it is checked over the first 1000 of them (fewer with COUNT
    or UNTIL), or 400 years. A one-off series only needs a known zone.

    Raises:
        RecurrenceError: field "time_zone" for an unknown zone; field "recurrence" for a rule
            with no occurrence at all (BYMONTH=2;BYMONTHDAY=30, an UNTIL before the start) or
            with occurrences closer than `min_interval_seconds`.
    """
    zone = time_zone(series.time_zone)
    rule = series.rule
    if rule is None:
        return
    start = normalize_due_at(series.start)
    start_wall = _wall_at(start, zone)
    pattern = _Pattern.of(rule, start_wall)
    if next(occurrences(series, limit=1), None) is None:
        if _until_instant(rule, zone) is not None and next(
            _walls(pattern, start_wall, start_wall), None
        ):
            raise _rule_error("the rule yields no occurrence up to its UNTIL")
        raise _rule_error("the rule yields no occurrence")

    until = _until_instant(rule, zone)
    horizon = start_wall + min(_CYCLE, datetime.max - start_wall)
    most = min(rule.count or GAP_CHECK_OCCURRENCES, GAP_CHECK_OCCURRENCES)
    previous: datetime | None = None
    seen = 0
    for wall in _walls(pattern, start_wall, start_wall):
        if seen >= most or wall > horizon:
            break
        if until is not None and resolve(wall, zone) > until:
            if (wall - _MAX_OFFSET).replace(tzinfo=UTC) > until:
                break
            continue
        if previous is not None:
            gap = int((wall - previous).total_seconds())
            if gap < min_interval_seconds:
                raise _rule_error(
                    f"occurrences come {gap} s apart, closer than the minimum of"
                    f" {min_interval_seconds} s"
                )
        previous, seen = wall, seen + 1
