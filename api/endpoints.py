"""The ``/endpoints`` endpoints: thin views over `EndpointService`, scoped to the caller."""

from __future__ import annotations

from flask import Response
from flask_openapi3 import APIBlueprint, Tag

from api.endpoint_service import EndpointService
from api.pagination import BadCursor
from api.pings import PingBusy
from api.problems import (
    BAD_BODY,
    bad_cursor_problem,
    field_problem,
    problem,
    problem_responses,
)
from api.schemas import (
    AttemptOut,
    AttemptPage,
    EndpointCreate,
    EndpointCreated,
    EndpointOut,
    EndpointPage,
    EndpointPatch,
    EndpointPath,
    HistoryQuery,
)
from api.tasks import SECURITY, caller, json_response
from shared.delivery.address_guard import AddressRefused

NO_ENDPOINT = {404: "No such endpoint (or not yours)"}
PING_BUSY = (
    "Rate limit exceeded; or a test ping of yours is still waiting for its answer (one at a "
    "time), or the service is busy with other pings: try again after Retry-After seconds"
)
CREATED = {
    "description": "Created: the endpoint, with its secret (shown only here)",
    "headers": {
        "Location": {
            "description": "The endpoint's URL",
            "required": True,
            "schema": {"type": "string", "format": "uri-reference"},
        }
    },
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/EndpointCreated"}}},
}
REFUSED = {
    422: "Invalid fields, or the URL is not https, not on a public address, its host is "
    "neither a host name nor an IP address, or it contains a control or invisible character "
    "(the error names it)"
}


def not_found() -> Response:
    return problem(404, "no such endpoint")


def refused(error: AddressRefused) -> Response:
    return field_problem("url", str(error), "address_refused")


def endpoints_api(service: EndpointService) -> APIBlueprint:
    """The endpoints blueprint, bound to ``service``."""
    api = APIBlueprint(
        "endpoints",
        __name__,
        url_prefix="/endpoints",
        abp_tags=[
            Tag(
                name="endpoints",
                description="Your own webhook endpoints: where your tasks' reminders go, "
                "signed with a secret of your own",
            )
        ],
        abp_security=SECURITY,
    )

    @api.post(
        "",
        summary="Register a webhook endpoint; its secret is shown only in this answer",
        operation_id="createEndpoint",
        responses={
            201: CREATED,
            **problem_responses(400, 422, descriptions={**REFUSED, 400: BAD_BODY}),
        },
    )
    def create_endpoint(body: EndpointCreate) -> Response:
        """The URL must be https:// and resolve only to public addresses. Keep the secret
        (whsec_...): every request to the endpoint is signed with it (Standard Webhooks
        headers and X-Reminders-Signature). max_concurrency (default 8) and max_per_second
        (default: none) bound how fast its reminders are delivered to it; a reminder over
        either limit waits for room, and other endpoints' reminders do not wait behind it."""
        try:
            made = service.create(caller(), body)
        except AddressRefused as error:
            return refused(error)
        return json_response(made, 201, {"Location": f"/endpoints/{made.id}"})

    @api.get(
        "",
        summary="List your endpoints",
        operation_id="listEndpoints",
        responses={200: EndpointPage, **problem_responses(422)},
    )
    def list_endpoints(query: HistoryQuery) -> Response:
        try:
            return json_response(service.list(caller(), query))
        except BadCursor as exc:
            return bad_cursor_problem(exc)

    @api.get(
        "/<uuid:endpoint_id>",
        summary="One endpoint and its health (never its secret)",
        operation_id="getEndpoint",
        responses={200: EndpointOut, **problem_responses(404, 422, descriptions=NO_ENDPOINT)},
    )
    def get_endpoint(path: EndpointPath) -> Response:
        found = service.get(caller(), path.endpoint_id)
        return json_response(found) if found else not_found()

    @api.patch(
        "/<uuid:endpoint_id>",
        summary="Change an endpoint's URL, description or delivery limits, or enable it again",
        operation_id="updateEndpoint",
        responses={
            200: EndpointOut,
            **problem_responses(404, 422, descriptions={**NO_ENDPOINT, **REFUSED}),
        },
    )
    def update_endpoint(path: EndpointPath, body: EndpointPatch) -> Response:
        """enabled: true enables a disabled endpoint again (its failure history starts
        afresh); enabled: false stops deliveries: its tasks' reminders then fail with
        "endpoint disabled" until it is enabled again. max_per_second: null removes the rate
        limit; max_concurrency always has a value (1 to 64)."""
        try:
            changed = service.update(caller(), path.endpoint_id, body)
        except AddressRefused as error:
            return refused(error)
        return json_response(changed) if changed else not_found()

    @api.delete(
        "/<uuid:endpoint_id>",
        summary="Delete an endpoint; tasks naming it fall back to the deployment's channel",
        operation_id="deleteEndpoint",
        responses={204: None, **problem_responses(404, 422, descriptions=NO_ENDPOINT)},
    )
    def delete_endpoint(path: EndpointPath) -> Response:
        return Response(status=204) if service.delete(caller(), path.endpoint_id) else not_found()

    @api.post(
        "/<uuid:endpoint_id>/rotate-secret",
        summary="A new secret, shown once; the previous one keeps signing for 24 hours",
        operation_id="rotateEndpointSecret",
        responses={200: EndpointCreated, **problem_responses(404, 422, descriptions=NO_ENDPOINT)},
    )
    def rotate_secret(path: EndpointPath) -> Response:
        """For 24 hours every request carries a signature by each secret, so a receiver
        verifies with either while it switches over; rotating again in that time drops the
        oldest secret."""
        rotated = service.rotate_secret(caller(), path.endpoint_id)
        return json_response(rotated) if rotated else not_found()

    @api.post(
        "/<uuid:endpoint_id>/test",
        summary="Send a signed ping now, and answer with the attempt",
        operation_id="testEndpoint",
        responses={
            200: AttemptOut,
            **problem_responses(404, 422, 429, descriptions={**NO_ENDPOINT, 429: PING_BUSY}),
        },
    )
    def test_endpoint(path: EndpointPath) -> Response:
        """The body is {"type": "ping", "message_id", "endpoint_id", "sent_at"}, signed as
        reminders are. The attempt is recorded in the endpoint's log; a disabled endpoint is
        pinged too, so it can be checked before it is enabled again. The receiver is given
        5 seconds (or REMINDERS_WEBHOOK_TIMEOUT, when shorter) to answer; a later answer is
        recorded as timed out. One ping of yours at a time: while one waits for its answer,
        another is refused with 429 and Retry-After (as it is when the service is busy with
        many users' pings)."""
        try:
            attempt = service.test(caller(), path.endpoint_id)
        except PingBusy as busy:
            return problem(429, str(busy), headers={"Retry-After": str(busy.retry_after)})
        return json_response(attempt) if attempt else not_found()

    @api.get(
        "/<uuid:endpoint_id>/attempts",
        summary="The endpoint's delivery attempts, newest first",
        operation_id="listEndpointAttempts",
        responses={200: AttemptPage, **problem_responses(404, 422, descriptions=NO_ENDPOINT)},
    )
    def endpoint_attempts(path: EndpointPath, query: HistoryQuery) -> Response:
        """Each attempt: when, which reminder (message ID) or ping, the status code, how long
        it took, and the error. Kept REMINDERS_ENDPOINT_ATTEMPTS_DAYS (default 30)."""
        try:
            page = service.attempts(caller(), path.endpoint_id, query)
        except BadCursor as exc:
            return bad_cursor_problem(exc)
        return json_response(page) if page else not_found()

    return api
