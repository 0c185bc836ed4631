"""The ``/ops`` web page: charts of the last hour, queues, the receivers' limits state (in
flight, parked, backing off, slow lane), dead letters (details, retry, discard, bulk actions
by selection or by filter), what became of retried ones, failing endpoints, recent actions.

Server-rendered HTML with plain forms, no front-end framework and nothing from another
site (the charts are SVG drawn here, `api.charts`): every action works without script, and a
small script refreshes the live part in place and applies a filter as it changes. What
changes things asks first: a discard, and every bulk action, which shows how many dead
letters it would touch (a dry run) before it acts. Sign-in takes an operator token and
opens a server-side session (`api.ops_sessions`) whose random ID goes into an
``HttpOnly``, ``SameSite=Strict`` cookie, so forms posted from another site never carry it;
a POST whose ``Origin`` is another site is refused as well (`refuse_cross_site`). Each
action redirects back with a notice (post/redirect/get).
Operators see identifiers, owners and errors, never a task's title or notes.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Annotated, Any, Literal, get_origin
from urllib.parse import quote, unquote, urlencode, urlsplit

from flask import Response, g, has_request_context, redirect, render_template, request, url_for
from flask_openapi3 import APIBlueprint, Tag
from pydantic import BaseModel, BeforeValidator, Field, model_validator

from api.limits import authentication_failed
from api.ops_sessions import COOKIE, PageSessions
from api.problems import problem_responses
from api.schemas import ERROR_TYPE_NAME_OR_EMPTY, DeadLetterPath, RequestModel
from shared.ops.dead_letters import DeadLetterDesk, DeadLetterFilter, DeadLetterView, RetryOutcome
from shared.store.db import utcnow

OLD_TOKEN_COOKIE = "reminders_ops_token"
NOTICE_COOKIE = "reminders_ops_notice"
PAGE_SIZE = 100
SHOWN_IN_CONFIRMATION = 20

HTML = {"text/html": {"schema": {"type": "string"}}}
PAGE_RESPONSES: dict[str | int, Any] = {
    200: {"description": "HTML page", "content": HTML},
    303: {
        "description": "Redirect to the page or to sign-in",
        "headers": {
            "Location": {
                "description": "Where to go next: the page (with its filter), a "
                "confirmation, or the sign-in form",
                "required": True,
                "schema": {"type": "string", "format": "uri-reference"},
            }
        },
    },
    401: {"description": "Sign-in refused: not a valid token", "content": HTML},
    403: {
        "description": "Not an operator, or a form posted from another site",
        "content": HTML,
    },
    404: {"description": "No such page or dead letter (e.g. a malformed message ID)"},
    **problem_responses(422),
}  # 429, 503 and the 413 of a form over 64 KiB come from the app's hooks (api.openapi)


def _text(value: Any) -> Any:
    # flask-openapi3 reads form values as JSON when they parse ("123" becomes 123).
    return value if isinstance(value, str) else json.dumps(value)


ErrorTypeChoice = Annotated[str, Field(max_length=100, pattern=ERROR_TYPE_NAME_OR_EMPTY)]
Search = Annotated[str, BeforeValidator(_text), Field(max_length=100)]


class PageQuery(RequestModel):
    error_type: ErrorTypeChoice = Field(default="", description="Only this final error type.")
    q: Search = Field(
        default="",
        description="A task ID, a message ID or an owner's user name (exact). Text that can "
        "be none of them matches nothing.",
    )


class FormModel(BaseModel):
    """A form's fields as the browser sent them: text, always.

    flask-openapi3 reads each form value as JSON when it parses as JSON, so ``token=0``
    would reach the model as the number 0 and ``token="x"`` as ``x``. The model takes the
    values from the submitted form instead, unchanged.
    """

    @model_validator(mode="before")
    @classmethod
    def _as_sent(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not has_request_context():
            return data
        sent = dict(data)
        for name, field in cls.model_fields.items():
            key = field.alias or name
            if key in request.form:
                values = request.form.getlist(key)
                sent[key] = values if get_origin(field.annotation) is list else values[0]
        return sent


class SignInForm(FormModel):
    token: str = Field(min_length=1, max_length=200)


class ConfirmForm(FormModel):
    confirmed: Literal["", "yes"] = ""


class BulkForm(FormModel):
    action: Literal["retry-selected", "discard-selected", "retry-matching", "discard-matching"]
    message_id: list[str] = Field(default_factory=list, max_length=PAGE_SIZE)
    error_type: ErrorTypeChoice = ""
    q: Search = ""
    confirmed: Literal["", "yes"] = ""


class EndpointPagePath(BaseModel):
    endpoint_id: uuid.UUID


def forbidden_page(heading: str | None = None, reason: str | None = None) -> Response:
    return Response(
        render_template("forbidden.html", heading=heading, reason=reason),
        status=403,
        mimetype="text/html",
    )


def refuse_cross_site() -> Response | None:
    """A form POST from another site is refused (403), beside the SameSite cookie: the
    browser's ``Origin`` must name this host (whatever the scheme: TLS may end at a proxy),
    and ``Sec-Fetch-Site`` must not say cross-site. A request without either header is not
    a browser's cross-site form, and goes on to authentication."""
    origin = request.headers.get("Origin")
    if origin is not None and (origin == "null" or urlsplit(origin).netloc != request.host):
        return forbidden_page("cross-site request", "This form was sent from another site.")
    if request.headers.get("Sec-Fetch-Site") == "cross-site":
        return forbidden_page("cross-site request", "This form was sent from another site.")
    return None


