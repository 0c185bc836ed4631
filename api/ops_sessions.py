"""Server-side sessions of the ops page.

Signing in with an operator token opens a session: a random ID goes into the browser's
cookie, and only its SHA-256 into the database, with an expiry. The token itself never
goes into a cookie, so a copied cookie is not an API token, and signing out (which deletes
the row) ends it for good: a replayed cookie is refused. A session also ends at its
expiry, and with the token it was opened with (revoked or deleted), and its user must
still be an operator on each request.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import bindparam, delete, select
from sqlalchemy.orm import Session, sessionmaker

from api.service import Owner
from shared.planning.keys import hash_token
from shared.store.db import hot_statement, once_more_if_connection_lost, unit_of_work
from shared.store.models import ApiToken, OpsSession, User

COOKIE = "reminders_ops_session"
LIFETIME = timedelta(hours=8)
MAX_ID_LENGTH = 100

_OWNER_OF_SESSION = (
    select(User.id, User.name, User.is_operator)
    .join(OpsSession, OpsSession.user_id == User.id)
    .join(ApiToken, ApiToken.id == OpsSession.token_id)
    .where(
        OpsSession.id_hash == bindparam("id_hash"),
        OpsSession.expires_at > bindparam("now"),
        ApiToken.revoked_at.is_(None),
    )
)

_TOKEN = select(ApiToken.id, User.id, User.name, User.is_operator).join(
    User, User.id == ApiToken.user_id
)


class PageSessions:
    """Opens, finds and ends ops page sessions. ``clock`` gives the current UTC time."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        clock: Callable[[], datetime],
        lifetime: timedelta = LIFETIME,
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self.lifetime = lifetime

    def sign_in(self, token: str) -> tuple[Owner, str | None] | None:
        """The token's owner and, for an operator, a new session's ID (None for anyone
        else); None when the token is not valid. Expired sessions are purged on the way."""
        now = self._clock()
        with unit_of_work(self._sessions) as session:
            row = session.execute(
                _TOKEN.where(
                    ApiToken.token_hash == hash_token(token), ApiToken.revoked_at.is_(None)
                )
            ).first()
            if row is None:
                return None
            token_id, user_id, name, is_operator = row
            owner = Owner(id=user_id, name=name, is_operator=is_operator)
            if not is_operator:
                return owner, None
            session.execute(delete(OpsSession).where(OpsSession.expires_at <= now))
            session_id = secrets.token_urlsafe(32)
            session.add(
                OpsSession(
                    id_hash=hash_token(session_id),
                    user_id=user_id,
                    token_id=token_id,
                    created_at=now,
                    expires_at=now + self.lifetime,
                )
            )
        return owner, session_id

    def owner(self, session_id: str) -> Owner | None:
        """Whose live session this is, or None (unknown, signed out, expired, or its token
        revoked). One autocommit read, like a token's lookup (`api.auth.authenticate`)."""
        if not session_id or len(session_id) > MAX_ID_LENGTH:
            return None
        params = {"id_hash": hash_token(session_id), "now": self._clock()}
        engine = self._sessions.kw["bind"]
        rows = once_more_if_connection_lost(
            lambda: hot_statement(engine, _OWNER_OF_SESSION, params)
        )
        if not rows:
            return None
        user_id, name, is_operator = rows[0]
        return Owner(id=user_id, name=name, is_operator=is_operator)

    def sign_out(self, session_id: str) -> None:
        """End the session: its ID is worth nothing from now on."""
        if not session_id or len(session_id) > MAX_ID_LENGTH:
            return
        with unit_of_work(self._sessions) as session:
            session.execute(delete(OpsSession).where(OpsSession.id_hash == hash_token(session_id)))
