"""Request and response schemas of the HTTP API (pydantic v2).

The same models validate requests and generate ``/openapi.json`` (through flask-openapi3),
so the document cannot drift from what the server accepts. One rule for every body and
query, ``/ops`` included: unknown fields are refused; types are JSON Schema's, strictly (no
``"5"`` for a number, no ``true`` or ``0`` for a boolean, no ``true`` for an integer), where
an integer in a body is a number with no fractional part (``3600.0`` is one, ``3600.5`` is
not); ``null`` only where the document says a field is nullable (leave a field out to get its
default); times are RFC 3339 strings that carry an offset. A query parameter is text, and an
integer one is written with digits only (``limit=50``, not ``limit=50.0``, ``limit=5e1`` or
``limit=+50``): OpenAPI's form style writes an integer that way, and that is what a client
generated from the document sends for its ``integer`` type.

Response models list every field they always return as required (`ResponseModel`).

What a client reads about a refused field is written here, beside each constraint: the
validators raise `PydanticCustomError` with their own code and sentence, and each pattern
has its sentence in `PATTERN_SENTENCES`; `api.field_messages` words pydantic's own checks.
"""

from __future__ import annotations

import copy
import re
import uuid
from datetime import UTC, datetime
from functools import cache
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError, PydanticKnownError

from shared.config import THIRTY_DAYS
from shared.delivery.endpoints import (
    DEFAULT_MAX_CONCURRENCY,
    MAX_CONCURRENCY_RANGE,
    MAX_PER_SECOND_MAX,
)
from shared.planning.recurrence import RecurrenceError, parse_rule, time_zone

MAX_PAGE_SIZE = 200
DEFAULT_PAGE_SIZE = 50


RFC3339_SHAPE = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")
DATE_TIME_SENTENCE = (
    "must be an RFC 3339 date-time string with an offset, e.g. 2030-01-31T09:00:00+01:00"
)

# The patterns of the document, each with what a client reads when a value does not match
# it (pydantic would show the regular expression).
NO_NUL = r"^[^\x00]*$"
VISIBLE_NO_NUL = r"^[^\x00]*[^\s\x00][^\x00]*$"
HTTP_URL = r"^[Hh][Tt][Tt][Pp][Ss]?://\S+$"
ERROR_TYPE_NAME = r"^[A-Za-z_][A-Za-z0-9_.]*$"
ERROR_TYPE_NAME_OR_EMPTY = r"^([A-Za-z_][A-Za-z0-9_.]*)?$"
# Idempotency-Key (`api.idempotency`): one key, as the draft's Structured Field string
# (RFC 9651: printable ASCII, with \" and \\ escaped; parameters, which the draft defines none
# of, allowed with a token, number, string or boolean value and ignored) or sent bare (printable
# ASCII but for what would make it a list, parameters or a string: no space, comma, semicolon,
# quote or backslash); the key itself 1-255 characters; optional whitespace around the value.
# The server's check and the document use this one expression.
_SF_STRING_CHAR = r'(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])'
_SF_BARE_ITEM = (
    r"(?:-?[0-9]{1,12}\.[0-9]{1,3}|-?[0-9]{1,15}|\?[01]"
    rf'|"{_SF_STRING_CHAR}*"'
    r"|[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*)"
)
_SF_PARAMETERS = rf"(?:;\x20*[a-z*][a-z0-9_.*\-]*(?:={_SF_BARE_ITEM})?)*"
IDEMPOTENCY_KEY = (
    r"^[\x20\x09]*"
    r"(?:[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]{1,255}"
    rf'|"{_SF_STRING_CHAR}{{1,255}}"{_SF_PARAMETERS})'
    r"[\x20\x09]*$"
)
_ERROR_TYPE_SENTENCE = (
    "must be an error type's name: letters, digits, '_' and '.', not starting with a digit"
)
PATTERN_SENTENCES = {
    NO_NUL: "must not contain the NUL character (U+0000)",
    VISIBLE_NO_NUL: "must contain a character other than spaces, and not the NUL character "
    "(U+0000)",
    HTTP_URL: "must be an https:// (or http://) URL without spaces",
    ERROR_TYPE_NAME: _ERROR_TYPE_SENTENCE,
    ERROR_TYPE_NAME_OR_EMPTY: _ERROR_TYPE_SENTENCE + ", or empty",
    IDEMPOTENCY_KEY: "must be one key of 1-255 printable ASCII characters, given once: a "
    'Structured Field string ("...", with \\" and \\\\ escaped) or a bare key (no spaces, '
    "commas, semicolons, quotes or backslashes)",
}