def to_sign_in() -> Response:
    return redirect(url_for("ops_page.sign_in"), code=303)  # type: ignore[return-value]


def back(notice: str, **query: str) -> Response:
    """Back to the page (with ``query``, e.g. the filter), with a notice shown once (a
    cookie only this server sets)."""
    target = url_for("ops_page.dashboard")
    kept = {name: value for name, value in query.items() if value}
    if kept:
        target += "?" + urlencode(kept)
    response = redirect(target, code=303)
    response.set_cookie(
        NOTICE_COOKIE,
        quote(notice),
        httponly=True,
        samesite="Strict",
        secure=request.is_secure,
        path="/ops",
        max_age=60,
    )
    return response  # type: ignore[return-value]


def _page_filter(error_type: str, q: str) -> tuple[DeadLetterFilter, str | None]:
    """The dead letters the page lists for its filter and search, and why the search
    matches nothing when it cannot. A bulk action by filter acts on exactly these: a search
    that matches nothing makes it act on nothing."""
    matching = DeadLetterFilter.by_age(error_type or None, None, search=q)
    if matching.search is not None and matching.search.matches_nothing:
        return matching, (
            "Search takes a whole task ID or message ID, or an owner's user name (letters, "
            "digits and _.@-): nothing matches this."
        )
    return matching, None


def _dashboard_query(error_type: str, q: str) -> dict[str, str]:
    return {name: value for name, value in (("error_type", error_type), ("q", q)) if value}


RETRY_NOTICES = {
    RetryOutcome.REQUEUED: "Retrying {id}: it is on its way; see “Retried by operators” for "
    "the outcome.",
    RetryOutcome.ALREADY_SENT: "{id} was already sent; nothing to retry.",
    RetryOutcome.NOT_FOUND: "{id} is not a dead letter.",
    RetryOutcome.NOT_RETRYABLE: "{id} cannot be retried (nothing to send): discard it.",
}


