"""The ``/ops`` JSON endpoints: dead letters, queue depths and the receivers' limits state,
for operator tokens only."""

from __future__ import annotations

from collections.abc import Callable

from flask import Response, g
from flask_openapi3 import APIBlueprint, Tag

from api.pagination import BadCursor, decode_cursor, encode_cursor
from api.problems import bad_cursor_problem, problem, problem_responses
from api.schemas import (
    BulkRetryRequest,
    BulkRetryResult,
    DeadLetterDetail,
    DeadLetterOut,
    DeadLetterPage,
    DeadLetterPath,
    DeadLetterQuery,
    QueueList,
    QueueOut,
    ReceiverList,
    ReceiverOut,
    RetryResult,
)
from api.service import Owner
from api.tasks import SECURITY, json_response
from shared.ops.dead_letters import DeadLetterDesk, DeadLetterFilter, RetryOutcome
from shared.ops.receivers import ReceiverView


def operator() -> Owner:
    owner: Owner = g.owner
    return owner


def not_a_dead_letter() -> Response:
    return problem(404, "no such dead letter")


def not_retryable() -> Response:
    # 422, not 409: this API's 409 means "try again later" (it carries Retry-After).
    return problem(
        422,
        "this dead letter cannot be retried: the broker could not decode it, or no reminder "
        "matches it, so there is nothing to send; discard it instead",
        type_="urn:reminders:problem:not-retryable",
    )


def ops_api(desk: DeadLetterDesk, receivers: Callable[[], list[ReceiverView]]) -> APIBlueprint:
    """The blueprint; ``receivers()`` gives the receivers' limits state
    (`shared.ops.receivers`)."""
    api = APIBlueprint(
        "ops",
        __name__,
        url_prefix="/ops",
        abp_tags=[
            Tag(
                name="operators",
                description="Dead letters, queues and receivers (operator tokens)",
            )
        ],
        abp_security=SECURITY,
    )
    # 401, 403, 429 and 503 come from the app's hooks; api.openapi documents them.
    errors = problem_responses(422)
    missing = problem_responses(404, 422, descriptions={404: "No such dead letter"})
    unretryable = problem_responses(
        404,
        422,
        descriptions={
            404: "No such dead letter",
            422: "Invalid fields, each named in errors; or a dead letter that cannot be "
            "retried (undecodable or unmatched: nothing to send, discard it)",
        },
    )

    @api.get(
        "/dead-letters",
        summary="Dead letters, newest failure first",
        operation_id="listDeadLetters",
        responses={200: DeadLetterPage, **errors},
    )
    def list_dead_letters(query: DeadLetterQuery) -> Response:
        try:
            after = decode_cursor(query.cursor) if query.cursor else None
        except BadCursor as exc:
            return bad_cursor_problem(exc)
        chosen = DeadLetterFilter.by_age(
            query.error_type, query.older_than_seconds, query.newer_than_seconds
        )
        items, next_key = desk.page(chosen, limit=query.limit, after=after)
        page = DeadLetterPage(
            items=[DeadLetterOut.model_validate(item, from_attributes=True) for item in items],
            next_cursor=encode_cursor(*next_key) if next_key else None,
            error_types=desk.error_types(),
        )
        return json_response(page)

    @api.get(
        "/dead-letters/<uuid:message_id>",
        summary="One dead letter, with its traceback",
        operation_id="getDeadLetter",
        responses={200: DeadLetterDetail, **missing},
    )
    def show_dead_letter(path: DeadLetterPath) -> Response:
        letter = desk.show(path.message_id)
        if letter is None:
            return not_a_dead_letter()
        return json_response(DeadLetterDetail.model_validate(letter, from_attributes=True))

    @api.post(
        "/dead-letters/<uuid:message_id>/retry",
        summary="Enqueue a dead letter again with its retries reset (still exactly once)",
        operation_id="retryDeadLetter",
        responses={200: RetryResult, **unretryable},
    )
    def retry_dead_letter(path: DeadLetterPath) -> Response:
        outcome = desk.retry(path.message_id, operator().name)
        if outcome is RetryOutcome.NOT_FOUND:
            return not_a_dead_letter()
        if outcome is RetryOutcome.NOT_RETRYABLE:
            return not_retryable()
        return json_response(RetryResult(message_id=path.message_id, outcome=outcome.value))

    @api.post(
        "/dead-letters/retry",
        summary="Retry every dead letter matching a filter",
        operation_id="retryDeadLetters",
        responses={200: BulkRetryResult, **errors},
    )
    def retry_dead_letters(body: BulkRetryRequest) -> Response:
        chosen = DeadLetterFilter.by_age(body.error_type, body.older_than_seconds)
        ids = desk.retry_matching(chosen, operator().name, dry_run=body.dry_run)
        return json_response(BulkRetryResult(dry_run=body.dry_run, count=len(ids), message_ids=ids))

    @api.delete(
        "/dead-letters/<uuid:message_id>",
        summary="Discard a dead letter (the occurrence stays failed, marked discarded)",
        operation_id="discardDeadLetter",
        responses={204: None, **missing},
    )
    def discard_dead_letter(path: DeadLetterPath) -> Response:
        if not desk.discard(path.message_id, operator().name):
            return not_a_dead_letter()
        return Response(status=204)

    @api.get(
        "/queues",
        summary="Ready, delayed, in-flight and dead messages per queue",
        operation_id="listQueues",
        responses={200: QueueList},
    )
    def list_queues() -> Response:
        items = [QueueOut.model_validate(depth, from_attributes=True) for depth in desk.queues()]
        return json_response(QueueList(items=items))

    @api.get(
        "/receivers",
        summary="Each receiver's limits state: in flight, parked, backing off, slow",
        operation_id="listReceivers",
        responses={200: ReceiverList},
    )
    def list_receivers() -> Response:
        items = [ReceiverOut.model_validate(view, from_attributes=True) for view in receivers()]
        return json_response(ReceiverList(items=items))

    return api
