"""Recurring tasks in their own time zone, several reminders, complete and snooze, over HTTP
on real PostgreSQL and Redis (SPEC §2, §2.1, §6).

The DST table here goes through the API's occurrence preview; `tests/unit/test_recurrence.py`
holds the full table against the expansion itself, and the pipeline tests deliver them.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select

from api.app import create_app
from shared.store.db import make_session_factory, unit_of_work
from shared.store.models import Reminder
from tests.conftest import REDIS_URL, Account, ApiHarness, make_settings

PROBLEM = "application/problem+json"


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def create(api: ApiHarness, account: Account, **fields: Any) -> dict[str, Any]:
    body = {"title": "Water the plants", **fields}
    response = api.client.post("/tasks", json=body, headers=account.headers)
    assert response.status_code == 201, response.json
    return dict(response.json)


def rows(engine: Engine, task_id: str) -> list[Reminder]:
    with unit_of_work(make_session_factory(engine)) as session:
        return list(
            session.scalars(
                select(Reminder)
                .where(Reminder.task_id == uuid.UUID(task_id))
                .order_by(Reminder.remind_at)
            )
        )


def local_times(api: ApiHarness, account: Account, task_id: str, after: str, n: int) -> list[str]:
    response = api.client.get(
        f"/tasks/{task_id}/occurrences",
        query_string={"after": after, "limit": n},
        headers=account.headers,
    )
    assert response.status_code == 200, response.json
    items = response.json["items"]
    for item in items:  # local_due_at is the same instant as due_at
        assert parse_time(item["local_due_at"]) == parse_time(item["due_at"])
    return [item["local_due_at"] for item in items]


# (zone, first occurrence in local time, rule, preview from, the local times expected)
DST_CASES = {
    "Paris spring forward: 02:30 moves to 03:30 CEST": (
        "Europe/Paris",
        "2027-03-26T02:30:00+01:00",
        "FREQ=DAILY",
        "2027-03-26T00:00:00Z",
        [
            "2027-03-26T02:30:00+01:00",
            "2027-03-27T02:30:00+01:00",
            "2027-03-28T03:30:00+02:00",
            "2027-03-29T02:30:00+02:00",
        ],
    ),
    "Paris fall back: 02:30 once, at its first instant": (
        "Europe/Paris",
        "2027-10-30T02:30:00+02:00",
        "FREQ=DAILY",
        "2027-10-30T00:00:00Z",
        [
            "2027-10-30T02:30:00+02:00",
            "2027-10-31T02:30:00+02:00",
            "2027-11-01T02:30:00+01:00",
        ],
    ),
    "New York weekly across the March change: stays 09:00 local": (
        "America/New_York",
        "2027-03-01T09:00:00-05:00",
        "FREQ=WEEKLY;BYDAY=MO",
        "2027-03-01T00:00:00Z",
        [
            "2027-03-01T09:00:00-05:00",
            "2027-03-08T09:00:00-05:00",
            "2027-03-15T09:00:00-04:00",
        ],
    ),
    "Lord Howe 30-minute shift: 02:15 moves to 02:45": (
        "Australia/Lord_Howe",
        "2027-10-02T02:15:00+10:30",
        "FREQ=DAILY",
        "2027-10-01T00:00:00Z",
        [
            "2027-10-02T02:15:00+10:30",
            "2027-10-03T02:45:00+11:00",
            "2027-10-04T02:15:00+11:00",
        ],
    ),
    "last day of the month, leap February": (
        "UTC",
        "2028-01-31T09:00:00Z",
        "FREQ=MONTHLY;BYMONTHDAY=-1",
        "2028-01-01T00:00:00Z",
        [
            "2028-01-31T09:00:00Z",
            "2028-02-29T09:00:00Z",
            "2028-03-31T09:00:00Z",
        ],
    ),
    "31st only in months that have one": (
        "UTC",
        "2027-01-31T09:00:00Z",
        "FREQ=MONTHLY;BYMONTHDAY=31",
        "2027-01-01T00:00:00Z",
        [
            "2027-01-31T09:00:00Z",
            "2027-03-31T09:00:00Z",
            "2027-05-31T09:00:00Z",
        ],
    ),
}


@pytest.mark.parametrize("case", DST_CASES.values(), ids=DST_CASES.keys())
def test_the_occurrence_preview_follows_the_zone_s_wall_time_across_dst(
    api: ApiHarness, case: tuple[str, str, str, str, list[str]]
) -> None:
    zone, start, rule, after, expected = case
    alice = api.account("alice")
    task = create(api, alice, due_at=start, time_zone=zone, recurrence=rule)

    assert local_times(api, alice, task["id"], after, len(expected)) == expected


def test_a_recurring_task_shows_its_rule_zone_offsets_and_next_occurrence(
    api: ApiHarness,
) -> None:
    alice = api.account("alice")
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=2)
    task = create(
        api,
        alice,
        due_at=start.isoformat(),
        time_zone="Europe/Paris",
        recurrence="freq=weekly;interval=2",
        reminders=[600, 86400],
    )

    assert task["recurrence"] == "FREQ=WEEKLY;INTERVAL=2"
    assert (task["time_zone"], task["reminders"]) == ("Europe/Paris", [86400, 600])
    upcoming = task["next_occurrence"]
    assert parse_time(upcoming["due_at"]) == start
    assert [parse_time(t) for t in upcoming["remind_at"]] == [
        start - timedelta(days=1),
        start - timedelta(minutes=10),
    ]
    fetched = api.client.get(f"/tasks/{task['id']}", headers=alice.headers).json
    assert fetched["next_occurrence"] == upcoming
    assert fetched["reminder"]["offset_seconds"] == 86400


def test_only_the_horizon_is_materialised_one_row_per_occurrence_and_offset(
    api: ApiHarness,
) -> None:
    alice = api.account("alice")
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=2)
    task = create(
        api,
        alice,
        due_at=start.isoformat(),
        recurrence="FREQ=HOURLY;INTERVAL=6",
        reminders=[3600, 300],
    )

    made = rows(api.engine, task["id"])
    # Horizon (a day) plus the longest offset: occurrences due up to now + 25 h.
    horizon = datetime.now(UTC) + timedelta(hours=25)
    due_dates = sorted({row.due_at for row in made})
    assert due_dates == [start + timedelta(hours=6 * n) for n in range(len(due_dates))]
    assert due_dates[-1] <= horizon < due_dates[-1] + timedelta(hours=6)
    assert sorted((row.due_at, row.offset_seconds) for row in made) == sorted(
        (due, offset) for due in due_dates for offset in (3600, 300)
    )
    assert len({row.message_id for row in made}) == len(made)
    assert {row.state for row in made} == {"waiting"}


def test_changing_the_offsets_keeps_the_rows_of_kept_offsets(api: ApiHarness) -> None:
    alice = api.account("alice")
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=3)
    task = create(api, alice, due_at=start.isoformat(), recurrence="FREQ=DAILY", reminders=[600])
    before = {
        (row.due_at, row.offset_seconds): row.message_id for row in rows(api.engine, task["id"])
    }

    response = api.client.patch(
        f"/tasks/{task['id']}", json={"reminders": [600, 7200]}, headers=alice.headers
    )

    assert response.status_code == 200, response.json
    after = {
        (row.due_at, row.offset_seconds): (row.message_id, row.state)
        for row in rows(api.engine, task["id"])
    }
    assert before  # today's and tomorrow's occurrence
    for key, message_id in before.items():
        assert after[key] == (message_id, "waiting")
    assert {offset for _, offset in after} == {600, 7200}

    api.client.patch(f"/tasks/{task['id']}", json={"reminders": [7200]}, headers=alice.headers)
    states = {(row.offset_seconds, row.state) for row in rows(api.engine, task["id"])}
    assert states == {(600, "cancelled"), (7200, "waiting")}


def test_making_a_series_one_off_cancels_the_later_occurrences(api: ApiHarness) -> None:
    alice = api.account("alice")
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=3)
    task = create(api, alice, due_at=start.isoformat(), recurrence="FREQ=HOURLY", reminders=[600])
    assert len(rows(api.engine, task["id"])) > 1

    response = api.client.patch(
        f"/tasks/{task['id']}", json={"recurrence": None}, headers=alice.headers
    )

    assert response.status_code == 200 and response.json["next_occurrence"] is None
    pending = [row.due_at for row in rows(api.engine, task["id"]) if row.state == "waiting"]
    assert pending == [start]


def test_done_ends_the_series(api: ApiHarness) -> None:
    alice = api.account("alice")
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    task = create(api, alice, due_at=start.isoformat(), recurrence="FREQ=HOURLY")

    api.client.patch(f"/tasks/{task['id']}", json={"status": "done"}, headers=alice.headers)

    assert {row.state for row in rows(api.engine, task["id"])} == {"cancelled"}


def test_complete_finishes_the_current_occurrence_and_moves_on(api: ApiHarness) -> None:
    alice = api.account("alice")
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    following = start + timedelta(hours=3)
    task = create(
        api,
        alice,
        due_at=start.isoformat(),
        recurrence="FREQ=HOURLY;INTERVAL=3",
        reminders=[3600, 600],
    )

    response = api.client.post(f"/tasks/{task['id']}/complete", headers=alice.headers)

    assert response.status_code == 200, response.json
    completed = response.json
    assert completed["status"] == "open"
    assert parse_time(completed["next_occurrence"]["due_at"]) == following
    assert parse_time(completed["reminder"]["due_at"]) == following
    by_due: dict[datetime, set[str]] = {}
    for row in rows(api.engine, task["id"]):
        by_due.setdefault(row.due_at, set()).add(row.state)
    assert by_due[start] == {"cancelled"}
    assert by_due[following] == {"waiting"}
    # An edit of the offsets afterwards does not bring the completed occurrence back.
    api.client.patch(f"/tasks/{task['id']}", json={"reminders": [600]}, headers=alice.headers)
    assert {r.state for r in rows(api.engine, task["id"]) if r.due_at == start} == {"cancelled"}


def test_complete_makes_a_one_off_task_done_and_a_done_task_is_409(api: ApiHarness) -> None:
    alice = api.account("alice")
    task = create(api, alice, due_at="2030-01-31T09:00:00Z")

    done = api.client.post(f"/tasks/{task['id']}/complete", headers=alice.headers)
    again = api.client.post(f"/tasks/{task['id']}/complete", headers=alice.headers)

    assert done.status_code == 200 and done.json["status"] == "done"
    assert again.status_code == 409 and again.mimetype == PROBLEM


def test_a_snooze_is_its_own_reminder_with_its_own_id(api: ApiHarness) -> None:
    alice = api.account("alice")
    task = create(api, alice, due_at="2030-01-31T09:00:00Z")
    until = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)

    first = api.client.post(
        f"/tasks/{task['id']}/snooze", json={"until": until.isoformat()}, headers=alice.headers
    )
    same = api.client.post(
        f"/tasks/{task['id']}/snooze", json={"until": until.isoformat()}, headers=alice.headers
    )

    assert first.status_code == 201, first.json
    snooze = first.json
    assert (snooze["kind"], snooze["offset_seconds"], snooze["state"]) == (
        "snooze",
        None,
        "waiting",
    )
    assert parse_time(snooze["remind_at"]) == until
    assert parse_time(snooze["due_at"]) == datetime(2030, 1, 31, 9, tzinfo=UTC)
    stamp = until.strftime("%Y-%m-%dT%H:%M:%SZ")
    expected = uuid.uuid5(
        uuid.NAMESPACE_URL, f"reminders:{task['id']}:2030-01-31T09:00:00Z:snooze:{stamp}"
    )
    assert snooze["message_id"] == str(expected)
    assert same.status_code == 201 and same.json["message_id"] == snooze["message_id"]
    kinds = sorted(row.kind for row in rows(api.engine, task["id"]))
    assert kinds == ["reminder", "snooze"]


def test_a_snooze_retried_with_its_idempotency_key_is_one_snooze(api: ApiHarness) -> None:
    alice = api.account("alice")
    task = create(api, alice, due_at="2030-01-31T09:00:00Z")
    headers = {**alice.headers, "Idempotency-Key": "snooze-1"}
    url = f"/tasks/{task['id']}/snooze"

    first = api.client.post(url, json={"seconds": 600}, headers=headers)
    retried = api.client.post(url, json={"seconds": 600}, headers=headers)
    other_body = api.client.post(url, json={"seconds": 900}, headers=headers)
    without_key = api.client.post(url, json={"seconds": 900}, headers=alice.headers)

    assert first.status_code == retried.status_code == 201
    assert retried.json == first.json
    assert other_body.status_code == 422
    assert without_key.status_code == 201
    snoozes = [row for row in rows(api.engine, task["id"]) if row.kind == "snooze"]
    assert len(snoozes) == 2


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"seconds": 59}, "seconds"),
        ({"seconds": 7 * 86400 + 1}, "seconds"),
        ({}, "body"),
        ({"seconds": 600, "until": "2030-01-01T00:00:00Z"}, "body"),
        ({"until": "2020-01-01T00:00:00Z"}, "until"),
    ],
)
def test_a_bad_snooze_is_422_naming_the_field(
    api: ApiHarness, body: dict[str, Any], field: str
) -> None:
    alice = api.account("alice")
    task = create(api, alice, due_at="2030-01-31T09:00:00Z")

    response = api.client.post(f"/tasks/{task['id']}/snooze", json=body, headers=alice.headers)

    assert response.status_code == 422 and response.mimetype == PROBLEM
    assert field in {entry["field"] for entry in response.json["errors"]}


@pytest.mark.parametrize(
    ("fields", "bad"),
    [
        ({"time_zone": "Mars/Olympus_Mons"}, "time_zone"),
        ({"time_zone": "../../etc/passwd"}, "time_zone"),
        ({"recurrence": "RRULE:FREQ=DAILY"}, "recurrence"),
        ({"recurrence": "FREQ=DAILY;BYSECOND=5"}, "recurrence"),
        ({"recurrence": "FREQ=DAILY;COUNT=3;UNTIL=20300101T000000Z"}, "recurrence"),
        ({"recurrence": "FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=30"}, "recurrence"),
        ({"reminders": []}, "reminders"),
        ({"reminders": [600, 600]}, "reminders"),
        ({"reminders": [60, 120, 180, 240, 300, 360]}, "reminders"),
        ({"reminders": [30]}, "reminders"),
        ({"reminders": [600], "remind_before_seconds": 600}, "body"),
    ],
)
def test_a_bad_zone_rule_or_offset_list_is_422_naming_the_field(
    api: ApiHarness, fields: dict[str, Any], bad: str
) -> None:
    alice = api.account("alice")
    body = {"title": "t", "due_at": "2030-01-31T09:00:00Z", **fields}

    created = api.client.post("/tasks", json=body, headers=alice.headers)

    assert created.status_code == 422 and created.mimetype == PROBLEM, created.json
    assert bad in {entry["field"] for entry in created.json["errors"]}
    assert api.client.get("/tasks", headers=alice.headers).json["items"] == []


def test_a_rule_firing_more_often_than_the_minimum_is_422(
    pg_engine: Engine, redis_namespace: str, pg_url: str
) -> None:
    settings = make_settings(
        database_url=pg_url,
        redis_url=REDIS_URL,
        redis_namespace=redis_namespace,
        min_recurrence_seconds=3600,
    )
    app = create_app(settings, engine=pg_engine)
    api = ApiHarness(client=app.test_client(), engine=pg_engine, settings=settings)
    alice = api.account("alice")
    body = {"title": "t", "due_at": "2030-01-31T09:00:00Z"}

    too_often = api.client.post(
        "/tasks", json={**body, "recurrence": "FREQ=MINUTELY;INTERVAL=30"}, headers=alice.headers
    )
    hourly = api.client.post(
        "/tasks", json={**body, "recurrence": "FREQ=HOURLY"}, headers=alice.headers
    )
    patched = api.client.patch(
        f"/tasks/{hourly.json['id']}",
        json={"recurrence": "FREQ=DAILY;BYHOUR=9;BYMINUTE=0,30"},
        headers=alice.headers,
    )

    assert too_often.status_code == 422
    assert too_often.json["errors"][0]["field"] == "recurrence"
    assert "3600" in too_often.json["errors"][0]["message"]
    assert hourly.status_code == 201
    assert patched.status_code == 422
    unchanged = api.client.get(f"/tasks/{hourly.json['id']}", headers=alice.headers)
    assert unchanged.json["recurrence"] == "FREQ=HOURLY"


def test_the_embedded_sqlite_database_plans_completes_and_snoozes_a_series_the_same(
    sqlite_url: str, redis_namespace: str
) -> None:
    """The embedded default's database: the same rows, complete and snooze as on PostgreSQL."""
    from shared.store.db import make_engine
    from shared.store.schema import upgrade

    settings = make_settings(
        database_url=sqlite_url, redis_url=REDIS_URL, redis_namespace=redis_namespace
    )
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine)
    app = create_app(settings, engine=engine)
    api = ApiHarness(client=app.test_client(), engine=engine, settings=settings)
    alice = api.account("alice")
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    task = create(
        api,
        alice,
        due_at=start.isoformat(),
        time_zone="Australia/Lord_Howe",
        recurrence="FREQ=HOURLY;INTERVAL=8",
        reminders=[1800, 600],
    )

    made = rows(engine, task["id"])
    due_dates = sorted({row.due_at for row in made})
    assert due_dates[:3] == [start + timedelta(hours=8 * n) for n in range(3)]
    assert len(made) == 2 * len(due_dates)
    completed = api.client.post(f"/tasks/{task['id']}/complete", headers=alice.headers)
    assert completed.status_code == 200
    assert parse_time(completed.json["reminder"]["due_at"]) == start + timedelta(hours=8)
    snoozed = api.client.post(
        f"/tasks/{task['id']}/snooze", json={"seconds": 300}, headers=alice.headers
    )
    assert snoozed.status_code == 201 and snoozed.json["kind"] == "snooze"
    history = api.client.get(
        f"/tasks/{task['id']}/reminders", query_string={"limit": 2}, headers=alice.headers
    ).json
    assert len(history["items"]) == 2 and history["next_cursor"]
    engine.dispose()
