"""The task API end to end over HTTP, on real PostgreSQL and Redis (SPEC §6)."""

from __future__ import annotations

import json
import random
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate
from sqlalchemy import Engine, select, update

from api.app import create_app
from shared.planning.keys import hash_token
from shared.store.db import make_engine, make_session_factory, unit_of_work
from shared.store.models import ApiToken, Reminder, Task
from tests.conftest import REDIS_URL, Account, ApiHarness, make_settings

PROBLEM = "application/problem+json"


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def occurrence_id(task_id: str, due_at: datetime, offset_seconds: int = 86400) -> str:
    """The documented message ID, computed here rather than by the code under test."""
    stamp = due_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"reminders:{task_id}:{stamp}:{offset_seconds}"))


def create(api: ApiHarness, account: Account, **fields: Any) -> dict[str, Any]:
    body = {"title": "Water the plants", "due_at": "2030-01-31T09:00:00Z", **fields}
    response = api.client.post("/tasks", json=body, headers=account.headers)
    assert response.status_code == 201, response.get_data(as_text=True)
    return dict(response.json)


def assert_problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == PROBLEM
    document = json.loads(response.get_data(as_text=True))
    assert document["status"] == status
    assert isinstance(document["type"], str) and document["type"]
    assert isinstance(document["title"], str) and document["title"]
    assert isinstance(document["detail"], str) and document["detail"]
    return document


def bad_fields(response: Any) -> set[str]:
    document = assert_problem(response, 422)
    assert isinstance(document["errors"], list) and document["errors"]
    return {error["field"] for error in document["errors"]}


def reminder_rows(engine: Engine, task_id: str) -> list[Reminder]:
    with unit_of_work(make_session_factory(engine)) as session:
        return list(
            session.scalars(
                select(Reminder)
                .where(Reminder.task_id == uuid.UUID(task_id))
                .order_by(Reminder.created_at)
            )
        )


# --- create, read --------------------------------------------------------------------------


def test_create_answers_201_with_location_and_a_waiting_reminder(api: ApiHarness) -> None:
    alice = api.account("alice")

    response = api.client.post(
        "/tasks",
        json={
            "title": "Pay rent",
            "notes": "Transfer to the landlord",
            "due_at": "2030-01-31T09:00:00+01:00",
            "remind_before_seconds": 3600,
        },
        headers=alice.headers,
    )

    assert response.status_code == 201
    task = response.json
    assert response.headers["Location"] == f"/tasks/{task['id']}"
    assert task["title"] == "Pay rent"
    assert task["notes"] == "Transfer to the landlord"
    assert task["owner"] == "alice"
    assert task["status"] == "open"
    assert parse_time(task["due_at"]) == datetime(2030, 1, 31, 8, 0, tzinfo=UTC)
    assert task["due_at"].endswith("Z") or task["due_at"].endswith("+00:00")
    assert task["remind_before_seconds"] == 3600
    assert parse_time(task["remind_at"]) == datetime(2030, 1, 31, 7, 0, tzinfo=UTC)
    reminder = task["reminder"]
    assert reminder["state"] == "waiting"
    assert reminder["message_id"] == occurrence_id(
        task["id"], datetime(2030, 1, 31, 8, tzinfo=UTC), 3600
    )
    assert parse_time(reminder["remind_at"]) == datetime(2030, 1, 31, 7, 0, tzinfo=UTC)
    assert reminder["attempts"] == 0
    assert reminder["sent_at"] is None
    assert reminder["last_error"] is None


def test_created_task_without_lead_time_is_reminded_a_day_before(api: ApiHarness) -> None:
    task = create(api, api.account("alice"), due_at="2030-05-02T10:00:00Z")

    assert task["remind_before_seconds"] == 86400
    assert parse_time(task["reminder"]["remind_at"]) == datetime(2030, 5, 1, 10, tzinfo=UTC)


def test_due_at_is_stored_in_whole_seconds(api: ApiHarness) -> None:
    task = create(api, api.account("alice"), due_at="2030-01-31T09:00:00.987654Z")

    due = datetime(2030, 1, 31, 9, tzinfo=UTC)
    assert parse_time(task["due_at"]) == due
    assert task["reminder"]["message_id"] == occurrence_id(task["id"], due)


def test_get_returns_the_task_as_created(api: ApiHarness) -> None:
    alice = api.account("alice")
    created = create(api, alice, notes="bring the receipt")

    response = api.client.get(f"/tasks/{created['id']}", headers=alice.headers)

    assert response.status_code == 200
    assert response.json == created


def test_created_task_has_one_reminder_row_in_the_database(api: ApiHarness) -> None:
    task = create(api, api.account("alice"))

    rows = reminder_rows(api.engine, task["id"])

    assert [(str(row.message_id), row.state) for row in rows] == [
        (task["reminder"]["message_id"], "waiting")
    ]


