"""The ``/tasks`` endpoints: thin views over `TaskService`, scoped to the caller."""

from __future__ import annotations

from flask import Response, g, request
from flask_openapi3 import APIBlueprint, Tag
from pydantic import BaseModel
from sqlalchemy.orm import Session

from api import idempotency
from api.pagination import BadCursor
from api.problems import bad_cursor_problem, problem, problem_responses
from api.schemas import (
    CreateHeaders,
    ReminderHistory,
    TaskCreate,
    TaskOut,
    TaskPage,
    TaskPatch,
    TaskPath,
    TaskQuery,
)
from api.service import Owner, TaskService

SECURITY: list[dict[str, list[str]]] = [{"bearer": []}]


# The decorators document what each view answers. 401, 429, 503 and the body checks' 400,
# 413 and 415 come from the app's hooks and are added to every operation by api.openapi.
CREATED = {
    "description": "Created: the task",
    "headers": {
        "Location": {
            "description": "The task's URL",
            "required": True,
            "schema": {"type": "string", "format": "uri-reference"},
        }
    },
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TaskOut"}}},
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
                    400: "The body is not JSON, or Idempotency-Key is not one key: one "
                    'Structured Field string ("...") or one bare key, in one header line',
                    409: "A request with this Idempotency-Key is still in progress",
                    422: "Invalid fields, or this Idempotency-Key was used with another body",
                },
            ),
        },
    )
    def create_task(header: CreateHeaders, body: TaskCreate) -> Response:
        owner = caller()
        if header.idempotency_key is None:
            return created(service.create(owner, body))
        request_hash = idempotency.fingerprint("POST", "/tasks", request.get_json())
        outcome = idempotency.claim(
            service.sessions, owner.id, header.idempotency_key, request_hash
        )
        if isinstance(outcome, idempotency.Replay):
            headers = {"Location": outcome.location} if outcome.location else {}
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

        def keep_response(session: Session, task: TaskOut) -> None:
            idempotency.store_response(
                session, claimed, 201, task.model_dump_json(), location(task)
            )

        try:
            return created(service.create(owner, body, within=keep_response))
        except Exception:
            idempotency.release(service.sessions, claimed)
            raise

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
        summary="One task, with the reminder of its current due date",
        operation_id="getTask",
        responses={200: TaskOut, **problem_responses(404, 422, descriptions=NO_TASK)},
    )
    def get_task(path: TaskPath) -> Response:
        task = service.get(caller(), path.task_id)
        return json_response(task) if task else not_found()

    @api.patch(
        "/<uuid:task_id>",
        summary="Change a task; a new due date is a new reminder occurrence",
        operation_id="updateTask",
        responses={200: TaskOut, **problem_responses(404, 422, descriptions=NO_TASK)},
    )
    def update_task(path: TaskPath, body: TaskPatch) -> Response:
        task = service.update(caller(), path.task_id, body)
        return json_response(task) if task else not_found()

    @api.delete(
        "/<uuid:task_id>",
        summary="Delete a task; a pending reminder is cancelled",
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
        summary="The task's reminder history, oldest first",
        operation_id="listTaskReminders",
        responses={200: ReminderHistory, **problem_responses(404, 422, descriptions=NO_TASK)},
    )
    def task_reminders(path: TaskPath) -> Response:
        """One entry per due date: a cancelled reminder made pending again (the task moved
        back to that due date, or reopened) is the same entry, with its cancelled_at and
        reopened_at. A deleted task's history is a 404, as the task is."""
        history = service.reminders(caller(), path.task_id)
        if history is None:
            return not_found()
        return json_response(ReminderHistory(items=history))

    return api
