"""One key everywhere: every process proves at start that it can read the endpoint secrets.

Endpoint secrets are written by one process (the API) and read by others (the workers), on
other hosts too, so every process must hold the same ``REMINDERS_SECRET_KEY``. A process
with another key — or with none, which makes a key file of its own on its host — would
only find out at its first delivery to an endpoint, and dead-letter it ("the secret cannot
be decrypted"). Instead the first process to start encrypts a known value (the canary) and
stores it; every process decrypts it at start and stops there if it cannot, with one line
naming ``REMINDERS_SECRET_KEY``.

A rotated key (a new key first in the list, the old one after it) reads the canary, and
writes it again with its first key: from then on a process that lacks the new key stops at
start, as it would fail to read the secrets written with it.
"""

from __future__ import annotations

import sys

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from shared.config import Settings
from shared.delivery.secret_box import KEY_FILE_NAME, SETTING, SecretBox, SecretKeyMismatch
from shared.exit_status import ExitStatus
from shared.logs import get_logger
from shared.store.db import utcnow
from shared.store.models import SecretKeyCanary

log = get_logger("secret_key")

CANARY = "reminders secret key canary"
_ROW = SecretKeyCanary.id == 1


def check_secret_key(engine: Engine, box: SecretBox) -> str:
    """Check that ``box`` decrypts the stored canary, storing it first if there is none.

    Returns ``created`` (this process wrote the canary), ``matched``, or ``rotated`` (it
    was written with a later key of ``box``'s, not its first, and is now written again).

    Raises:
        SecretKeyMismatch: ``box`` cannot decrypt the canary: its key is not the one the
            other processes use.
        sqlalchemy.exc.SQLAlchemyError: the database cannot be read.
    """
    with engine.begin() as connection:
        token = connection.scalar(select(SecretKeyCanary.token).where(_ROW))
    if token is None:
        try:
            with engine.begin() as connection:
                connection.execute(
                    insert(SecretKeyCanary).values(
                        id=1, token=box.encrypt(CANARY), updated_at=utcnow()
                    )
                )
            return "created"
        except IntegrityError:  # another process was first: check its canary
            with engine.begin() as connection:
                token = connection.scalar(select(SecretKeyCanary.token).where(_ROW))
            assert token is not None
    if box.decrypt(token) != CANARY:
        raise SecretKeyMismatch("the canary decrypts to something else")
    if box.encrypted_with_first_key(token):
        return "matched"
    with engine.begin() as connection:
        connection.execute(
            update(SecretKeyCanary)
            .where(_ROW, SecretKeyCanary.token == token)
            .values(token=box.reencrypt(token), updated_at=utcnow())
        )
    return "rotated"


def require_one_secret_key(settings: Settings, engine: Engine) -> None:
    """What every API, worker and scheduler process does at start: `check_secret_key`, and
    stop with one line naming ``REMINDERS_SECRET_KEY`` and `ExitStatus.CONFIG` if the key
    differs.

    A database that cannot be read (down, or not migrated yet) does not stop the process:
    it rides the outage out as usual, unchecked (``secret_key.unchecked``).
    """
    box = SecretBox.from_setting(settings.secret_key, settings.data_dir)
    try:
        outcome = check_secret_key(engine, box)
    except SecretKeyMismatch:
        if settings.secret_key.strip():
            which = "it cannot decrypt"
        else:
            key_file = settings.data_dir / KEY_FILE_NAME
            which = f"empty, so this process uses the key in {key_file}, which cannot decrypt"
        print(
            f"configuration error: {SETTING}: {which} the endpoint secrets in the database "
            "(another key encrypted them); every API, worker and scheduler process must have "
            f"the same {SETTING}",
            file=sys.stderr,
        )
        raise SystemExit(ExitStatus.CONFIG) from None
    except SQLAlchemyError as exc:
        log.warning("secret_key.unchecked", error_type=type(exc).__name__)
        return
    if outcome == "rotated":
        log.info("secret_key.canary_rotated")
    elif outcome == "created":  # bookkeeping of the first start, nothing to act on
        log.debug("secret_key.canary_created")