def _rfc3339_text(value: Any) -> Any:
    # pydantic would read a number, or a string of digits, as a Unix timestamp; the API
    # speaks RFC 3339 only.
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not RFC3339_SHAPE.match(value):
        raise PydanticCustomError("datetime_format", DATE_TIME_SENTENCE)
    return value


EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9998, 12, 31, tzinfo=UTC)


def _in_range(value: datetime) -> datetime:
    # Far dates would overflow once converted to UTC or moved by the reminder lead time.
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        utc = None
    if utc is None or not EARLIEST <= utc <= LATEST:
        raise PydanticCustomError("datetime_range", "must be between 1970-01-01 and 9998-12-31")
    return value


def _refuse_null(value: Any) -> Any:
    # pydantic lets None through the "absent" branch of an optional field; the document says
    # the field is not nullable, so an explicit null is refused, in POST as in PATCH.
    if value is None:
        raise PydanticCustomError(
            "null_not_allowed", "may not be null; leave the field out instead"
        )
    return value


T = TypeVar("T")
# An optional field that is not nullable: absent means its default (or "unchanged"), null is
# a 422, and the document shows only the field's own type.
Omittable = Annotated[T | SkipJsonSchema[None], BeforeValidator(_refuse_null)]


def _json_integer(value: Any) -> Any:
    # JSON Schema counts a number with no fractional part as an integer: 3600.0 is 3600.
    # A boolean is not a number, whatever Python thinks.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


QUERY_INTEGER = re.compile(r"^-?(?:0|[1-9][0-9]*)$")
JSON_NUMBER = re.compile(r"^-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?$")
QUERY_INTEGER_SENTENCE = "must be an integer written with digits only, e.g. 50 (not 50.0 or 5e1)"


def _query_integer(value: Any) -> Any:
    # A query parameter is text: an integer's digits, nothing looser. The document says
    # "integer", which generated clients send as digits; "50.0" would be a number there.
    if isinstance(value, str):
        if QUERY_INTEGER.match(value):
            return int(value)
        if JSON_NUMBER.match(value):  # a number, but not written as an integer
            raise PydanticCustomError("int_digits", QUERY_INTEGER_SENTENCE)
        raise PydanticKnownError("int_parsing")
    return value


# Integers are built as Annotated[StrictInt, Field(bounds), BeforeValidator(...)], in that
# order: the bounds stay on the integer (the document shows minimum/maximum) and StrictInt
# refuses strings, booleans and fractions left after the conversion.

Timestamp = Annotated[
    AwareDatetime,
    BeforeValidator(_rfc3339_text),
    AfterValidator(_in_range),
    Field(
        description="RFC 3339 date-time with an offset, e.g. 2030-01-31T09:00:00+01:00, "
        "between 1970 and 9998"
    ),
]
# PostgreSQL text cannot hold NUL characters: refuse them with a 422, not a 500.
Title = Annotated[StrictStr, Field(min_length=1, max_length=200, pattern=VISIBLE_NO_NUL)]
Notes = Annotated[StrictStr, Field(max_length=10_000, pattern=NO_NUL)]
RemindBefore = Annotated[
    StrictInt,
    Field(ge=60, le=THIRTY_DAYS, description="Seconds before due_at at which to remind."),
    BeforeValidator(_json_integer),
]
Status = Literal["open", "done"]
MAX_REMINDERS = 5


def _known_zone(value: str) -> str:
    try:
        time_zone(value)
    except RecurrenceError as error:  # names the zone
        raise PydanticCustomError("invalid_time_zone", str(error)) from None
    return value


