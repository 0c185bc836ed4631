"""One key everywhere: the canary tells a process whose REMINDERS_SECRET_KEY differs from
the one the others use, before it reads an endpoint secret (`shared.delivery.key_canary`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from shared.delivery.key_canary import check_secret_key
from shared.delivery.secret_box import SecretBox, SecretKeyMismatch, generate_key
from shared.store.models import SecretKeyCanary


def canary(engine: Engine) -> str:
    with engine.begin() as connection:
        token = connection.scalar(select(SecretKeyCanary.token))
    assert token is not None
    return token


def test_the_first_process_writes_the_canary_and_the_same_key_reads_it(migrated: Engine) -> None:
    key = generate_key()

    assert check_secret_key(migrated, SecretBox([key])) == "created"
    assert check_secret_key(migrated, SecretBox([key])) == "matched"
    assert SecretBox([key]).decrypt(canary(migrated))


def test_another_key_is_refused(migrated: Engine) -> None:
    check_secret_key(migrated, SecretBox([generate_key()]))
    before = canary(migrated)

    with pytest.raises(SecretKeyMismatch, match="REMINDERS_SECRET_KEY"):
        check_secret_key(migrated, SecretBox([generate_key()]))
    assert canary(migrated) == before


def test_a_key_file_of_another_host_is_refused_naming_it(migrated: Engine, tmp_path: Path) -> None:
    """REMINDERS_SECRET_KEY unset on two hosts: each makes its own key file."""
    check_secret_key(migrated, SecretBox.from_setting("", tmp_path / "api-host"))

    with pytest.raises(SecretKeyMismatch, match=r"key in .*worker-host/secret\.key"):
        check_secret_key(migrated, SecretBox.from_setting("", tmp_path / "worker-host"))


def test_a_rotated_key_rewrites_the_canary_so_the_old_key_alone_is_refused(
    migrated: Engine,
) -> None:
    old, new = generate_key(), generate_key()
    check_secret_key(migrated, SecretBox([old]))

    assert check_secret_key(migrated, SecretBox([new, old])) == "rotated"
    assert check_secret_key(migrated, SecretBox([new, old])) == "matched"
    assert check_secret_key(migrated, SecretBox([new])) == "matched"
    with pytest.raises(SecretKeyMismatch):
        check_secret_key(migrated, SecretBox([old]))
