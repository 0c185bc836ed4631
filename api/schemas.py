"""Request and response schemas of the HTTP API (pydantic v2).

The same models validate requests and generate ``/openapi.json`` (through flask-openapi3),
so the document cannot drift from what the server accepts. Request models forbid unknown
fields, take strict JSON types (no ``"5"`` for a number, no ``true`` for an integer) and
accept only RFC 3339 times that carry an offset.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from shared.config import THIRTY_DAYS

MAX_PAGE_SIZE = 200
DEFAULT_PAGE_SIZE = 50


def _rfc3339_text(value: Any) -> Any:
    # pydantic would read a number as a Unix timestamp; the API speaks RFC 3339 only.
    if not isinstance(value, str | datetime):
        raise ValueError("must be an RFC 3339 date-time string with an offset")
    return value


Timestamp = Annotated[
    AwareDatetime,
    BeforeValidator(_rfc3339_text),
    Field(description="RFC 3339 date-time with an offset, e.g. 2030-01-31T09:00:00+01:00"),
]
Title = Annotated[StrictStr, Field(min_length=1, max_length=200, pattern=r"\S")]
Notes = Annotated[StrictStr, Field(max_length=10_000)]
RemindBefore = Annotated[
    StrictInt,
    Field(ge=60, le=THIRTY_DAYS, description="Seconds before due_at at which to remind."),
]
Status = Literal["open", "done"]


class RequestModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskCreate(RequestModel):
    title: Title
    notes: Notes | None = None
    due_at: Timestamp
    remind_before_seconds: RemindBefore | SkipJsonSchema[None] = Field(
        default=None, description="Default: REMINDERS_REMIND_BEFORE_SECONDS (86400)."
    )


class TaskPatch(RequestModel):
    """Only the fields present change; ``notes: null`` clears the notes."""

    title: Title | SkipJsonSchema[None] = None
    notes: Notes | None = None
    due_at: Timestamp | SkipJsonSchema[None] = None
    remind_before_seconds: RemindBefore | SkipJsonSchema[None] = None
    status: Status | SkipJsonSchema[None] = None

    @model_validator(mode="after")
    def _no_null_except_notes(self) -> TaskPatch:
        nulls = [name for name in self.model_fields_set - {"notes"} if getattr(self, name) is None]
        if nulls:
            raise ValueError(f"may not be null: {', '.join(sorted(nulls))}")
        return self


class TaskQuery(RequestModel):
    status: Status | None = None
    due_after: Timestamp | None = Field(default=None, description="Only tasks due at or after.")
    due_before: Timestamp | None = Field(default=None, description="Only tasks due before.")
    limit: int = Field(default=DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)
    cursor: str | None = Field(
        default=None, max_length=200, description="next_cursor of the previous page."
    )


class TaskPath(RequestModel):
    task_id: uuid.UUID


class ReminderOut(BaseModel):
    state: Literal["waiting", "queued", "sent", "failed", "missed", "cancelled"]
    due_at: datetime
    remind_at: datetime
    message_id: uuid.UUID
    sent_at: datetime | None
    attempts: int
    late: bool
    last_error: str | None


class TaskOut(BaseModel):
    id: uuid.UUID
    owner: str
    title: str
    notes: str | None
    due_at: datetime
    remind_before_seconds: int
    remind_at: datetime
    status: Status
    created_at: datetime
    updated_at: datetime
    reminder: ReminderOut | None = Field(description="The reminder of the current due date.")


class TaskPage(BaseModel):
    items: list[TaskOut]
    next_cursor: str | None


class ReminderHistory(BaseModel):
    items: list[ReminderOut]


class FieldError(BaseModel):
    field: str
    message: str
    code: str
    in_: str = Field(alias="in")


class Problem(BaseModel):
    """RFC 9457 problem document; validation failures add ``errors``, one per bad field."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = None


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: Literal["ready", "unavailable"]
    checks: dict[str, str]