# --- list ----------------------------------------------------------------------------------


def test_pages_of_three_cover_seven_tasks_exactly_once_in_due_order(api: ApiHarness) -> None:
    alice = api.account("alice")
    # Two pairs share a due date, so the page boundary must break ties consistently.
    due_dates = [
        "2030-01-05T00:00:00Z",
        "2030-01-01T00:00:00Z",
        "2030-01-03T00:00:00Z",
        "2030-01-03T00:00:00Z",
        "2030-01-02T00:00:00+05:00",
        "2030-01-07T00:00:00Z",
        "2030-01-07T00:00:00Z",
    ]
    random.Random(7).shuffle(due_dates)
    created = {create(api, alice, due_at=due)["id"] for due in due_dates}

    seen: list[dict[str, Any]] = []
    page_sizes = []
    cursor = None
    for _ in range(10):
        query: dict[str, Any] = {"limit": 3}
        if cursor:
            query["cursor"] = cursor
        response = api.client.get("/tasks", query_string=query, headers=alice.headers)
        assert response.status_code == 200
        page_sizes.append(len(response.json["items"]))
        seen.extend(response.json["items"])
        cursor = response.json["next_cursor"]
        if cursor is None:
            break

    assert page_sizes == [3, 3, 1]
    ids = [item["id"] for item in seen]
    assert len(ids) == len(set(ids)) == 7
    assert set(ids) == created
    keys = [(parse_time(item["due_at"]), item["id"]) for item in seen]
    assert [key[0] for key in keys] == sorted(key[0] for key in keys)
    assert all(item["reminder"]["state"] == "waiting" for item in seen)


