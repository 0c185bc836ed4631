"""Bearer-token authentication: who is calling, looked up by the SHA-256 of the token."""

from __future__ import annotations

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session, sessionmaker

from api.service import Owner
from shared.planning.keys import hash_token
from shared.store.db import hot_statement, once_more_if_connection_lost
from shared.store.models import ApiToken, User

MAX_TOKEN_LENGTH = 200


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    return token


_OWNER_OF_TOKEN = (
    select(User.id, User.name, User.is_operator)
    .join(ApiToken, ApiToken.user_id == User.id)
    .where(ApiToken.token_hash == bindparam("token_hash"), ApiToken.revoked_at.is_(None))
)


def authenticate(sessions: sessionmaker[Session], authorization: str | None) -> Owner | None:
    """The owner of a valid, unrevoked token, or None.

    Every request pays for this, so it is one autocommit read: no transaction to open and
    close around it. Revocation takes effect on the next request.

    It is also the request's first use of the database, and the API's pool does not ping
    connections before handing them out (a round trip per checkout): a connection that died
    while pooled (the database restarted) fails here, which marks it and every pooled
    connection as old, and the lookup is tried once more on a fresh one.
    """
    token = bearer_token(authorization)
    if token is None:
        return None
    params = {"token_hash": hash_token(token)}
    engine = sessions.kw["bind"]
    rows = once_more_if_connection_lost(lambda: hot_statement(engine, _OWNER_OF_TOKEN, params))
    if not rows:
        return None
    user_id, name, is_operator = rows[0]  # token hashes are unique
    return Owner(id=user_id, name=name, is_operator=is_operator)
