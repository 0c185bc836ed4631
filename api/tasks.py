"""The ``/tasks`` endpoints: thin views over `TaskService`, scoped to the caller."""

from __future__ import annotations

from typing import Any

from flask import Response, g, request
from flask_openapi3 import APIBlueprint, Tag
from pydantic import BaseModel
from sqlalchemy.orm import Session

from api import idempotency
from api.pagination import BadCursor
from api.problems import bad_cursor_problem, problem
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


def problem_responses(*statuses: int) -> dict[str | int, type[BaseModel] | dict[Any, Any] | None]:
    """OpenAPI entries for error statuses, each a problem document."""
    content = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    return {status: {"description": "Problem document", "content": content} for status in statuses}


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
        responses={201: TaskOut, **problem_responses(400, 401, 409, 413, 415, 422)},
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
        responses={200: TaskPage, **problem_responses(401, 422)},
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
        responses={200: TaskOut, **problem_responses(401, 404, 422)},
    )
    def get_task(path: TaskPath) -> Response:
        task = service.get(caller(), path.task_id)
        return json_response(task) if task else not_found()

    @api.patch(
        "/<uuid:task_id>",
        summary="Change a task; a new due date is a new reminder occurrence",
        responses={200: TaskOut, **problem_responses(400, 401, 404, 413, 415, 422)},
    )
    def update_task(path: TaskPath, body: TaskPatch) -> Response:
        task = service.update(caller(), path.task_id, body)
        return json_response(task) if task else not_found()

    @api.delete(
        "/<uuid:task_id>",
        summary="Delete a task; a pending reminder is cancelled",
        responses={204: None, **problem_responses(401, 404, 422)},
    )
    def delete_task(path: TaskPath) -> Response:
        return Response(status=204) if service.delete(caller(), path.task_id) else not_found()

    @api.get(
        "/<uuid:task_id>/reminders",
        summary="The task's reminder history, oldest first",
        responses={200: ReminderHistory, **problem_responses(401, 404, 422)},
    )
    def task_reminders(path: TaskPath) -> Response:
        history = service.reminders(caller(), path.task_id)
        if history is None:
            return not_found()
        return json_response(ReminderHistory(items=history))

    return api
