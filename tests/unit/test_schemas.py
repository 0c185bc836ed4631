"""The request models on their own: what the API accepts and refuses before any database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from api.schemas import (
    BulkRetryRequest,
    DeadLetterQuery,
    EndpointCreate,
    EndpointPatch,
    TaskCreate,
    TaskPatch,
    TaskQuery,
)

THIRTY_DAYS = 30 * 24 * 3600
VALID = {"title": "Pay rent", "due_at": "2030-01-31T09:00:00+01:00"}


def rejected_fields(model: type[Any], data: dict[str, Any]) -> set[str]:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(data)
    return {str(error["loc"][0]) for error in caught.value.errors() if error["loc"]}


def test_valid_task_keeps_the_offset_of_its_due_date() -> None:
    task = TaskCreate.model_validate({**VALID, "notes": "n", "remind_before_seconds": 3600})

    assert task.due_at == datetime(2030, 1, 31, 8, 0, tzinfo=UTC)
    assert task.due_at.utcoffset() == timedelta(hours=1)
    assert task.remind_before_seconds == 3600


def test_remind_before_defaults_to_unset_so_config_decides() -> None:
    assert TaskCreate.model_validate(VALID).remind_before_seconds is None


@pytest.mark.parametrize(
    "due_at",
    ["2030-01-31T09:00:00", "2030-01-31", "tomorrow", ""],
)
def test_due_at_without_offset_or_not_a_date_time_is_rejected(due_at: str) -> None:
    assert rejected_fields(TaskCreate, {**VALID, "due_at": due_at}) == {"due_at"}


@pytest.mark.parametrize("due_at", [1893456000, 1893456000.5, True])
def test_due_at_as_a_number_is_rejected(due_at: Any) -> None:
    assert rejected_fields(TaskCreate, {**VALID, "due_at": due_at}) == {"due_at"}


def test_due_at_as_a_string_of_digits_is_rejected() -> None:
    assert rejected_fields(TaskCreate, {**VALID, "due_at": "1893456000"}) == {"due_at"}


def test_unknown_field_is_rejected_by_name() -> None:
    assert rejected_fields(TaskCreate, {**VALID, "priority": "high"}) == {"priority"}


def test_missing_title_and_due_at_are_both_named() -> None:
    assert rejected_fields(TaskCreate, {}) == {"title", "due_at"}


@pytest.mark.parametrize("title", ["", " ", "\t\n  ", "x" * 201, 42, None])
def test_bad_title_is_rejected(title: Any) -> None:
    assert rejected_fields(TaskCreate, {**VALID, "title": title}) == {"title"}


def test_title_of_200_characters_is_accepted() -> None:
    assert len(TaskCreate.model_validate({**VALID, "title": "x" * 200}).title) == 200


def test_notes_of_10000_characters_are_accepted_and_10001_rejected() -> None:
    assert TaskCreate.model_validate({**VALID, "notes": "n" * 10_000}).notes == "n" * 10_000
    assert rejected_fields(TaskCreate, {**VALID, "notes": "n" * 10_001}) == {"notes"}


@pytest.mark.parametrize(
    "seconds", [59, 0, -60, THIRTY_DAYS + 1, True, "3600", 3600.5, 59.0, float("inf"), [3600]]
)
def test_bad_remind_before_is_rejected(seconds: Any) -> None:
    data = {**VALID, "remind_before_seconds": seconds}

    assert rejected_fields(TaskCreate, data) == {"remind_before_seconds"}
    assert rejected_fields(TaskPatch, {"remind_before_seconds": seconds}) == {
        "remind_before_seconds"
    }


@pytest.mark.parametrize("seconds", [3600.0, 386597.0, 60.0, float(THIRTY_DAYS)])
def test_remind_before_as_an_integral_json_number_is_an_integer(seconds: float) -> None:
    """JSON Schema: 3600.0 is an integer; the document says "integer", so it is accepted."""
    created = TaskCreate.model_validate({**VALID, "remind_before_seconds": seconds})
    patched = TaskPatch.model_validate({"remind_before_seconds": seconds})

    assert created.remind_before_seconds == int(seconds)
    assert type(created.remind_before_seconds) is int
    assert patched.remind_before_seconds == int(seconds)


def test_create_refuses_null_remind_before_as_patch_does() -> None:
    """Not nullable in the document: null is refused everywhere; leaving it out is the default."""
    null = {**VALID, "remind_before_seconds": None}

    assert rejected_fields(TaskCreate, null) == {"remind_before_seconds"}
    assert rejected_fields(TaskPatch, {"remind_before_seconds": None}) == {"remind_before_seconds"}


@pytest.mark.parametrize("dry_run", ["off", "true", 0, 1, None, "false"])
def test_bulk_retry_dry_run_must_be_a_json_boolean(dry_run: Any) -> None:
    assert rejected_fields(BulkRetryRequest, {"dry_run": dry_run}) == {"dry_run"}


@pytest.mark.parametrize("seconds", ["60", True, 60.5, None, "sixty"])
def test_bulk_retry_age_must_be_a_json_integer(seconds: Any) -> None:
    data = {"older_than_seconds": seconds}

    assert rejected_fields(BulkRetryRequest, data) == {"older_than_seconds"}


@pytest.mark.parametrize("error_type", [5, None, True, ["X"]])
def test_bulk_retry_error_type_must_be_a_string(error_type: Any) -> None:
    assert rejected_fields(BulkRetryRequest, {"error_type": error_type}) == {"error_type"}


def test_bulk_retry_takes_json_booleans_and_integral_numbers() -> None:
    request = BulkRetryRequest.model_validate({"dry_run": True, "older_than_seconds": 60.0})

    assert (request.dry_run, request.older_than_seconds) == (True, 60)


@pytest.mark.parametrize(
    ("model", "name"),
    [
        (TaskQuery, "limit"),
        (DeadLetterQuery, "limit"),
        (DeadLetterQuery, "older_than_seconds"),
        (DeadLetterQuery, "newer_than_seconds"),
    ],
)
@pytest.mark.parametrize(
    "text", ["+50", " 50", "5_0", "0x10", "50.5", "50.0", "5e1", "true", "NaN", "", "1e"]
)
def test_query_integers_are_written_with_digits_only(
    model: type[Any], name: str, text: str
) -> None:
    assert rejected_fields(model, {name: text}) == {name}


@pytest.mark.parametrize(("text", "value"), [("50", 50), ("7", 7), ("200", 200)])
def test_query_integers_read_digits(text: str, value: int) -> None:
    assert TaskQuery.model_validate({"limit": text}).limit == value
    query = DeadLetterQuery.model_validate({"limit": text, "older_than_seconds": text})
    assert (query.limit, query.older_than_seconds) == (value, value)


def schema_properties(model: type[Any]) -> dict[str, Any]:
    return dict(model.model_json_schema()["properties"])


@pytest.mark.parametrize(
    ("model", "name"),
    [
        (TaskCreate, "remind_before_seconds"),
        (TaskPatch, "remind_before_seconds"),
        (TaskQuery, "limit"),
        (DeadLetterQuery, "limit"),
        (DeadLetterQuery, "older_than_seconds"),
        (DeadLetterQuery, "newer_than_seconds"),
        (BulkRetryRequest, "older_than_seconds"),
        (EndpointCreate, "max_concurrency"),
        (EndpointPatch, "max_concurrency"),
    ],
)
def test_document_says_integer_with_bounds_and_no_null(model: type[Any], name: str) -> None:
    field = schema_properties(model)[name]

    assert field["type"] == "integer"
    assert isinstance(field["minimum"], int) and isinstance(field["maximum"], int)
    assert "anyOf" not in field and field.get("default", 0) is not None


def test_document_marks_only_notes_recurrence_endpoint_description_and_rate_as_nullable() -> None:
    """What the server refuses as null, the document does not allow as null, and back:
    null clears the notes, makes a task one-off (recurrence), sends its reminders to the
    deployment's channel (endpoint_id), clears an endpoint's description, and removes its
    rate limit (max_per_second)."""
    for model in (
        TaskCreate,
        TaskPatch,
        TaskQuery,
        BulkRetryRequest,
        DeadLetterQuery,
        EndpointCreate,
        EndpointPatch,
    ):
        nullable = {
            name
            for name, field in schema_properties(model).items()
            if {"type": "null"} in field.get("anyOf", []) or field.get("default", 0) is None
        }
        expected = {
            TaskCreate: {"notes", "recurrence", "endpoint_id"},
            TaskPatch: {"notes", "recurrence", "endpoint_id"},
            EndpointCreate: {"description", "max_per_second"},
            EndpointPatch: {"description", "max_per_second"},
        }.get(model, set())
        assert nullable == expected, model
    assert schema_properties(BulkRetryRequest)["dry_run"] == {
        "default": False,
        "description": "true: only list what would be retried.",
        "title": "Dry Run",
        "type": "boolean",
    }


@pytest.mark.parametrize("seconds", [60, THIRTY_DAYS])
def test_remind_before_bounds_are_inclusive(seconds: int) -> None:
    task = TaskCreate.model_validate({**VALID, "remind_before_seconds": seconds})

    assert task.remind_before_seconds == seconds


@pytest.mark.parametrize("field", ["title", "due_at", "status", "remind_before_seconds"])
def test_patch_may_not_null_a_required_field(field: str) -> None:
    assert rejected_fields(TaskPatch, {field: None}) == {field}


def test_patch_with_null_notes_clears_them() -> None:
    patch = TaskPatch.model_validate({"notes": None})

    assert patch.model_dump(exclude_unset=True) == {"notes": None}


def test_patch_carries_only_the_fields_present() -> None:
    patch = TaskPatch.model_validate({"title": "New", "status": "done"})

    assert patch.model_dump(exclude_unset=True) == {"title": "New", "status": "done"}


def test_patch_rejects_unknown_status_and_unknown_fields() -> None:
    assert rejected_fields(TaskPatch, {"status": "archived"}) == {"status"}
    assert rejected_fields(TaskPatch, {"owner": "mallory"}) == {"owner"}


def test_patch_rejects_a_naive_due_at() -> None:
    assert rejected_fields(TaskPatch, {"due_at": "2030-01-31T09:00:00"}) == {"due_at"}


def test_patch_accepts_a_due_at_in_any_offset() -> None:
    patch = TaskPatch.model_validate({"due_at": "2030-01-31T09:00:00-08:00"})

    assert patch.due_at == datetime(2030, 1, 31, 9, tzinfo=timezone(timedelta(hours=-8)))


@pytest.mark.parametrize("limit", [0, 201, -1])
def test_query_limit_outside_1_to_200_is_rejected(limit: int) -> None:
    assert rejected_fields(TaskQuery, {"limit": limit}) == {"limit"}


def test_query_rejects_a_naive_due_after() -> None:
    assert rejected_fields(TaskQuery, {"due_after": "2030-01-01T00:00:00"}) == {"due_after"}