def _supported_rule(value: str) -> str:
    try:
        return parse_rule(value).text  # stored normalised
    except RecurrenceError as error:  # names the problem
        raise PydanticCustomError("invalid_rule", str(error)) from None


def _distinct(values: list[int]) -> list[int]:
    if len(set(values)) != len(values):
        raise PydanticCustomError("duplicate_offsets", "offsets must be distinct")
    return sorted(values, reverse=True)  # the earliest reminder first


TimeZoneName = Annotated[
    StrictStr,
    Field(
        min_length=1,
        max_length=64,
        description="IANA time zone (e.g. Europe/Paris) in which a recurring task's local "
        "wall time repeats, and in which local_due_at is shown.",
    ),
    AfterValidator(_known_zone),
]
Recurrence = Annotated[
    StrictStr,
    Field(
        min_length=1,
        max_length=500,
        description="An RFC 5545 RRULE value without the 'RRULE:' prefix (FREQ, INTERVAL, COUNT "
        "or UNTIL, BYDAY, BYMONTHDAY, BYMONTH, BYSETPOS, BYHOUR, BYMINUTE, WKST), e.g. "
        "FREQ=WEEKLY;BYDAY=MO. The series starts at due_at; its local wall time in time_zone "
        "repeats. Returned normalised.",
    ),
    AfterValidator(_supported_rule),
]
Offsets = Annotated[
    list[RemindBefore],
    Field(
        min_length=1,
        max_length=MAX_REMINDERS,
        description="Seconds before each occurrence at which to remind: 1 to 5 distinct "
        "values, 60 to 2592000 each. Returned sorted, earliest reminder first.",
    ),
    AfterValidator(_distinct),
]


def _no_null_defaults(schema: dict[str, Any]) -> None:
    # An optional field that may not be null has no default in the document: "absent"
    # is the default, and "default": null would contradict the field's own type.
    for field_schema in schema.get("properties", {}).values():
        if field_schema.get("default", ...) is None and "anyOf" not in field_schema:
            del field_schema["default"]


class CachedSchemaModel(BaseModel):
    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        # flask-openapi3 asks for the schema of a query model on every request; building it
        # costs more than the rest of a listing's validation. Cached, returned as a copy.
        return copy.deepcopy(_cached_schema(cls, args, tuple(sorted(kwargs.items()))))


class ResponseModel(BaseModel):
    """A body the API returns. Every field is always in it, defaults included, so the
    document marks every field required (the schema of what is serialized, not of what
    would be accepted): a generated client need not treat ``kind`` or ``endpoint_id`` as
    optional."""

    model_config = ConfigDict(
        json_schema_mode_override="serialization", json_schema_serialization_defaults_required=True
    )


class RequestModel(CachedSchemaModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_no_null_defaults)


@cache
def _cached_schema(
    model: type[BaseModel], args: tuple[Any, ...], kwargs: tuple[tuple[str, Any], ...]
) -> dict[str, Any]:
    generate = BaseModel.model_json_schema.__func__  # type: ignore[attr-defined]
    schema: dict[str, Any] = generate(model, *args, **dict(kwargs))
    return schema


def _one_form_of_offsets(model: Any) -> Any:
    if "reminders" in model.model_fields_set and "remind_before_seconds" in model.model_fields_set:
        raise PydanticCustomError(
            "conflicting_fields",
            "give reminders or remind_before_seconds (its one-offset form), not both",
        )
    return model


class TaskCreate(RequestModel):
    title: Title
    notes: Notes | None = None
    due_at: Timestamp = Field(description="The due date; a recurring task's first occurrence.")
    time_zone: Omittable[TimeZoneName] = Field(default=None, description="Default: UTC.")
    recurrence: Recurrence | None = Field(default=None, description="null: a one-off task.")
    reminders: Omittable[Offsets] = Field(
        default=None,
        description="Leave it out for one reminder at the default offset, "
        "REMINDERS_REMIND_BEFORE_SECONDS (86400).",
    )
    remind_before_seconds: Omittable[RemindBefore] = Field(
        default=None,
        description="The one-offset form of reminders: [remind_before_seconds].",
    )
    endpoint_id: uuid.UUID | None = Field(
        default=None,
        description="One of your endpoints (POST /endpoints) to deliver this task's "
        "reminders to; null: the deployment's channel.",
    )

    _check_offsets = model_validator(mode="after")(_one_form_of_offsets)


