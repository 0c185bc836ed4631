"""The reminder rules as plain functions: due dates, remind times, catch-up, transient errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from shared.planning.rules import (
    admit_due_occurrence,
    describe_error,
    normalize_due_at,
    remind_at,
    webhook_status_is_transient,
)

NOW = datetime(2030, 6, 1, 12, 0, 0, tzinfo=UTC)
CATCHUP = 3600
# Reminders planned well before their remind time: the window runs from the due date.
PLANNED_LONG_AGO = NOW - timedelta(days=30)


def test_naive_due_at_is_rejected() -> None:
    with pytest.raises(ValueError):
        normalize_due_at(datetime(2030, 1, 1, 9, 0))


def test_due_at_with_an_offset_is_stored_as_the_same_instant_in_utc() -> None:
    local = datetime(2030, 1, 1, 9, 30, tzinfo=timezone(timedelta(hours=5, minutes=30)))

    stored = normalize_due_at(local)

    assert stored == datetime(2030, 1, 1, 4, 0, tzinfo=UTC)
    assert stored.utcoffset() == timedelta(0)


def test_due_at_microseconds_are_dropped_not_rounded() -> None:
    stored = normalize_due_at(datetime(2030, 1, 1, 9, 0, 59, 999_999, tzinfo=UTC))

    assert stored == datetime(2030, 1, 1, 9, 0, 59, tzinfo=UTC)
    assert stored.microsecond == 0


def test_remind_at_is_due_at_minus_the_lead_time() -> None:
    due = datetime(2030, 1, 2, 9, 0, tzinfo=UTC)

    assert remind_at(due, 86400) == datetime(2030, 1, 1, 9, 0, tzinfo=UTC)
    assert remind_at(due, 60) == datetime(2030, 1, 2, 8, 59, tzinfo=UTC)


def test_occurrence_due_in_the_future_is_queued_and_not_late() -> None:
    admission = admit_due_occurrence(NOW + timedelta(hours=3), PLANNED_LONG_AGO, NOW, CATCHUP)

    assert admission.state == "queued"
    assert admission.late is False


def test_occurrence_due_recently_within_catchup_is_queued_and_late() -> None:
    admission = admit_due_occurrence(NOW - timedelta(minutes=10), PLANNED_LONG_AGO, NOW, CATCHUP)

    assert admission.state == "queued"
    assert admission.late is True


def test_occurrence_due_just_inside_the_catchup_window_is_still_sent() -> None:
    due = NOW - timedelta(seconds=CATCHUP) + timedelta(seconds=1)

    assert admit_due_occurrence(due, PLANNED_LONG_AGO, NOW, CATCHUP).state == "queued"


def test_occurrence_due_exactly_catchup_ago_is_still_sent_late() -> None:
    # The window is inclusive: only occurrences due *more* than the catch-up ago are missed.
    admission = admit_due_occurrence(
        NOW - timedelta(seconds=CATCHUP), PLANNED_LONG_AGO, NOW, CATCHUP
    )

    assert admission.state == "queued"
    assert admission.late is True


def test_occurrence_due_just_outside_the_catchup_window_is_missed() -> None:
    due = NOW - timedelta(seconds=CATCHUP) - timedelta(seconds=1)

    assert admit_due_occurrence(due, PLANNED_LONG_AGO, NOW, CATCHUP).state == "missed"


def test_occurrence_long_past_is_missed_not_sent() -> None:
    admission = admit_due_occurrence(NOW - timedelta(days=3), PLANNED_LONG_AGO, NOW, CATCHUP)

    assert admission.state == "missed"


def test_zero_catchup_misses_anything_already_past_due() -> None:
    assert (
        admit_due_occurrence(NOW - timedelta(seconds=1), PLANNED_LONG_AGO, NOW, 0).state == "missed"
    )
    assert (
        admit_due_occurrence(NOW + timedelta(seconds=1), PLANNED_LONG_AGO, NOW, 0).state == "queued"
    )


@pytest.mark.parametrize(
    ("due_in", "remind_before"),
    [
        (timedelta(days=2), timedelta(days=7)),  # remind time five days before creation
        (timedelta(minutes=30), timedelta(days=1)),
        (timedelta(hours=-3), timedelta(days=1)),  # created already past its due date
        (timedelta(days=-29), timedelta(minutes=1)),
    ],
)
def test_reminder_planned_after_its_remind_time_is_due_at_once_not_missed_nor_late(
    due_in: timedelta, remind_before: timedelta
) -> None:
    """Created (or rescheduled) now with its remind time past: sent by the next scan."""
    due = NOW + due_in
    assert due - remind_before < NOW  # its remind time has passed

    next_scan = admit_due_occurrence(due, NOW, NOW + timedelta(minutes=1), CATCHUP)

    assert (next_scan.state, next_scan.late) == ("queued", False)


def test_catchup_window_of_a_reminder_planned_after_its_due_date_runs_from_planning() -> None:
    planned = NOW - timedelta(hours=5)  # the task was created due six hours ago
    due = NOW - timedelta(hours=6)

    down_within = admit_due_occurrence(due, planned, planned + timedelta(seconds=CATCHUP), CATCHUP)
    down_beyond = admit_due_occurrence(
        due, planned, planned + timedelta(seconds=CATCHUP + 1), CATCHUP
    )

    assert down_within.state == "queued"
    assert down_beyond.state == "missed"


def test_reminder_planned_before_its_due_date_and_sent_after_it_is_late() -> None:
    planned = NOW - timedelta(minutes=30)  # remind time already past, due in 20 minutes
    due = NOW - timedelta(minutes=10)  # ... and the system was down meanwhile

    admission = admit_due_occurrence(due, planned, NOW, CATCHUP)

    assert (admission.state, admission.late) == ("queued", True)


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 429])
def test_webhook_server_errors_timeouts_and_rate_limits_are_retried(status: int) -> None:
    assert webhook_status_is_transient(status) is True


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 410, 422])
def test_webhook_client_errors_are_permanent(status: int) -> None:
    assert webhook_status_is_transient(status) is False


def test_described_error_is_type_and_first_line_of_message() -> None:
    error = ConnectionError("connection refused\nTraceback line that must not leak")

    assert describe_error(error) == "ConnectionError: connection refused"


def test_described_error_without_a_message_is_its_type_name() -> None:
    assert describe_error(TimeoutError()) == "TimeoutError"
    assert describe_error(ValueError("   ")) == "ValueError"


def test_described_error_is_bounded_in_length() -> None:
    described = describe_error(RuntimeError("x" * 5000))

    assert described.startswith("RuntimeError: xxx")
    assert len(described) <= 500
