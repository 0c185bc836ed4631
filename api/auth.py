"""Bearer-token authentication: who is calling, looked up by the SHA-256 of the token."""

from __future__ import annotations

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session, sessionmaker

from api.service import Owner
from shared.keys import hash_token
from shared.models import ApiToken, User

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
    """
    token = bearer_token(authorization)
    if token is None:
        return None
    engine = sessions.kw["bind"]
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        row = connection.execute(_OWNER_OF_TOKEN, {"token_hash": hash_token(token)}).one_or_none()
    if row is None:
        return None
    return Owner(id=row.id, name=row.name, is_operator=row.is_operator)