def ops_page(
    desk: DeadLetterDesk,
    page_sessions: PageSessions,
    overview: Callable[[], dict[str, Any]],
    reenable: Callable[[uuid.UUID, str], bool],
) -> APIBlueprint:
    """The page's blueprint. ``page_sessions`` signs operators in and out;
    ``overview()`` gives the charts, the receivers and the failing endpoints;
    ``reenable(id, operator)`` enables a disabled endpoint again."""
    page = APIBlueprint(
        "ops_page",
        __name__,
        url_prefix="/ops",
        abp_tags=[Tag(name="operator page", description="Server-rendered operations page")],
    )

    @page.get(
        "", summary="The operations page", operation_id="showOpsPage", responses=PAGE_RESPONSES
    )
    def dashboard(query: PageQuery) -> Response:
        matching, search_problem = _page_filter(query.error_type, query.q)
        letters: list[DeadLetterView] = []
        if not search_problem:  # else nothing can match: no need to ask
            letters, _ = desk.page(matching, limit=PAGE_SIZE)
        notice = request.cookies.get(NOTICE_COOKIE)
        response = Response(
            render_template(
                "ops.html",
                operator=g.owner.name,
                now=utcnow(),
                notice=unquote(notice)[:300] if notice else None,
                queues=desk.queues(),
                letters=letters,
                owners=desk.owners(letter.task_id for letter in letters),
                error_types=desk.error_types(),
                error_type=query.error_type,
                q=query.q,
                search_problem=search_problem,
                retrying=desk.retrying(),
                retried=desk.recently_retried(),
                actions=desk.recent_actions(),
                **overview(),
            ),
            mimetype="text/html",
        )
        if notice:
            response.delete_cookie(NOTICE_COOKIE, path="/ops")
        return response

    @page.get(
        "/page/dead-letters/<uuid:message_id>",
        summary="One dead letter: who, which occurrence, where it went, its traceback",
        operation_id="showDeadLetterPage",
        responses=PAGE_RESPONSES,
    )
    def dead_letter(path: DeadLetterPath) -> Response:
        letter = desk.show(path.message_id)
        if letter is None:
            return Response(
                render_template(
                    "forbidden.html",
                    heading="no such dead letter",
                    reason=f"{path.message_id} is not a dead letter (retried, discarded, or "
                    "never one).",
                ),
                status=404,
                mimetype="text/html",
            )
        return Response(
            render_template(
                "dead_letter.html", letter=letter, context=desk.context(letter.message_id)
            ),
            mimetype="text/html",
        )

    @page.get(
        "/sign-in",
        summary="Operator sign-in form",
        operation_id="showSignInForm",
        responses=PAGE_RESPONSES,
    )
    def sign_in() -> str:
        return render_template("sign_in.html", error=None)

    @page.post(
        "/sign-in",
        summary="Sign in with an operator token",
        operation_id="signIn",
        responses={**PAGE_RESPONSES, **problem_responses(503)},
    )
    def sign_in_submit(form: SignInForm) -> Response | tuple[str, int]:
        signed_in = page_sessions.sign_in(form.token)
        if signed_in is None:
            authentication_failed()
            return render_template("sign_in.html", error="That token is not valid."), 401
        _, session_id = signed_in
        if session_id is None:
            return render_template("sign_in.html", error="That token is not an operator's."), 403
        page_sessions.sign_out(request.cookies.get(COOKIE, ""))  # a session it replaces
        response = redirect(url_for("ops_page.dashboard"), code=303)
        response.set_cookie(
            COOKIE,
            session_id,
            httponly=True,
            samesite="Strict",
            secure=request.is_secure,
            path="/ops",
            max_age=int(page_sessions.lifetime.total_seconds()),
        )
        # Earlier versions kept the token itself in a cookie: take it out of the browser.
        response.delete_cookie(OLD_TOKEN_COOKIE, path="/ops")
        return response  # type: ignore[return-value]

    @page.post(
        "/sign-out",
        summary="Sign out: the session ends, its cookie is worth nothing from then on",
        operation_id="signOut",
        responses=PAGE_RESPONSES,
    )
    def sign_out() -> Response:
        page_sessions.sign_out(request.cookies.get(COOKIE, ""))
        response = to_sign_in()
        response.delete_cookie(COOKIE, path="/ops")
        response.delete_cookie(OLD_TOKEN_COOKIE, path="/ops")
        return response

    @page.post(
        "/page/dead-letters/<uuid:message_id>/retry",
        summary="Retry (page form)",
        operation_id="retryDeadLetterFromPage",
        responses=PAGE_RESPONSES,
    )
    def retry(path: DeadLetterPath) -> Response:
        outcome = desk.retry(path.message_id, g.owner.name)
        return back(RETRY_NOTICES[outcome].format(id=path.message_id))

    @page.get(
        "/page/dead-letters/<uuid:message_id>/discard",
        summary="Ask before discarding one dead letter",
        operation_id="confirmDiscardFromPage",
        responses=PAGE_RESPONSES,
    )
    def confirm_discard(path: DeadLetterPath) -> Response:
        found = desk.show(path.message_id) is not None
        return _confirm(
            "discard",
            [path.message_id] if found else [],
            url_for("ops_page.discard", message_id=path.message_id),
            [],
            "",
        )

    @page.post(
        "/page/dead-letters/<uuid:message_id>/discard",
        summary="Discard (page form, after its confirmation)",
        operation_id="discardDeadLetterFromPage",
        responses=PAGE_RESPONSES,
    )
    def discard(path: DeadLetterPath, form: ConfirmForm) -> Response:
        if form.confirmed != "yes":
            return redirect(  # type: ignore[return-value]
                url_for("ops_page.confirm_discard", message_id=path.message_id), code=303
            )
        found = desk.discard(path.message_id, g.owner.name)
        return back(
            f"Discarded {path.message_id}: it stays failed, marked discarded by you."
            if found
            else f"{path.message_id} is not a dead letter."
        )

    @page.post(
        "/page/dead-letters/bulk",
        summary="Retry or discard the selected dead letters, or all matching the filter",
        operation_id="bulkDeadLettersFromPage",
        responses=PAGE_RESPONSES,
    )
    def bulk(form: BulkForm) -> Response:
        """Without ``confirmed=yes``: a page saying how many dead letters the action would
        touch (a dry run) and asking to confirm; with it, the action, then the page. A
        selection is confirmed as listed; a filter is applied again on confirmation."""
        verb = "retry" if form.action.startswith("retry") else "discard"
        if form.action.endswith("selected"):
            ids = []
            for text in form.message_id:
                try:
                    ids.append(uuid.UUID(text))
                except ValueError:
                    continue
            scope = " (the selected ones)"
            if not ids:
                return back("Select dead letters first (the boxes in the first column).")
        else:
            # The page's own filter, the same search included: never wider than the list.
            matching, _ = _page_filter(form.error_type, form.q)
            ids = desk.matching_ids(matching)
            scope = _scope(form.error_type, form.q)
        fields = [("action", form.action), ("error_type", form.error_type), ("q", form.q)]
        if form.action.endswith("selected"):
            # The selection travels with the confirmation; a filter is applied again when
            # confirmed (its matches may be thousands: a form of them could pass 64 KiB).
            fields += [("message_id", str(message_id)) for message_id in ids]
        if form.confirmed != "yes":
            return _confirm(verb, ids, url_for("ops_page.bulk"), fields, scope, form)
        if verb == "retry":
            outcomes = [desk.retry(message_id, g.owner.name) for message_id in ids]
            requeued = outcomes.count(RetryOutcome.REQUEUED)
            notice = f"Retrying {requeued} of {len(ids)}{scope}"
            skipped = len(ids) - requeued
            notice += (
                f"; {skipped} were no longer dead letters or cannot be retried." if skipped else "."
            )
        else:
            done = sum(desk.discard(message_id, g.owner.name) for message_id in ids)
            notice = f"Discarded {done} of {len(ids)}{scope}: they stay failed, marked discarded."
        return back(notice, **_dashboard_query(form.error_type, form.q))

    @page.post(
        "/page/endpoints/<uuid:endpoint_id>/enable",
        summary="Enable a disabled endpoint again (page form)",
        operation_id="enableEndpointFromPage",
        responses=PAGE_RESPONSES,
    )
    def enable_endpoint(path: EndpointPagePath) -> Response:
        enabled = reenable(path.endpoint_id, g.owner.name)
        return back(
            f"Endpoint {path.endpoint_id} is enabled again; retry its dead letters to send them."
            if enabled
            else f"Endpoint {path.endpoint_id} is not disabled (or no longer exists)."
        )

    return page


