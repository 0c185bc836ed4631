"""The Flask application factory: wires configuration, database, broker and blueprints.

`create_app(settings)` takes its configuration as an argument and reads nothing from the
environment; ``api.wsgi`` is the one place that loads the environment for gunicorn.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from flask import Response, g, request
from flask_openapi3 import Info, OpenAPI
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from api import idempotency, json_body
from api.auth import authenticate
from api.charts import last_hour_charts
from api.endpoint_service import EndpointService
from api.endpoints import endpoints_api
from api.limits import authentication_failed, install_rate_limit
from api.metrics import metrics_registry, render
from api.openapi import (
    Guards,
    complete_document,
    endpoints_taking_header,
    install_openapi_document,
)
from api.ops import ops_api
from api.ops_page import forbidden_page, ops_page, refuse_cross_site, to_sign_in
from api.ops_sessions import COOKIE as OPS_COOKIE
from api.ops_sessions import PageSessions
from api.pings import PING_TIMEOUT_SECONDS, PingGate
from api.problems import (
    BROKER_UNREACHABLE,
    bad_idempotency_key_problem,
    broker_unavailable_problem,
    database_unavailable_problem,
    http_problem,
    problem,
    problem_responses,
    validation_problem,
)
from api.schemas import Health, Problem, Readiness
from api.security_headers import install_security_headers
from api.service import Planning, TaskService
from api.tasks import json_response, tasks_api
from shared.broker.gate import make_gate, webhook_limits
from shared.broker.queue import make_broker, ping
from shared.config import Settings
from shared.delivery import endpoints
from shared.delivery.address_guard import Resolver, system_resolver
from shared.delivery.endpoints import UrlPolicy
from shared.delivery.secret_box import SecretBox
from shared.delivery.webhooks import WebhookSender
from shared.ops import activity
from shared.ops.dead_letters import DeadLetterDesk
from shared.ops.receivers import ReceiverView, receivers
from shared.store.db import (
    check_takes_writes,
    make_engine,
    make_session_factory,
    once_more_if_connection_lost,
    utcnow,
)

MAX_BODY_BYTES = 64 * 1024
BODY_TOO_LARGE = f"the body is over {MAX_BODY_BYTES // 1024} KiB"
DRAIN_LIMIT_BYTES = 1024 * 1024
PUBLIC_ENDPOINTS = frozenset(
    {
        "healthz",
        "readyz",
        "metrics",
        "openapi_document",
        "static",
        "favicon",
        "ops_page.sign_in",
        "ops_page.sign_in_submit",
        "ops_page.sign_out",
    }
)
OPERATOR_BLUEPRINTS = frozenset({"ops", "ops_page"})
FORM_BLUEPRINTS = frozenset({"ops_page"})
# The page lists the most troubled receivers; GET /ops/receivers lists them all.
RECEIVERS_SHOWN = 50
UNLIMITED_ENDPOINTS = frozenset({"healthz", "readyz", "metrics", "static", "favicon"})
# The page's icon: a bell, drawn here (the page loads nothing from elsewhere).
FAVICON = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32">'
    '<rect width="32" height="32" rx="7" fill="#1f5fae"/>'
    '<path d="M16 6a7 7 0 0 0-7 7v5l-2.5 4h19L23 18v-5a7 7 0 0 0-7-7z" fill="#fff"/>'
    '<circle cx="16" cy="25" r="2.6" fill="#fff"/></svg>'
)
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
GUARDS = Guards(
    public_endpoints=PUBLIC_ENDPOINTS,
    unlimited_endpoints=UNLIMITED_ENDPOINTS,
    operator_blueprints=OPERATOR_BLUEPRINTS,
    form_blueprints=FORM_BLUEPRINTS,
    body_methods=BODY_METHODS,
)


def read_chunked_body() -> None:
    """Read a body sent without ``Content-Length`` (chunked), or refuse it past the limit.

    Werkzeug stops reading such a stream at ``MAX_CONTENT_LENGTH`` and hands over what it
    has read, as if the body ended there; one more byte on the stream means it did not.

    Raises:
        RequestEntityTooLarge: the body is longer than ``MAX_BODY_BYTES``.
    """
    body = request.get_data(cache=True)
    if len(body) >= MAX_BODY_BYTES and request.environ["wsgi.input"].read(1):
        g.body_refused = True
        raise RequestEntityTooLarge()


def body_too_large(exc: RequestEntityTooLarge) -> Response:
    """The one 413 of a body over the limit, whether it had a length or was chunked."""
    return problem(413, BODY_TOO_LARGE)


def drain(stream: Any, limit: int) -> None:
    """Read and drop up to ``limit`` bytes of ``stream``, or until it ends."""
    while limit > 0:
        chunk = stream.read(min(limit, 64 * 1024))
        if not chunk:
            return
        limit -= len(chunk)


def create_app(settings: Settings, **runtime: Any) -> OpenAPI:
    """Build the API. ``runtime`` may supply ``engine`` and ``broker`` (tests share theirs),
    ``resolve``, the host name resolver of endpoint URLs (tests answer for any name without
    asking a DNS server), ``endpoint_sender``, what makes an endpoint's test ping, and
    ``clock``, the current UTC time as the ops page's sessions (their expiry) and the
    receivers' view (requests in flight for how long, back-offs still to end) see it."""
    # No pre-ping: authentication is every request's first query and retries a dead connection.
    engine = runtime.get("engine") or make_engine(
        settings.resolved_database_url,
        peer_timeout=settings.peer_timeout_seconds,
        pool_pre_ping=False,
    )
    broker = runtime.get("broker") or make_broker(settings)
    sessions = make_session_factory(engine)
    clock: Callable[[], datetime] = runtime.get("clock") or utcnow
    page_sessions = PageSessions(sessions, clock)

    app = OpenAPI(
        __name__,
        info=Info(
            title="Reminders",
            version="1.0.0",
            description="Tasks with due dates, reminded exactly once.",
        ),
        security_schemes={"bearer": {"type": "http", "scheme": "bearer"}},
        validation_error_status=422,
        validation_error_model=Problem,
        validation_error_callback=validation_problem,
        doc_ui=False,
    )
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.extensions["reminders"] = {"settings": settings, "engine": engine, "broker": broker}

    app.register_error_handler(HTTPException, http_problem)
    app.register_error_handler(RequestEntityTooLarge, body_too_large)
    app.register_error_handler(DBAPIError, database_unavailable_problem)
    for unreachable in BROKER_UNREACHABLE:
        app.register_error_handler(unreachable, broker_unavailable_problem)
    app.register_error_handler(idempotency.BadKey, bad_idempotency_key_problem)

    install_security_headers(app, signed_in_blueprints=FORM_BLUEPRINTS)

    @app.before_request
    def _read_body() -> None:
        # First of all hooks: a body is read whole (and cached for JSON and form parsing), or,
        # past MAX_CONTENT_LENGTH, refused with 413: before a byte is read when it has a
        # Content-Length, as soon as it passes the limit when chunked. See _drain_unread_body.
        if request.content_length:
            request.get_data(cache=True)
        elif request.content_length is None and request.headers.get("Transfer-Encoding"):
            read_chunked_body()

    # Before authentication: an address past its failed authentications is refused before
    # any token it sends is looked up.
    install_rate_limit(app, settings, exempt=UNLIMITED_ENDPOINTS)

    @app.before_request
    def _same_site_forms() -> Response | None:
        # Before authentication: a cross-site form is refused whoever's cookie it carries.
        if request.method == "POST" and request.blueprint in FORM_BLUEPRINTS:
            return refuse_cross_site()
        return None

    @app.before_request
    def _authenticate() -> Response | None:
        if request.endpoint is None or request.endpoint in PUBLIC_ENDPOINTS:
            return None  # no such route (Flask answers 404/405), or public
        on_page = request.blueprint == "ops_page"
        header = request.headers.get("Authorization")
        # The page's cookie holds a session ID, never a token: it is looked up as a
        # session, and as a bearer token it is just a wrong token.
        session_id = request.cookies.get(OPS_COOKIE) if on_page and header is None else None
        owner = page_sessions.owner(session_id) if session_id else authenticate(sessions, header)
        if owner is None:
            if header is not None or session_id:
                authentication_failed()
            if on_page:
                return to_sign_in()
            return problem(
                401,
                "a valid bearer token is required",
                headers={"WWW-Authenticate": 'Bearer realm="reminders"'},
            )
        if request.blueprint in OPERATOR_BLUEPRINTS and not owner.is_operator:
            return forbidden_page() if on_page else problem(403, "this needs an operator token")
        g.owner = owner
        return None

    @app.before_request
    def _require_json_body() -> Response | None:
        if request.method not in BODY_METHODS or request.endpoint is None:
            return None
        if request.blueprint == "ops_page":
            return None  # HTML forms, not JSON
        raw = request.get_data(cache=True)
        if not raw:
            return None  # an endpoint that needs a body says so with a 422
        if request.mimetype != "application/json":
            return problem(415, "the body must be application/json")
        refused = json_body.refusal()
        return problem(400, refused) if refused else None

    @app.after_request
    def _drain_unread_body(response: Response) -> Response:
        # A body refused unread (413) stays on the connection, and gunicorn would read it as
        # the next request. Read and drop it, up to a bound: past that, the client loses only
        # its own connection.
        length = request.content_length or 0
        if (
            length
            and getattr(request, "_cached_data", None) is None
            and length <= DRAIN_LIMIT_BYTES
        ):
            request.environ["wsgi.input"].read(length)
        elif g.get("body_refused"):
            # A chunked body refused past the limit: the client may still be sending it.
            drain(request.environ["wsgi.input"], DRAIN_LIMIT_BYTES)
        return response

    @app.get(
        "/healthz",
        summary="Liveness: the process answers",
        operation_id="checkLiveness",
        responses={200: Health},
    )
    def healthz() -> Response:
        return json_response(Health(status="ok"))

    @app.get(
        "/readyz",
        summary="Readiness: the database and the broker answer",
        operation_id="checkReadiness",
        responses={200: Readiness, 503: Readiness},
    )
    def readyz() -> Response:
        checks = {"database": "ok", "broker": "ok"}
        try:
            once_more_if_connection_lost(lambda: check_takes_writes(engine))
        except Exception as exc:  # any failure means "not ready", and says which
            checks["database"] = type(exc).__name__
        try:
            ping(broker)
        except Exception as exc:
            checks["broker"] = type(exc).__name__
        ready = all(value == "ok" for value in checks.values())
        body = Readiness(status="ready" if ready else "unavailable", checks=checks)
        return json_response(body, 200 if ready else 503)

    registry = metrics_registry(broker)

    @app.get(
        "/metrics",
        summary="Prometheus metrics: queue and dead-letter depth",
        operation_id="getMetrics",
        responses={
            200: {
                "description": "Prometheus text format",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
            # Public, so the hooks add no 503; the queue depths are read from the broker.
            **problem_responses(503, descriptions={503: "The broker cannot be reached; retry"}),
        },
    )
    def metrics() -> Response:
        return Response(render(registry), content_type=CONTENT_TYPE_LATEST)

    @app.get(
        "/favicon.ico",
        summary="The operations page's icon (SVG)",
        operation_id="getFavicon",
        responses={
            200: {
                "description": "An SVG image",
                "content": {"image/svg+xml": {"schema": {"type": "string"}}},
            }
        },
    )
    def favicon() -> Response:
        response = Response(FAVICON, mimetype="image/svg+xml")
        response.cache_control.public = True
        response.cache_control.max_age = 86400
        return response

    install_openapi_document(app)

    desk = DeadLetterDesk(sessions, broker)
    tasks = TaskService(
        sessions,
        Planning(
            default_remind_before=settings.remind_before_seconds,
            horizon_seconds=settings.horizon_seconds,
            min_recurrence_seconds=settings.min_recurrence_seconds,
            lookahead_seconds=settings.lookahead_seconds,
        ),
        broker=broker,
    )
    app.register_api(tasks_api(tasks))
    resolve = runtime.get("resolve") or system_resolver
    ping_timeout = min(settings.webhook_timeout_seconds, PING_TIMEOUT_SECONDS)
    sender = runtime.get("endpoint_sender") or WebhookSender.for_endpoints(
        settings, resolve, timeout_seconds=ping_timeout
    )
    pings = PingGate(broker.client, settings.redis_namespace, sender.timeout_seconds)
    app.register_api(endpoints_api(endpoint_service(settings, sessions, resolve, sender, pings)))
    gate = make_gate(settings, broker, lambda: math.floor(clock().timestamp() * 1000))
    webhook = webhook_limits(settings)

    def read_receivers() -> list[ReceiverView]:
        return receivers(gate, sessions, webhook)

    app.register_api(ops_api(desk, read_receivers))
    app.register_api(
        ops_page(
            desk,
            page_sessions,
            lambda: ops_overview(sessions, broker, settings.redis_namespace, read_receivers),
            lambda endpoint_id, operator: endpoints.enable_by_operator(
                sessions, endpoint_id, operator
            ),
        )
    )
    complete_document(app, GUARDS)
    install_idempotency_key_check(app, endpoints_taking_header(app, idempotency.HEADER))
    return app


def endpoint_service(
    settings: Settings,
    sessions: sessionmaker[Session],
    resolve: Resolver,
    sender: WebhookSender,
    pings: PingGate,
) -> EndpointService:
    """Users' endpoints: their secrets' key, the address rules, and the test ping's client
    and bounds."""
    return EndpointService(
        sessions,
        SecretBox.from_setting(settings.secret_key, settings.data_dir),
        UrlPolicy(allow_private=settings.allow_private_endpoints, resolve=resolve),
        sender,
        timedelta(seconds=settings.endpoint_disable_after_seconds),
        pings,
    )


def ops_overview(
    sessions: sessionmaker[Session],
    broker: Any,
    namespace: str,
    read_receivers: Callable[[], list[ReceiverView]],
) -> dict[str, Any]:
    """What the operations page shows beside the dead letters: the charts of the last hour,
    the receivers' limits state (the `RECEIVERS_SHOWN` most troubled, and how many more)
    and the failing endpoints."""
    with sessions() as session:
        failing = endpoints.health(session, failing_only=True)
        minutes = activity.last_hour(session, broker.client, namespace, utcnow())
        session.rollback()
    found = read_receivers()
    return {
        "charts": last_hour_charts(minutes),
        "receivers": found[:RECEIVERS_SHOWN],
        "receivers_not_shown": max(0, len(found) - RECEIVERS_SHOWN),
        "endpoints": failing,
    }


def install_idempotency_key_check(app: OpenAPI, endpoints: frozenset[str]) -> None:
    """400 for an ``Idempotency-Key`` that is not one key, on the ``endpoints`` that take it.

    After authentication and the body checks; before the header's schema (a pattern and a
    length, 422), which would judge a list like ``a, b`` as a single odd key.
    """

    @app.before_request
    def _check_idempotency_key() -> None:
        value = request.headers.get(idempotency.HEADER)
        if value is not None and request.endpoint in endpoints:
            idempotency.parse_key(value)  # raises BadKey