IdempotencyKeyField = Annotated[StrictStr, Field(pattern=IDEMPOTENCY_KEY)]


class CreateHeaders(CachedSchemaModel):
    model_config = ConfigDict(extra="ignore", json_schema_extra=_no_null_defaults)

    idempotency_key: IdempotencyKeyField | SkipJsonSchema[None] = Field(
        default=None,
        alias="Idempotency-Key",
        description="Retry-safe creation: the same key and body return the first response "
        'again, marked "Idempotent-Replayed: true"; kept 24 hours, per user. A Structured '
        'Field string ("abc") or the same key bare (abc).',
    )


class TaskPatch(RequestModel):
    """Only the fields present change; ``notes: null`` clears the notes, nothing else is null."""

    title: Omittable[Title] = None
    notes: Notes | None = None
    due_at: Omittable[Timestamp] = None
    time_zone: Omittable[TimeZoneName] = None
    recurrence: Recurrence | None = Field(default=None, description="null: make it one-off.")
    reminders: Omittable[Offsets] = None
    remind_before_seconds: Omittable[RemindBefore] = None
    endpoint_id: uuid.UUID | None = Field(
        default=None, description="null: the deployment's channel again."
    )
    status: Omittable[Status] = None

    _check_offsets = model_validator(mode="after")(_one_form_of_offsets)


PageSize = Annotated[StrictInt, Field(ge=1, le=MAX_PAGE_SIZE), BeforeValidator(_query_integer)]
Cursor = Annotated[
    StrictStr, Field(max_length=200, description="next_cursor of the previous page.")
]


class TaskQuery(RequestModel):
    status: Omittable[Status] = None
    due_after: Omittable[Timestamp] = Field(
        default=None,
        description="Only tasks next due at or after (a recurring task: its next occurrence).",
    )
    due_before: Omittable[Timestamp] = Field(
        default=None,
        description="Only tasks next due before (a recurring task: its next occurrence).",
    )
    limit: PageSize = DEFAULT_PAGE_SIZE
    cursor: Omittable[Cursor] = None


class TaskPath(RequestModel):
    task_id: uuid.UUID


class ReminderOut(ResponseModel):
    state: Literal["waiting", "queued", "sent", "failed", "missed", "cancelled"]
    kind: Literal["reminder", "snooze"] = "reminder"
    due_at: datetime = Field(description="The occurrence this reminder is for.")
    offset_seconds: int | None = Field(
        default=None, description="Seconds before due_at; null for a snooze."
    )
    remind_at: datetime
    message_id: uuid.UUID
    sent_at: datetime | None
    attempts: int
    late: bool = Field(
        description="Sent after its due date, which it was planned before (the system was "
        "down or behind)."
    )
    last_error: str | None
    cancelled_at: datetime | None = Field(
        description="When this reminder was last cancelled; kept if it was reopened since."
    )
    reopened_at: datetime | None = Field(
        description="When this cancelled reminder was last made pending again (the task "
        "moved back to this due date, or was reopened): the same reminder, sent once at most."
    )


class OccurrenceOut(ResponseModel):
    due_at: datetime = Field(description="UTC.")
    local_due_at: datetime = Field(description="The same instant with the task's zone's offset.")
    remind_at: list[datetime] = Field(description="Its reminders' times, earliest first (UTC).")


