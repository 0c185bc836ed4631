"""The ``/ops`` web page: queues, dead letters with Retry and Discard, recent actions.

Server-rendered HTML with plain forms, no front-end framework. Sign-in takes an operator
token and keeps it in an ``HttpOnly``, ``SameSite=Strict`` cookie, so forms posted from
another site never carry it (the page's CSRF defence). Each action redirects back to the
page with a notice (post/redirect/get).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, unquote

from flask import Response, g, redirect, render_template, request, url_for
from flask_openapi3 import APIBlueprint, Tag
from pydantic import BaseModel, Field

from api.problems import problem_responses
from api.schemas import DeadLetterPath, ErrorType, RequestModel
from shared.dead_letters import DeadLetterDesk, DeadLetterFilter, RetryOutcome

COOKIE = "reminders_ops_token"
NOTICE_COOKIE = "reminders_ops_notice"
PAGE_SIZE = 100

HTML = {"text/html": {"schema": {"type": "string"}}}
PAGE_RESPONSES: dict[str | int, Any] = {
    200: {"description": "HTML page", "content": HTML},
    303: {"description": "Redirect to the page or to sign-in"},
    401: {"description": "Sign-in refused: not a valid token", "content": HTML},
    403: {"description": "Not an operator", "content": HTML},
    404: {"description": "No such page (e.g. a malformed message ID)"},
    **problem_responses(422),
}  # 429, 503 and the 413 of a form over 64 KiB come from the app's hooks (api.openapi)


class PageQuery(RequestModel):
    error_type: ErrorType | None = None


class SignInForm(BaseModel):
    token: str = Field(min_length=1, max_length=200)


def forbidden_page() -> Response:
    return Response(render_template("forbidden.html"), status=403, mimetype="text/html")


def to_sign_in() -> Response:
    return redirect(url_for("ops_page.sign_in"), code=303)  # type: ignore[return-value]


def back(notice: str) -> Response:
    """Back to the page, with a notice shown once (a cookie only this server sets)."""
    response = redirect(url_for("ops_page.dashboard"), code=303)
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


def ops_page(desk: DeadLetterDesk, authenticate: Any) -> APIBlueprint:
    """The page's blueprint; ``authenticate(header_value)`` returns an owner or None."""
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
        letters, _ = desk.page(DeadLetterFilter.by_age(query.error_type, None), limit=PAGE_SIZE)
        notice = request.cookies.get(NOTICE_COOKIE)
        response = Response(
            render_template(
                "ops.html",
                operator=g.owner.name,
                notice=unquote(notice)[:300] if notice else None,
                queues=desk.queues(),
                letters=letters,
                error_types=desk.error_types(),
                error_type=query.error_type or "",
                retrying=desk.retrying(),
                actions=desk.recent_actions(),
            ),
            mimetype="text/html",
        )
        if notice:
            response.delete_cookie(NOTICE_COOKIE, path="/ops")
        return response

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
        owner = authenticate(f"Bearer {form.token}")
        if owner is None:
            return render_template("sign_in.html", error="That token is not valid."), 401
        if not owner.is_operator:
            return render_template("sign_in.html", error="That token is not an operator's."), 403
        response = redirect(url_for("ops_page.dashboard"), code=303)
        response.set_cookie(
            COOKIE,
            form.token,
            httponly=True,
            samesite="Strict",
            secure=request.is_secure,
            path="/ops",
            max_age=8 * 3600,
        )
        return response  # type: ignore[return-value]

    @page.post("/sign-out", summary="Sign out", operation_id="signOut", responses=PAGE_RESPONSES)
    def sign_out() -> Response:
        response = to_sign_in()
        response.delete_cookie(COOKIE, path="/ops")
        return response

    @page.post(
        "/page/dead-letters/<uuid:message_id>/retry",
        summary="Retry (page form)",
        operation_id="retryDeadLetterFromPage",
        responses=PAGE_RESPONSES,
    )
    def retry(path: DeadLetterPath) -> Response:
        outcome = desk.retry(path.message_id, g.owner.name)
        notices = {
            RetryOutcome.REQUEUED: f"Retrying {path.message_id}.",
            RetryOutcome.ALREADY_SENT: f"{path.message_id} was already sent; nothing to retry.",
            RetryOutcome.NOT_FOUND: f"{path.message_id} is not a dead letter.",
            RetryOutcome.NOT_RETRYABLE: f"{path.message_id} cannot be retried (nothing to send):"
            " discard it.",
        }
        return back(notices[outcome])

    @page.post(
        "/page/dead-letters/<uuid:message_id>/discard",
        summary="Discard (page form)",
        operation_id="discardDeadLetterFromPage",
        responses=PAGE_RESPONSES,
    )
    def discard(path: DeadLetterPath) -> Response:
        found = desk.discard(path.message_id, g.owner.name)
        return back(
            f"Discarded {path.message_id}." if found else f"{path.message_id} is not a dead letter."
        )

    return page