def test_pages_cover_tasks_sharing_one_due_date_exactly_once(api: ApiHarness) -> None:
    alice = api.account("alice")
    created = {create(api, alice, due_at="2030-01-01T00:00:00Z")["id"] for _ in range(7)}

    ids: list[str] = []
    cursor = None
    for _ in range(10):
        query: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api.client.get("/tasks", query_string=query, headers=alice.headers).json
        ids.extend(item["id"] for item in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert sorted(ids) == sorted(created)


def test_list_without_limit_returns_everything_with_no_next_cursor(api: ApiHarness) -> None:
    alice = api.account("alice")
    for day in range(1, 4):
        create(api, alice, due_at=f"2030-01-0{day}T00:00:00Z")

    response = api.client.get("/tasks", headers=alice.headers)

    assert response.status_code == 200
    assert len(response.json["items"]) == 3
    assert response.json["next_cursor"] is None


def test_list_filters_by_status(api: ApiHarness) -> None:
    alice = api.account("alice")
    done = create(api, alice, title="done one")
    still_open = create(api, alice, title="open one")
    api.client.patch(f"/tasks/{done['id']}", json={"status": "done"}, headers=alice.headers)

    only_done = api.client.get("/tasks?status=done", headers=alice.headers).json["items"]
    only_open = api.client.get("/tasks?status=open", headers=alice.headers).json["items"]

    assert [item["id"] for item in only_done] == [done["id"]]
    assert [item["id"] for item in only_open] == [still_open["id"]]


def test_list_filters_by_due_window_after_inclusive_before_exclusive(api: ApiHarness) -> None:
    alice = api.account("alice")
    ids = {day: create(api, alice, due_at=f"2030-03-0{day}T12:00:00Z")["id"] for day in range(1, 6)}

    response = api.client.get(
        "/tasks",
        query_string={"due_after": "2030-03-02T12:00:00Z", "due_before": "2030-03-04T12:00:00Z"},
        headers=alice.headers,
    )

    assert response.status_code == 200
    assert [item["id"] for item in response.json["items"]] == [ids[2], ids[3]]


def test_due_filter_honours_the_offset_of_the_query(api: ApiHarness) -> None:
    alice = api.account("alice")
    create(api, alice, due_at="2030-03-01T10:00:00Z")
    later = create(api, alice, due_at="2030-03-01T12:00:00Z")

    # 13:00 at +02:00 is 11:00 UTC: only the 12:00 UTC task is at or after it.
    response = api.client.get(
        "/tasks", query_string={"due_after": "2030-03-01T13:00:00+02:00"}, headers=alice.headers
    )

    assert [item["id"] for item in response.json["items"]] == [later["id"]]


@pytest.mark.parametrize("limit", ["0", "201", "-1", "ten"])
def test_limit_outside_1_to_200_is_rejected_naming_limit(api: ApiHarness, limit: str) -> None:
    alice = api.account("alice")

    response = api.client.get("/tasks", query_string={"limit": limit}, headers=alice.headers)

    assert bad_fields(response) == {"limit"}
    assert response.json["errors"][0]["in"] == "query"


def test_limit_of_200_is_accepted(api: ApiHarness) -> None:
    alice = api.account("alice")

    assert api.client.get("/tasks?limit=200", headers=alice.headers).status_code == 200


@pytest.mark.parametrize("cursor", ["not-a-cursor", "WyJ4Il0", "e30", "%%%"])
def test_bad_cursor_is_rejected_naming_cursor(api: ApiHarness, cursor: str) -> None:
    alice = api.account("alice")
    create(api, alice)

    response = api.client.get("/tasks", query_string={"cursor": cursor}, headers=alice.headers)

    assert bad_fields(response) == {"cursor"}


def test_naive_due_filter_is_rejected_naming_it(api: ApiHarness) -> None:
    alice = api.account("alice")

    response = api.client.get(
        "/tasks", query_string={"due_before": "2030-01-01T00:00:00"}, headers=alice.headers
    )

    assert bad_fields(response) == {"due_before"}


# --- update --------------------------------------------------------------------------------


def test_patch_changes_title_and_notes_and_nothing_else(api: ApiHarness) -> None:
    alice = api.account("alice")
    task = create(api, alice, notes="old notes")

    response = api.client.patch(
        f"/tasks/{task['id']}",
        json={"title": "Renamed", "notes": "new notes"},
        headers=alice.headers,
    )

    assert response.status_code == 200
    changed = response.json
    assert changed["title"] == "Renamed"
    assert changed["notes"] == "new notes"
    assert changed["due_at"] == task["due_at"]
    assert changed["reminder"] == task["reminder"]
    assert parse_time(changed["updated_at"]) >= parse_time(task["updated_at"])
    again = api.client.get(f"/tasks/{task['id']}", headers=alice.headers).json
    assert (again["title"], again["notes"]) == ("Renamed", "new notes")


def test_patch_with_null_notes_clears_them(api: ApiHarness) -> None:
    alice = api.account("alice")
    task = create(api, alice, notes="to be cleared")

    response = api.client.patch(f"/tasks/{task['id']}", json={"notes": None}, headers=alice.headers)

    assert response.status_code == 200
    assert response.json["notes"] is None
    assert api.client.get(f"/tasks/{task['id']}", headers=alice.headers).json["notes"] is None


def test_new_due_at_cancels_the_old_reminder_and_opens_a_new_one(api: ApiHarness) -> None:
    alice = api.account("alice")
    task = create(api, alice, due_at="2030-01-31T09:00:00Z")
    old_id = task["reminder"]["message_id"]

    response = api.client.patch(
        f"/tasks/{task['id']}", json={"due_at": "2030-02-28T09:00:00+01:00"}, headers=alice.headers
    )

    assert response.status_code == 200
    new_due = datetime(2030, 2, 28, 8, tzinfo=UTC)
    assert parse_time(response.json["due_at"]) == new_due
    reminder = response.json["reminder"]
    assert reminder["state"] == "waiting"
    assert reminder["message_id"] == occurrence_id(task["id"], new_due)
    assert reminder["message_id"] != old_id
    history = api.client.get(f"/tasks/{task['id']}/reminders", headers=alice.headers)
    assert history.status_code == 200
    assert [(item["message_id"], item["state"]) for item in history.json["items"]] == [
        (reminder["message_id"], "waiting"),  # newest remind time first
        (old_id, "cancelled"),
    ]


def test_same_due_at_in_another_offset_is_not_a_new_occurrence(api: ApiHarness) -> None:
    alice = api.account("alice")
    task = create(api, alice, due_at="2030-01-31T09:00:00Z")

    response = api.client.patch(
        f"/tasks/{task['id']}", json={"due_at": "2030-01-31T10:00:00+01:00"}, headers=alice.headers
    )

    assert response.json["reminder"] == task["reminder"]
    assert (
        len(api.client.get(f"/tasks/{task['id']}/reminders", headers=alice.headers).json["items"])
        == 1
    )


def test_a_new_lead_time_is_a_new_reminder_and_cancels_the_old_one(api: ApiHarness) -> None:
    alice = api.account("alice")
    due = datetime(2030, 1, 31, 9, tzinfo=UTC)
    task = create(api, alice, due_at=due.isoformat())

    response = api.client.patch(
        f"/tasks/{task['id']}", json={"remind_before_seconds": 600}, headers=alice.headers
    )

    assert response.status_code == 200
    assert response.json["reminders"] == [600]
    assert parse_time(response.json["reminder"]["remind_at"]) == datetime(
        2030, 1, 31, 8, 50, tzinfo=UTC
    )
    assert response.json["reminder"]["message_id"] == occurrence_id(task["id"], due, 600)
    rows = {row.offset_seconds: row.state for row in reminder_rows(api.engine, task["id"])}
    assert rows == {86400: "cancelled", 600: "waiting"}


def test_marking_done_cancels_the_pending_reminder(api: ApiHarness) -> None:
    alice = api.account("alice")
    task = create(api, alice)

    response = api.client.patch(
        f"/tasks/{task['id']}", json={"status": "done"}, headers=alice.headers
    )

    assert response.status_code == 200
    assert response.json["status"] == "done"
    assert response.json["reminder"]["state"] == "cancelled"
    assert [row.state for row in reminder_rows(api.engine, task["id"])] == ["cancelled"]


def test_reopening_a_done_task_revives_its_reminder(api: ApiHarness) -> None:
    alice = api.account("alice")
    task = create(api, alice)
    api.client.patch(f"/tasks/{task['id']}", json={"status": "done"}, headers=alice.headers)

    response = api.client.patch(
        f"/tasks/{task['id']}", json={"status": "open"}, headers=alice.headers
    )

    assert response.status_code == 200
    assert response.json["status"] == "open"
    reminder = response.json["reminder"]
    assert reminder["state"] == "waiting"
    assert reminder["message_id"] == task["reminder"]["message_id"]
    assert parse_time(reminder["reopened_at"]) >= parse_time(reminder["cancelled_at"])
    assert [row.state for row in reminder_rows(api.engine, task["id"])] == ["waiting"]


def test_moving_back_to_a_cancelled_due_date_reopens_its_reminder_keeping_the_cancellation(
    api: ApiHarness,
) -> None:
    """A -> B -> A: the same row and message ID for A (one reminder at most), and its history
    still says that it was cancelled, and when it was reopened."""
    alice = api.account("alice")
    due_a, due_b = "2030-01-31T09:00:00Z", "2030-02-28T09:00:00Z"
    task = create(api, alice, due_at=due_a)
    url = f"/tasks/{task['id']}"

    api.client.patch(url, json={"due_at": due_b}, headers=alice.headers)
    back = api.client.patch(url, json={"due_at": due_a}, headers=alice.headers)

    assert back.status_code == 200
    assert back.json["reminder"]["message_id"] == task["reminder"]["message_id"]
    history = api.client.get(f"{url}/reminders", headers=alice.headers).json["items"]
    by_due = {parse_time(item["due_at"]): item for item in history}
    first, moved_to = by_due[parse_time(due_a)], by_due[parse_time(due_b)]
    assert len(history) == 2
    assert (first["state"], first["message_id"]) == ("waiting", task["reminder"]["message_id"])
    assert first["cancelled_at"] is not None and first["reopened_at"] is not None
    assert parse_time(first["cancelled_at"]) <= parse_time(first["reopened_at"])
    assert (moved_to["state"], moved_to["reopened_at"]) == ("cancelled", None)
    assert parse_time(moved_to["cancelled_at"]) == parse_time(first["reopened_at"])
    assert back.json["reminder"] == {key: first[key] for key in back.json["reminder"]}
    rows = reminder_rows(api.engine, task["id"])
    assert sorted((row.state, row.message_id) for row in rows) == sorted(
        [
            ("waiting", uuid.UUID(first["message_id"])),
            ("cancelled", uuid.UUID(moved_to["message_id"])),
        ]
    )


def test_patch_with_null_title_is_rejected_and_changes_nothing(api: ApiHarness) -> None:
    alice = api.account("alice")
    task = create(api, alice, title="Keep me")

    response = api.client.patch(f"/tasks/{task['id']}", json={"title": None}, headers=alice.headers)

    assert_problem(response, 422)
    assert api.client.get(f"/tasks/{task['id']}", headers=alice.headers).json["title"] == "Keep me"


@pytest.mark.parametrize("field", ["title", "due_at", "status"])
def test_patch_with_null_required_field_names_that_field(api: ApiHarness, field: str) -> None:
    alice = api.account("alice")
    task = create(api, alice)

    response = api.client.patch(f"/tasks/{task['id']}", json={field: None}, headers=alice.headers)

    assert bad_fields(response) == {field}


def test_patch_with_naive_due_at_is_rejected_naming_due_at(api: ApiHarness) -> None:
    alice = api.account("alice")
    task = create(api, alice)

    response = api.client.patch(
        f"/tasks/{task['id']}", json={"due_at": "2030-02-01T09:00:00"}, headers=alice.headers
    )

    assert bad_fields(response) == {"due_at"}
    assert api.client.get(f"/tasks/{task['id']}", headers=alice.headers).json == task


# --- delete --------------------------------------------------------------------------------


def test_deleted_task_is_gone_and_its_reminder_cancelled(api: ApiHarness) -> None:
    alice = api.account("alice")
    task = create(api, alice)

    response = api.client.delete(f"/tasks/{task['id']}", headers=alice.headers)

    assert response.status_code == 204
    assert response.get_data() == b""
    assert_problem(api.client.get(f"/tasks/{task['id']}", headers=alice.headers), 404)
    assert_problem(api.client.get(f"/tasks/{task['id']}/reminders", headers=alice.headers), 404)
    assert_problem(
        api.client.patch(f"/tasks/{task['id']}", json={"title": "x"}, headers=alice.headers), 404
    )
    assert_problem(api.client.delete(f"/tasks/{task['id']}", headers=alice.headers), 404)
    assert api.client.get("/tasks", headers=alice.headers).json["items"] == []
    assert [row.state for row in reminder_rows(api.engine, task["id"])] == ["cancelled"]


def test_deleted_task_rows_stay_in_the_database_with_the_cancellation(api: ApiHarness) -> None:
    """The README and the document say it: 404 for the owner, rows kept for operators."""
    alice = api.account("alice")
    task = create(api, alice)

    api.client.delete(f"/tasks/{task['id']}", headers=alice.headers)

    with unit_of_work(make_session_factory(api.engine)) as session:
        stored = session.get(Task, uuid.UUID(task["id"]))
        assert stored is not None and stored.deleted_at is not None
    [row] = reminder_rows(api.engine, task["id"])
    assert (row.state, row.cancelled_at) == ("cancelled", stored.deleted_at)


def test_document_and_readme_say_a_deleted_task_and_its_history_are_404(api: ApiHarness) -> None:
    paths = openapi_document(api)["paths"]
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()

    deleting = paths["/tasks/{task_id}"]["delete"]["description"]
    history = paths["/tasks/{task_id}/reminders"]["get"]["description"]
    assert "404" in deleting and "history" in deleting
    assert "deleted task's history is a 404" in history
    delete_row = next(line for line in readme.splitlines() if line.startswith("| `DELETE /tasks"))
    assert "404" in delete_row and "history" in delete_row
    assert "history is kept" not in readme


def test_unknown_task_is_404(api: ApiHarness) -> None:
    alice = api.account("alice")

    response = api.client.get(f"/tasks/{uuid.uuid4()}", headers=alice.headers)

    assert_problem(response, 404)


# --- validation errors ---------------------------------------------------------------------


def test_naive_due_at_is_rejected_naming_the_field(api: ApiHarness) -> None:
    alice = api.account("alice")

    response = api.client.post(
        "/tasks", json={"title": "t", "due_at": "2030-01-31T09:00:00"}, headers=alice.headers
    )

    assert bad_fields(response) == {"due_at"}
    error = response.json["errors"][0]
    assert error["in"] == "body"
    assert error["message"]
    assert api.client.get("/tasks", headers=alice.headers).json["items"] == []


def test_unknown_field_is_rejected_naming_it(api: ApiHarness) -> None:
    alice = api.account("alice")

    response = api.client.post(
        "/tasks",
        json={"title": "t", "due_at": "2030-01-31T09:00:00Z", "priority": "high"},
        headers=alice.headers,
    )

    assert bad_fields(response) == {"priority"}


def test_every_bad_field_is_named(api: ApiHarness) -> None:
    alice = api.account("alice")

    response = api.client.post(
        "/tasks",
        json={
            "title": "   ",
            "notes": "n" * 10_001,
            "due_at": 1893456000,
            "remind_before_seconds": "3600",
            "colour": "red",
        },
        headers=alice.headers,
    )

    assert bad_fields(response) == {"title", "notes", "due_at", "remind_before_seconds", "colour"}
    for name in ("title", "notes", "due_at", "remind_before_seconds", "colour"):
        assert name in response.json["detail"]


@pytest.mark.parametrize("seconds", [3600.0, 386597.0])
def test_lead_time_as_an_integral_json_number_is_an_integer(
    api: ApiHarness, seconds: float
) -> None:
    """JSON Schema (and so the document's "integer") counts 3600.0 as an integer."""
    alice = api.account("alice")

    created = create(api, alice, remind_before_seconds=seconds)
    patched = api.client.patch(
        f"/tasks/{created['id']}", json={"remind_before_seconds": seconds}, headers=alice.headers
    )

    assert created["remind_before_seconds"] == int(seconds)
    assert patched.status_code == 200 and patched.json["remind_before_seconds"] == int(seconds)


@pytest.mark.parametrize("seconds", [None, 3600.5, "3600", True])
def test_lead_time_that_is_null_or_not_an_integer_is_refused_by_post_and_patch(
    api: ApiHarness, seconds: Any
) -> None:
    """One rule for both: null is not the default (leave the field out for that)."""
    alice = api.account("alice")
    task = create(api, alice, remind_before_seconds=600)
    body = {"title": "t", "due_at": "2030-01-31T09:00:00Z", "remind_before_seconds": seconds}

    created = api.client.post("/tasks", json=body, headers=alice.headers)
    patched = api.client.patch(
        f"/tasks/{task['id']}", json={"remind_before_seconds": seconds}, headers=alice.headers
    )

    assert bad_fields(created) == {"remind_before_seconds"}
    assert bad_fields(patched) == {"remind_before_seconds"}
    assert [
        item["id"] for item in api.client.get("/tasks", headers=alice.headers).json["items"]
    ] == [task["id"]]
    assert api.client.get(f"/tasks/{task['id']}", headers=alice.headers).json == task


@pytest.mark.parametrize(
    "query",
    ["limit=%2B5", "limit=5_0", "limit=%205", "limit=5.5", "limit=true", "limit=1.0", "limit=1e0"],
)
def test_query_integer_not_written_with_digits_is_refused(api: ApiHarness, query: str) -> None:
    alice = api.account("alice")

    assert bad_fields(api.client.get(f"/tasks?{query}", headers=alice.headers)) == {"limit"}


def test_query_integer_written_with_digits_is_read(api: ApiHarness) -> None:
    alice = api.account("alice")
    for day in (1, 2):
        create(api, alice, due_at=f"2030-01-0{day}T09:00:00Z")

    page = api.client.get("/tasks?limit=1", headers=alice.headers)

    assert page.status_code == 200
    assert len(page.json["items"]) == 1 and page.json["next_cursor"]


def test_missing_required_fields_are_named(api: ApiHarness) -> None:
    alice = api.account("alice")

    response = api.client.post("/tasks", json={}, headers=alice.headers)

    assert bad_fields(response) == {"title", "due_at"}


def test_json_body_that_is_not_an_object_is_422(api: ApiHarness) -> None:
    alice = api.account("alice")

    response = api.client.post("/tasks", json=["title", "due_at"], headers=alice.headers)

    assert_problem(response, 422)


def test_body_over_64_kib_is_413(api: ApiHarness) -> None:
    alice = api.account("alice")
    body = json.dumps({"title": "t", "due_at": "2030-01-31T09:00:00Z", "notes": "n" * 70_000})

    response = api.client.post(
        "/tasks", data=body, content_type="application/json", headers=alice.headers
    )

    assert_problem(response, 413)
    assert api.client.get("/tasks", headers=alice.headers).json["items"] == []


def test_non_json_content_type_is_415(api: ApiHarness) -> None:
    alice = api.account("alice")
    body = json.dumps({"title": "t", "due_at": "2030-01-31T09:00:00Z"})

    response = api.client.post(
        "/tasks", data=body, content_type="text/plain", headers=alice.headers
    )

    assert_problem(response, 415)


def test_form_post_is_415(api: ApiHarness) -> None:
    alice = api.account("alice")

    response = api.client.post(
        "/tasks", data={"title": "t", "due_at": "2030-01-31T09:00:00Z"}, headers=alice.headers
    )

    assert_problem(response, 415)


def test_malformed_json_is_400(api: ApiHarness) -> None:
    alice = api.account("alice")

    response = api.client.post(
        "/tasks", data='{"title": "t",', content_type="application/json", headers=alice.headers
    )

    assert_problem(response, 400)


def test_malformed_json_in_patch_is_400_and_changes_nothing(api: ApiHarness) -> None:
    alice = api.account("alice")
    task = create(api, alice)

    response = api.client.patch(
        f"/tasks/{task['id']}",
        data="{title: x}",
        content_type="application/json",
        headers=alice.headers,
    )

    assert_problem(response, 400)
    assert api.client.get(f"/tasks/{task['id']}", headers=alice.headers).json == task


def test_non_uuid_task_path_is_404(api: ApiHarness) -> None:
    alice = api.account("alice")

    assert_problem(api.client.get("/tasks/not-a-uuid", headers=alice.headers), 404)
    assert_problem(api.client.delete("/tasks/123", headers=alice.headers), 404)


def test_unknown_route_is_404_problem(api: ApiHarness) -> None:
    assert_problem(api.client.get("/nowhere"), 404)
    assert_problem(api.client.get("/tasks/x/y/z", headers=api.account("alice").headers), 404)


def test_wrong_method_is_405_problem(api: ApiHarness) -> None:
    alice = api.account("alice")
    task = create(api, alice)

    response = api.client.put(f"/tasks/{task['id']}", json={"title": "x"}, headers=alice.headers)

    assert_problem(response, 405)
    assert "PATCH" in response.headers["Allow"]


# --- authentication ------------------------------------------------------------------------


def assert_unauthorized(response: Any) -> None:
    assert_problem(response, 401)
    assert response.headers["WWW-Authenticate"].lower().startswith("bearer")


def test_request_without_token_is_401(api: ApiHarness) -> None:
    assert_unauthorized(api.client.get("/tasks"))
    assert_unauthorized(
        api.client.post("/tasks", json={"title": "t", "due_at": "2030-01-31T09:00:00Z"})
    )


@pytest.mark.parametrize(
    "authorization",
    ["Bearer rem_not-a-real-token", "Bearer ", "Basic YWxpY2U6c2VjcmV0", "Bearer " + "x" * 500],
)
def test_request_with_bad_token_is_401(api: ApiHarness, authorization: str) -> None:
    api.account("alice")

    assert_unauthorized(api.client.get("/tasks", headers={"Authorization": authorization}))


def test_revoked_token_is_401(api: ApiHarness) -> None:
    alice = api.account("alice")
    task = create(api, alice)
    with unit_of_work(make_session_factory(api.engine)) as session:
        session.execute(
            update(ApiToken)
            .where(ApiToken.token_hash == hash_token(alice.token))
            .values(revoked_at=datetime.now(UTC))
        )

    assert_unauthorized(api.client.get("/tasks", headers=alice.headers))
    assert_unauthorized(api.client.get(f"/tasks/{task['id']}", headers=alice.headers))


def test_rejected_token_does_not_create_a_task(api: ApiHarness) -> None:
    api.client.post(
        "/tasks",
        json={"title": "t", "due_at": "2030-01-31T09:00:00Z"},
        headers={"Authorization": "Bearer rem_forged"},
    )

    with unit_of_work(make_session_factory(api.engine)) as session:
        assert session.scalars(select(Task)).all() == []


# --- isolation between users ---------------------------------------------------------------


def test_another_users_task_is_not_found_and_left_unchanged(api: ApiHarness) -> None:
    alice = api.account("alice")
    bob = api.account("bob")
    task = create(api, alice, title="Alice's secret", notes="private")
    path = f"/tasks/{task['id']}"

    assert_problem(api.client.get(path, headers=bob.headers), 404)
    assert_problem(api.client.get(f"{path}/reminders", headers=bob.headers), 404)
    assert_problem(
        api.client.patch(path, json={"title": "pwned", "status": "done"}, headers=bob.headers), 404
    )
    assert_problem(api.client.delete(path, headers=bob.headers), 404)

    assert api.client.get(path, headers=alice.headers).json == task
    assert [row.state for row in reminder_rows(api.engine, task["id"])] == ["waiting"]


def test_not_found_answer_is_the_same_for_missing_and_foreign_tasks(api: ApiHarness) -> None:
    alice = api.account("alice")
    bob = api.account("bob")
    task = create(api, alice)

    foreign = api.client.get(f"/tasks/{task['id']}", headers=bob.headers)
    missing = api.client.get(f"/tasks/{uuid.uuid4()}", headers=bob.headers)

    assert foreign.status_code == missing.status_code == 404
    assert foreign.json == missing.json


def test_list_shows_only_the_callers_tasks(api: ApiHarness) -> None:
    alice = api.account("alice")
    bob = api.account("bob")
    alice_ids = {create(api, alice, title=f"a{i}")["id"] for i in range(3)}
    bob_task = create(api, bob, title="b")

    bob_list = api.client.get("/tasks", headers=bob.headers).json
    alice_list = api.client.get("/tasks", headers=alice.headers).json
    bob_done = api.client.get("/tasks?status=open&limit=200", headers=bob.headers).json

    assert [item["id"] for item in bob_list["items"]] == [bob_task["id"]]
    assert [item["id"] for item in bob_done["items"]] == [bob_task["id"]]
    assert {item["id"] for item in alice_list["items"]} == alice_ids
    assert all(item["owner"] == "alice" for item in alice_list["items"])


def test_cursor_from_another_user_does_not_reveal_their_tasks(api: ApiHarness) -> None:
    alice = api.account("alice")
    bob = api.account("bob")
    for day in range(1, 4):
        create(api, alice, due_at=f"2030-01-0{day}T00:00:00Z")
    bob_task = create(api, bob, due_at="2030-01-09T00:00:00Z")
    cursor = api.client.get("/tasks?limit=1", headers=alice.headers).json["next_cursor"]

    response = api.client.get("/tasks", query_string={"cursor": cursor}, headers=bob.headers)

    assert response.status_code == 200
    assert [item["id"] for item in response.json["items"]] == [bob_task["id"]]


def test_json_content_type_with_charset_is_accepted(api: ApiHarness) -> None:
    alice = api.account("alice")
    body = json.dumps({"title": "Café", "due_at": "2030-01-31T09:00:00Z"}).encode()

    response = api.client.post(
        "/tasks", data=body, content_type="application/json; charset=utf-8", headers=alice.headers
    )

    assert response.status_code == 201
    assert response.json["title"] == "Café"


# --- Idempotency-Key -----------------------------------------------------------------------


def test_same_idempotency_key_and_body_returns_the_first_task_again(api: ApiHarness) -> None:
    alice = api.account("alice")
    body = {"title": "Once", "due_at": "2030-01-31T09:00:00Z"}
    headers = {**alice.headers, "Idempotency-Key": "k-1"}

    first = api.client.post("/tasks", json=body, headers=headers)
    second = api.client.post("/tasks", json=body, headers=headers)

    assert first.status_code == second.status_code == 201
    assert second.json == first.json
    assert len(api.client.get("/tasks", headers=alice.headers).json["items"]) == 1


def test_same_idempotency_key_with_another_body_is_422(api: ApiHarness) -> None:
    alice = api.account("alice")
    headers = {**alice.headers, "Idempotency-Key": "k-2"}
    api.client.post(
        "/tasks", json={"title": "A", "due_at": "2030-01-31T09:00:00Z"}, headers=headers
    )

    response = api.client.post(
        "/tasks", json={"title": "B", "due_at": "2030-01-31T09:00:00Z"}, headers=headers
    )

    assert_problem(response, 422)
    assert len(api.client.get("/tasks", headers=alice.headers).json["items"]) == 1


# --- health, readiness, OpenAPI ------------------------------------------------------------


def test_healthz_answers_without_a_token(api: ApiHarness) -> None:
    response = api.client.get("/healthz")

    assert response.status_code == 200
    assert response.json == {"status": "ok"}


def test_readyz_is_200_when_database_and_broker_answer(api: ApiHarness) -> None:
    response = api.client.get("/readyz")

    assert response.status_code == 200
    assert response.json == {"status": "ready", "checks": {"database": "ok", "broker": "ok"}}


def test_readyz_is_503_naming_the_broker_when_redis_is_down(pg_engine: Engine, pg_url: str) -> None:
    settings = make_settings(database_url=pg_url, redis_url="redis://127.0.0.1:1/0")
    client = create_app(settings, engine=pg_engine).test_client()

    response = client.get("/readyz")

    assert response.status_code == 503
    body = json.loads(response.get_data(as_text=True))
    assert body["status"] == "unavailable"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["broker"] != "ok"


def test_readyz_is_503_naming_the_database_when_postgres_is_down(redis_namespace: str) -> None:
    url = "postgresql+psycopg://postgres@127.0.0.1:1/test?connect_timeout=2"
    settings = make_settings(database_url=url, redis_url=REDIS_URL, redis_namespace=redis_namespace)
    engine = make_engine(url)
    try:
        response = create_app(settings, engine=engine).test_client().get("/readyz")
    finally:
        engine.dispose()

    assert response.status_code == 503
    body = json.loads(response.get_data(as_text=True))
    assert body["status"] == "unavailable"
    assert body["checks"]["database"] != "ok"
    assert body["checks"]["broker"] == "ok"


def openapi_document(api: ApiHarness) -> dict[str, Any]:
    response = api.client.get("/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    return dict(response.json)


def test_openapi_document_is_a_valid_openapi_3_document(api: ApiHarness) -> None:
    document = openapi_document(api)

    assert document["openapi"].startswith("3.")
    validate(document)


def test_openapi_document_states_the_type_rules_the_server_applies(api: ApiHarness) -> None:
    """Integers are "integer" (so 3600.0 is one), no field but notes, recurrence and
    endpoint_id is nullable, booleans are booleans: what the server accepts and refuses,
    field by field, body and query."""
    document = openapi_document(api)
    schemas = document["components"]["schemas"]
    bodies = {name: schemas[name]["properties"] for name in ("TaskCreate", "TaskPatch")}
    bodies["BulkRetryRequest"] = schemas["BulkRetryRequest"]["properties"]
    queries = {
        (path, parameter["name"]): parameter
        for path in ("/tasks", "/ops/dead-letters")
        for parameter in document["paths"][path]["get"]["parameters"]
    }

    for fields in bodies.values():
        for name, field in fields.items():
            nullable = {"type": "null"} in field.get("anyOf", [])
            assert nullable == (name in ("notes", "recurrence", "endpoint_id")), name
            assert "default" not in field or field["default"] is not None or nullable, name
    for name in ("remind_before_seconds",):
        for model in ("TaskCreate", "TaskPatch"):
            field = bodies[model][name]
            assert (field["type"], field["minimum"], field["maximum"]) == ("integer", 60, 2592000)
    assert bodies["BulkRetryRequest"]["older_than_seconds"]["type"] == "integer"
    assert bodies["BulkRetryRequest"]["dry_run"]["type"] == "boolean"
    for (path, name), parameter in queries.items():
        assert "anyOf" not in parameter["schema"], (path, name)
        assert parameter["schema"].get("default", 0) is not None, (path, name)
    for key in [("/tasks", "limit"), ("/ops/dead-letters", "limit")]:
        assert queries[key]["schema"]["type"] == "integer"
    for name in ("older_than_seconds", "newer_than_seconds"):
        assert queries[("/ops/dead-letters", name)]["schema"]["type"] == "integer"


def test_openapi_document_covers_every_route_and_method(api: ApiHarness) -> None:
    app = api.client.application
    registered = {
        (re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}
    }

    document = openapi_document(api)
    documented = {
        (path, method) for path, operations in document["paths"].items() for method in operations
    }

    assert registered == documented
    assert {
        "/tasks",
        "/tasks/{task_id}",
        "/tasks/{task_id}/reminders",
        "/healthz",
        "/readyz",
        "/openapi.json",
    } <= set(document["paths"])