class TaskOut(ResponseModel):
    id: uuid.UUID
    owner: str
    title: str
    notes: str | None
    due_at: datetime = Field(description="The due date; a recurring task's first occurrence.")
    time_zone: str
    recurrence: str | None
    reminders: list[int] = Field(description="Offsets in seconds, earliest reminder first.")
    remind_before_seconds: int = Field(description="The first of reminders (one-offset form).")
    remind_at: datetime = Field(
        description="The earliest remind time of its next occurrence (a one-off task: due_at "
        "minus remind_before_seconds; a series that ended: of its last occurrence)."
    )
    endpoint_id: uuid.UUID | None = Field(
        default=None,
        description="Where its reminders go: one of your endpoints, or null for the "
        "deployment's channel (also once the endpoint is deleted).",
    )
    status: Status
    created_at: datetime
    updated_at: datetime
    reminder: ReminderOut | None = Field(
        description="The next reminder due, or, when none is pending, the latest one of the "
        "occurrences the task has now (never one of a due date it was moved away from)."
    )
    next_occurrence: OccurrenceOut | None = Field(
        default=None, description="A recurring task's next occurrence (null once it ended)."
    )


class TaskPage(ResponseModel):
    items: list[TaskOut]
    next_cursor: str | None


class ReminderPage(ResponseModel):
    items: list[ReminderOut]
    next_cursor: str | None


class HistoryQuery(RequestModel):
    limit: PageSize = DEFAULT_PAGE_SIZE
    cursor: Omittable[Cursor] = None


MAX_OCCURRENCES = 100
OccurrenceCount = Annotated[
    StrictInt, Field(ge=1, le=MAX_OCCURRENCES), BeforeValidator(_query_integer)
]


class OccurrenceQuery(RequestModel):
    after: Omittable[Timestamp] = Field(default=None, description="Default: now.")
    limit: OccurrenceCount = 10


class OccurrenceList(ResponseModel):
    items: list[OccurrenceOut]


SNOOZE_MIN_SECONDS = 60
SNOOZE_MAX_SECONDS = 7 * 86400
SnoozeSeconds = Annotated[
    StrictInt,
    Field(ge=SNOOZE_MIN_SECONDS, le=SNOOZE_MAX_SECONDS, description="From now: 60 s to 7 days."),
    BeforeValidator(_json_integer),
]


def _one_snooze_time(model: Any) -> Any:
    if (model.until is None) == (model.seconds is None):
        raise PydanticCustomError("until_or_seconds", "give until or seconds, one of them")
    return model


def _exactly_one_snooze_time(schema: dict[str, Any]) -> None:
    # The model validator's rule, in the document's terms: JSON Schema validators (and
    # clients generated from the document) see that one of the two, not both, is required.
    _no_null_defaults(schema)
    schema["oneOf"] = [{"required": ["until"]}, {"required": ["seconds"]}]