def _consequence(verb: str, count: int) -> str:
    subject = "It" if count == 1 else "Each"
    if verb == "retry":
        return f"{subject} is sent again, at most once."
    return f"{subject} stays failed, marked discarded by you, and is not sent."


def _scope(error_type: str, q: str) -> str:
    parts = []
    if error_type:
        parts.append(f"error type {error_type}")
    if q.strip():
        parts.append(f"search “{q.strip()}”")
    return f" (matching {' and '.join(parts)})" if parts else " (all)"


def _confirm(
    verb: str,
    ids: list[uuid.UUID],
    action: str,
    fields: list[tuple[str, str]],
    scope: str,
    form: BulkForm | None = None,
) -> Response:
    back_to = url_for("ops_page.dashboard")
    if form is not None and (form.error_type or form.q):
        back_to += "?" + urlencode(_dashboard_query(form.error_type, form.q))
    return Response(
        render_template(
            "confirm.html",
            heading=f"{verb.capitalize()} dead letters?"
            if form
            else f"Discard {ids[0] if ids else 'it'}?",
            count=len(ids),
            shown=ids[:SHOWN_IN_CONFIRMATION],
            verb_past="retried" if verb == "retry" else "discarded",
            scope=scope,
            consequence=_consequence(verb, len(ids)),
            action=action,
            fields=fields,
            button=f"{verb.capitalize()} {len(ids)}",
            danger=verb == "discard",
            back=back_to,
        ),
        mimetype="text/html",
    )
