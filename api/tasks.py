"""The ``/tasks`` endpoints: thin views over `TaskService`, scoped to the caller."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from flask import Response, g, request
from flask_openapi3 import APIBlueprint, Tag
from pydantic import BaseModel
from sqlalchemy.orm import Session

from api import idempotency
from api.pagination import BadCursor
from api.problems import (
    BAD_BODY,
    MAYBE_RETRY_AFTER,
    bad_cursor_problem,
    field_problem,
    problem,
    problem_responses,
    recurrence_problem,
)
from api.schemas import (
    SNOOZE_MAX_SECONDS,
    SNOOZE_MIN_SECONDS,
    CreateHeaders,
    HistoryQuery,
    OccurrenceList,
    OccurrenceQuery,
    ReminderPage,
    SnoozeRequest,
    TaskCreate,
    TaskOut,
    TaskPage,
    TaskPatch,
    TaskPath,
    TaskQuery,
)
from api.service import NoEndpoint, NoTask, Owner, TaskDone, TaskService
from shared.planning.recurrence import RecurrenceError
from shared.store.db import utcnow

SECURITY: list[dict[str, list[str]]] = [{"bearer": []}]


# The decorators document what each view answers. 401, 429, 503 and the body checks' 400,
# 413 and 415 come from the app's hooks and are added to every operation by api.openapi.
REPLAYED = {
    idempotency.REPLAYED_HEADER: {
        "description": "true: this is the stored answer to the first request with this "
        "Idempotency-Key, replayed as it was given (nothing was created now). What it "
        "describes may have changed or been deleted since: its Location may now be a 404.",
        "required": False,
        "schema": {"type": "string", "enum": ["true"]},
    }
}
CREATED = {
    "description": "Created: the task; or, with an Idempotency-Key already used with this "
    "body, the first request's answer again (Idempotent-Replayed: true)",
    "headers": {
        "Location": {
            "description": "The task's URL (on a replay, the URL the first answer gave: the "
            "task may have been deleted since)",
            "required": True,
            "schema": {"type": "string", "format": "uri-reference"},
        },
        **REPLAYED,
    },
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TaskOut"}}},
}
SNOOZED = {
    "description": "The snooze's reminder; or, with an Idempotency-Key already used with "
    "this body, the first request's answer again (Idempotent-Replayed: true)",
    "headers": REPLAYED,
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ReminderOut"}}},
}
NO_TASK = {404: "No such task (or not yours, or deleted)"}


def json_response(
    model: BaseModel, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        model.model_dump_json(), status=status, mimetype="application/json", headers=headers
    )


def location(task: TaskOut) -> str:
    return f"/tasks/{task.id}"


def created(task: TaskOut) -> Response:
    return json_response(task, 201, {"Location": location(task)})


def not_found() -> Response:
    return problem(404, "no such task")


def endpoint_problem(error: NoEndpoint) -> Response:
    return field_problem("endpoint_id", str(error), "unknown_endpoint")


def caller() -> Owner:
    owner: Owner = g.owner
    return owner


def tasks_api(service: TaskService) -> APIBlueprint:
    """The tasks blueprint, bound to ``service``."""
    api = APIBlueprint(
        "tasks",
        __name__,
        url_prefix="/tasks",
        abp_tags=[Tag(name="tasks", description="A user's tasks and their reminders")],
        abp_security=SECURITY,
    )

    def idempotent(
        header: CreateHeaders,
        path: str,
        run: Callable[[Callable[[Session, BaseModel], None] | None], BaseModel],
        respond: Callable[[BaseModel], Response],
    ) -> Response:
        """Run a creating request once per ``Idempotency-Key`` (see `api.idempotency`):
        ``run(within)`` does the work, calling ``within`` inside its transaction."""
        owner = caller()
        if header.idempotency_key is None:
            return respond(run(None))
        request_hash = idempotency.fingerprint("POST", path, request.get_json())
        outcome = idempotency.claim(
            service.sessions, owner.id, header.idempotency_key, request_hash
        )
        if isinstance(outcome, idempotency.Replay):
            headers = {idempotency.REPLAYED_HEADER: "true"}
            if outcome.location:
                headers["Location"] = outcome.location
            return Response(
                outcome.body, outcome.status, mimetype="application/json", headers=headers
            )
        if isinstance(outcome, idempotency.Mismatch):
            return problem(
                422,
                "this Idempotency-Key was used with a different request body",
                type_="urn:reminders:problem:idempotency-key-reused",
            )
        if isinstance(outcome, idempotency.InFlight):
            return problem(
                409,
                "a request with this Idempotency-Key is still in progress",
                headers={"Retry-After": "1"},
            )
        claimed = outcome

        def keep_response(session: Session, made: BaseModel) -> None:
            answer = respond(made)
            idempotency.store_response(
                session,
                claimed,
                answer.status_code,
                made.model_dump_json(),
                answer.headers.get("Location"),
            )

        try:
            return respond(run(keep_response))
        except Exception:
            idempotency.release(service.sessions, claimed)
            raise

    @api.post(
        "",
        summary="Create a task",
        operation_id="createTask",
        responses={
            201: CREATED,
            **problem_responses(
                400,
                409,
                422,
                descriptions={
                    400: f"{BAD_BODY}; or Idempotency-Key is not one key: one "
                    'Structured Field string ("...") or one bare key, in one header line',
                    409: "A request with this Idempotency-Key is still in progress",
                    422: "Invalid fields, or this Idempotency-Key was used with another body",
                },
            ),
        },
    )
    def create_task(header: CreateHeaders, body: TaskCreate) -> Response:
        owner = caller()
        try:
            return idempotent(
                header,
                "/tasks",
                lambda within: service.create(owner, body, within=within),
                lambda task: created(task),  # type: ignore[arg-type]
            )
        except RecurrenceError as error:
            return recurrence_problem(error)
        except NoEndpoint as error:
            return endpoint_problem(error)

    @api.get(
        "",
        summary="List your tasks, ordered by due date",
        operation_id="listTasks",
        responses={200: TaskPage, **problem_responses(422)},
    )
    def list_tasks(query: TaskQuery) -> Response:
        try:
            page = service.list(caller(), query)
        except BadCursor as exc:
            return bad_cursor_problem(exc)
        return json_response(page)

    @api.get(
        "/<uuid:task_id>",
        summary="One task, with its next reminder (or its last one) and next occurrence",
        operation_id="getTask",
        responses={200: TaskOut, **problem_responses(404, 422, descriptions=NO_TASK)},
    )
    def get_task(path: TaskPath) -> Response:
        task = service.get(caller(), path.task_id)
        return json_response(task) if task else not_found()

    @api.patch(
        "/<uuid:task_id>",
        summary="Change a task; a change of when or how it reminds re-plans its reminders",
        operation_id="updateTask",
        responses={200: TaskOut, **problem_responses(404, 422, descriptions=NO_TASK)},
    )
    def update_task(path: TaskPath, body: TaskPatch) -> Response:
        """Changing due_at, time_zone, recurrence or reminders cancels the pending reminders
        that no longer match and opens the new ones; an unchanged (occurrence, offset) keeps
        its reminder, so it is never sent twice. status done ends the task (a recurring one:
        the whole series)."""
        try:
            task = service.update(caller(), path.task_id, body)
        except RecurrenceError as error:
            return recurrence_problem(error)
        except NoEndpoint as error:
            return endpoint_problem(error)
        return json_response(task) if task else not_found()

    @api.post(
        "/<uuid:task_id>/complete",
        summary="Complete the current occurrence",
        operation_id="completeTask",
        responses={
            200: TaskOut,
            **problem_responses(
                404,
                409,
                422,
                descriptions={**NO_TASK, 409: "The task is already done"},
                headers={409: None},
            ),
        },
    )
    def complete_task(path: TaskPath) -> Response:
        """A one-off task becomes done. A recurring task's pending reminders for its current
        occurrence (the earliest with a pending reminder, else the next) are cancelled and
        it moves on to the next occurrence; a series with none left becomes done."""
        try:
            task = service.complete(caller(), path.task_id)
        except TaskDone as error:
            return problem(409, str(error))
        return json_response(task) if task else not_found()

    @api.post(
        "/<uuid:task_id>/snooze",
        summary="Remind once more, later",
        operation_id="snoozeTask",
        responses={
            201: SNOOZED,
            **problem_responses(
                400,
                404,
                409,
                422,
                descriptions={
                    **NO_TASK,
                    400: f"{BAD_BODY}; or Idempotency-Key is not one key",
                    409: "The task is done, or a request with this Idempotency-Key is still "
                    "in progress (then with Retry-After)",
                    422: "Invalid fields, or this Idempotency-Key was used with another body",
                },
                headers={409: MAYBE_RETRY_AFTER},
            ),
        },
    )
    def snooze_task(path: TaskPath, header: CreateHeaders, body: SnoozeRequest) -> Response:
        """One more reminder for the task's latest occurrence (the one whose reminders have
        started, else the next), at ``until`` or ``seconds`` from now: its own reminder with
        its own message ID. Snoozing again until the same time is the same snooze. With
        ``seconds``, send an ``Idempotency-Key`` to retry safely: the retry answers the
        first snooze again instead of adding another."""
        owner = caller()
        now = utcnow()
        until = body.until or now + timedelta(seconds=body.seconds or 0)
        if (
            not now + timedelta(seconds=SNOOZE_MIN_SECONDS)
            <= until
            <= now + timedelta(seconds=SNOOZE_MAX_SECONDS)
        ):
            return field_problem("until", "must be 60 seconds to 7 days from now", "out_of_range")

        def run(within: Callable[[Session, BaseModel], None] | None) -> BaseModel:
            snoozed = service.snooze(owner, path.task_id, until, within=within)
            if snoozed is None:
                raise NoTask
            return snoozed

        try:
            return idempotent(
                header,
                f"/tasks/{path.task_id}/snooze",
                run,
                lambda snoozed: json_response(snoozed, 201),
            )
        except TaskDone as error:
            return problem(409, str(error))
        except NoTask:
            return not_found()

    @api.get(
        "/<uuid:task_id>/occurrences",
        summary="Preview the task's next occurrences, with local times",
        operation_id="listTaskOccurrences",
        responses={200: OccurrenceList, **problem_responses(404, 422, descriptions=NO_TASK)},
    )
    def task_occurrences(path: TaskPath, query: OccurrenceQuery) -> Response:
        """The occurrences due at or after ``after`` (default: now), at most ``limit``
        (≤ 100); a one-off task has one. local_due_at is the same instant with the task's
        zone's offset; remind_at lists its reminders' times."""
        found = service.occurrences(caller(), path.task_id, query.after, query.limit)
        if found is None:
            return not_found()
        return json_response(OccurrenceList(items=found))

    @api.delete(
        "/<uuid:task_id>",
        summary="Delete a task; its pending reminders are cancelled",
        operation_id="deleteTask",
        responses={204: None, **problem_responses(404, 422, descriptions=NO_TASK)},
    )
    def delete_task(path: TaskPath) -> Response:
        """Pending reminders are cancelled. From then on the task is a 404 for you everywhere,
        its reminder history included, as a task that never existed; its rows stay in the
        database for operators (dead letters, audit)."""
        return Response(status=204) if service.delete(caller(), path.task_id) else not_found()

    @api.get(
        "/<uuid:task_id>/reminders",
        summary="The task's reminder history, newest first",
        operation_id="listTaskReminders",
        responses={200: ReminderPage, **problem_responses(404, 422, descriptions=NO_TASK)},
    )
    def task_reminders(path: TaskPath, query: HistoryQuery) -> Response:
        """One entry per (occurrence, offset) and per snooze, newest remind time first,
        paged. A cancelled reminder made pending again (the task moved back to that due
        date, or reopened) is the same entry, with its cancelled_at and reopened_at. A
        deleted task's history is a 404, as the task is."""
        try:
            page = service.reminders(caller(), path.task_id, query)
        except BadCursor as exc:
            return bad_cursor_problem(exc)
        if page is None:
            return not_found()
        return json_response(page)

    return api
