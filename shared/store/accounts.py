"""API users and their tokens: created and revoked from the CLI, checked by the API.

A token is shown once, when created; the database keeps only its SHA-256.
"""

from __future__ import annotations

import re
import uuid

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.planning.keys import hash_token, new_token
from shared.store.db import unit_of_work, utcnow
from shared.store.models import ApiToken, User

USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}$")


class DuplicateUser(Exception):
    """A user with that name exists already."""


def create_user(sessions: sessionmaker[Session], name: str, *, operator: bool = False) -> str:
    """Create a user with one token; returns the token.

    Raises:
        ValueError: the name is not 1-100 letters, digits or ``_.@-``.
        DuplicateUser: the name is taken.
    """
    if not USER_NAME.match(name):
        raise ValueError(
            "a user name is 1-100 letters, digits or _.@- and starts with a letter or digit"
        )
    with unit_of_work(sessions) as session:
        if session.scalars(select(User.id).where(User.name == name)).first():
            raise DuplicateUser(f"user {name!r} exists already")
        user = User(id=uuid.uuid4(), name=name, is_operator=operator, created_at=utcnow())
        session.add(user)
        session.flush()
        return issue_token(session, user.id)


def issue_token(session: Session, user_id: uuid.UUID) -> str:
    """Add a new token for the user inside the caller's transaction; returns it."""
    token = new_token()
    session.add(ApiToken(user_id=user_id, token_hash=hash_token(token), created_at=utcnow()))
    return token


def revoke_tokens(sessions: sessionmaker[Session], name: str) -> int | None:
    """Revoke every live token of user ``name``; None if there is no such user."""
    with unit_of_work(sessions) as session:
        user_id = session.scalars(select(User.id).where(User.name == name)).first()
        if user_id is None:
            return None
        result = session.execute(
            update(ApiToken)
            .where(ApiToken.user_id == user_id, ApiToken.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]