class SnoozeRequest(RequestModel):
    """Exactly one of until and seconds."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_exactly_one_snooze_time)

    until: Omittable[Timestamp] = Field(
        default=None, description="When to remind again: 60 s to 7 days from now."
    )
    seconds: Omittable[SnoozeSeconds] = None

    _check_time = model_validator(mode="after")(_one_snooze_time)


# -- endpoints ---------------------------------------------------------------------------


EndpointUrl = Annotated[
    StrictStr,
    Field(
        min_length=1,
        max_length=2048,
        pattern=HTTP_URL,
        description="An https:// URL on a public address (loopback, private, link-local and "
        "reserved addresses are refused unless the deployment allows them), without "
        "spaces, backslashes, control or invisible characters (bidi controls, U+FEFF, "
        "zero-width).",
    ),
]
EndpointDescription = Annotated[StrictStr, Field(max_length=500, pattern=NO_NUL)]
MaxConcurrency = Annotated[
    StrictInt,
    Field(
        ge=MAX_CONCURRENCY_RANGE[0],
        le=MAX_CONCURRENCY_RANGE[1],
        description="How many requests to this endpoint may be in flight at once, across every "
        "worker process and host: 1 to 64. A reminder over the limit waits for room, without "
        "spending an attempt.",
    ),
    BeforeValidator(_json_integer),
]
# A number, strictly: no "8", no true; an integer is a number (2 is 2.0). NaN and infinities
# (which Python's JSON parser reads) are not.
MaxPerSecond = Annotated[
    StrictFloat,
    Field(
        gt=0,
        le=MAX_PER_SECOND_MAX,
        allow_inf_nan=False,
        description="How many requests per second this endpoint takes: more than 0, at most "
        "1000; fractions allowed (0.5: one request every 2 seconds).",
    ),
]


class EndpointCreate(RequestModel):
    url: EndpointUrl
    description: EndpointDescription | None = None
    # Absent means the default, which the document shows; null is refused (there is always a
    # limit in flight), as it is in a PATCH.
    max_concurrency: Annotated[MaxConcurrency, BeforeValidator(_refuse_null)] = (
        DEFAULT_MAX_CONCURRENCY
    )
    max_per_second: MaxPerSecond | None = Field(default=None, description="null: no rate limit.")


class EndpointPatch(RequestModel):
    """Only the fields present change; ``enabled: true`` re-enables a disabled endpoint,
    ``max_per_second: null`` removes its rate limit."""

    url: Omittable[EndpointUrl] = None
    description: EndpointDescription | None = None
    enabled: Omittable[StrictBool] = None
    max_concurrency: Omittable[MaxConcurrency] = None
    max_per_second: MaxPerSecond | None = Field(
        default=None, description="null: no rate limit any more."
    )


class EndpointPath(RequestModel):
    endpoint_id: uuid.UUID


class EndpointOut(ResponseModel):
    id: uuid.UUID
    url: str
    description: str | None
    enabled: bool
    disabled_reason: str | None = Field(description="Why it was disabled (null when enabled).")
    disabled_at: datetime | None
    previous_secret_expires_at: datetime | None = Field(
        description="After a rotation, until when the previous secret still signs beside the "
        "new one; null when only one secret signs."
    )
    last_success_at: datetime | None
    last_failure_at: datetime | None
    failing_since: datetime | None = Field(
        description="The first failed attempt since the last success; null when healthy."
    )
    last_error: str | None
    max_concurrency: int = Field(
        description="Requests to this endpoint in flight at once, at most, across every worker "
        "process and host."
    )
    max_per_second: float | None = Field(
        description="Requests per second this endpoint takes, at most; null: no rate limit."
    )
    created_at: datetime
    updated_at: datetime


class EndpointCreated(EndpointOut):
    secret: str = Field(
        description="whsec_...: the signing secret, shown only in this answer. Verify with a "
        "Standard Webhooks library as given, or with Stripe's (X-Reminders-Signature)."
    )


class EndpointPage(ResponseModel):
    items: list[EndpointOut]
    next_cursor: str | None


class AttemptOut(ResponseModel):
    at: datetime
    kind: Literal["reminder", "ping"]
    message_id: str = Field(description="The reminder's message ID, or the ping's id.")
    ok: bool = Field(description="The endpoint answered 2xx.")
    status_code: int | None = Field(description="null when no answer came.")
    duration_ms: int
    error: str | None


class AttemptPage(ResponseModel):
    items: list[AttemptOut]
    next_cursor: str | None


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


class Health(ResponseModel):
    status: str


class Readiness(ResponseModel):
    status: Literal["ready", "unavailable"]
    checks: dict[str, str]


# -- operators ---------------------------------------------------------------------------

ErrorType = Annotated[StrictStr, Field(min_length=1, max_length=100, pattern=ERROR_TYPE_NAME)]
MAX_AGE_SECONDS = 10 * 365 * 86400
AgeSeconds = Annotated[StrictInt, Field(ge=0, le=MAX_AGE_SECONDS), BeforeValidator(_json_integer)]
QueryAgeSeconds = Annotated[
    StrictInt, Field(ge=0, le=MAX_AGE_SECONDS), BeforeValidator(_query_integer)
]


class DeadLetterQuery(RequestModel):
    error_type: Omittable[ErrorType] = Field(
        default=None, description="Only this final error type."
    )
    older_than_seconds: Omittable[QueryAgeSeconds] = Field(
        default=None, description="Failed at least this long ago."
    )
    newer_than_seconds: Omittable[QueryAgeSeconds] = Field(
        default=None, description="Failed less than this long ago."
    )
    limit: PageSize = DEFAULT_PAGE_SIZE
    cursor: Omittable[Cursor] = None


class DeadLetterPath(RequestModel):
    message_id: uuid.UUID


class DeadLetterOut(ResponseModel):
    message_id: uuid.UUID = Field(
        description="The message ID; for an undecodable message, its broker id (`broker_id`)."
    )
    task_id: uuid.UUID | None = Field(description="None when the message does not name one.")
    due_at: datetime | None
    actor: str
    queue: str
    failed_at: datetime | None
    attempts: int
    error_type: str
    error: str = Field(
        description="The final attempt's error: type and message, never task content."
    )
    in_broker: bool = Field(
        description="False once the broker's entry expired (REMINDERS_DEAD_LETTER_TTL)."
    )
    broker_id: str | None = Field(
        default=None,
        description="Set for an entry only the broker knows: an undecodable message "
        "(error type UndecodableMessage) or one no reminder matches (UnmatchedMessage).",
    )
    retryable: bool = Field(
        default=True, description="False for broker-only entries: discard them instead."
    )


class DeadLetterDetail(DeadLetterOut):
    traceback: str | None = Field(
        description="Dramatiq's traceback of the attempt before the last (`error`: the last)."
    )


class DeadLetterPage(ResponseModel):
    items: list[DeadLetterOut]
    next_cursor: str | None
    error_types: dict[str, int] = Field(description="All live dead letters by final error type.")


class RetryResult(ResponseModel):
    message_id: uuid.UUID
    outcome: Literal["requeued", "already_sent"]


class BulkRetryRequest(RequestModel):
    error_type: Omittable[ErrorType] = Field(
        default=None, description="Only this final error type; leave it out for any."
    )
    older_than_seconds: Omittable[AgeSeconds] = Field(
        default=None, description="Failed at least this long ago; leave it out for any age."
    )
    dry_run: StrictBool = Field(default=False, description="true: only list what would be retried.")


class BulkRetryResult(ResponseModel):
    dry_run: bool
    count: int
    message_ids: list[uuid.UUID]


class QueueOut(ResponseModel):
    queue: str
    ready: int
    delayed: int
    in_flight: int
    dead: int


class QueueList(ResponseModel):
    items: list[QueueOut]


class ReceiverOut(ResponseModel):
    receiver: str = Field(
        description="`webhook` (the deployment's webhook) or `endpoint:<endpoint ID>`."
    )
    endpoint_id: uuid.UUID | None = Field(description="null for the deployment's webhook.")
    owner: str | None = Field(
        description="The endpoint owner's user name; null for the deployment's webhook, and "
        "for an endpoint deleted since."
    )
    max_concurrency: int | None = Field(
        description="Requests in flight at once, at most (the endpoint's, or "
        "REMINDERS_WEBHOOK_MAX_CONCURRENCY); null: no limit, or the endpoint was deleted."
    )
    max_per_second: float | None = Field(
        description="Requests per second, at most (the endpoint's, or "
        "REMINDERS_WEBHOOK_MAX_PER_SECOND); null: no rate limit, or the endpoint was deleted."
    )
    in_flight: int = Field(description="Requests to it in flight now, across every worker.")
    parked: int = Field(description="Reminders parked waiting for a slot of its concurrency.")
    backing_off_until: datetime | None = Field(
        description="Until when its reminders wait because it answered 429 or 503 with "
        "Retry-After; null when it is not backing off."
    )
    slow: bool = Field(
        description="Its requests take a second or more (their running average, or one still "
        "in flight): they go through the workers' slow lane."
    )
    average_ms: int | None = Field(
        description="The running average of its requests' time; null while none has ended "
        "(a new receiver gets one request at a time until its first answers)."
    )
    deferred: int = Field(
        description="Reminders its limits held back (parked or delayed, no attempt counted), "
        "since the gate first kept state for it."
    )
    throttled: int = Field(description="Its 429 and 503 answers, counted the same way.")


class ReceiverList(ResponseModel):
    items: list[ReceiverOut] = Field(
        description="Every receiver with requests in flight, reminders parked, or counts: "
        "backing off first, then most parked, then slow, then most in flight, then by name."
    )
