"""What the CLI prints from the database is escaped: control and bidi characters stored
by someone else (an endpoint URL saved before they were refused, a user name, an error)
never reach the operator's terminal raw.

The real ``reminders`` command against the test's own PostgreSQL schema; the rows are
written as an older version, or another client, could have left them.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from sqlalchemy import update

from shared.delivery import endpoints
from shared.delivery.secret_box import SecretBox, generate_key
from shared.store.db import unit_of_work
from shared.store.models import Endpoint
from tests.conftest import create_account
from tests.pipeline import conftest as pipeline_harness
from tests.pipeline.conftest import Stack
from tests.pipeline.test_ops import cli

stack = pipeline_harness.stack  # own schema and namespace

RAW = ("\u009b", "\u202e", "\ufeff", "\x1b")


def test_endpoints_list_escapes_control_and_bidi_characters_in_stored_values(
    stack: Stack,
) -> None:
    owner = create_account(stack.engine, "mallory\u202eevil")
    url = "https://hooks.example/\u009b31m\u202egnp.exe\ufeff"
    with unit_of_work(stack.sessions) as session:
        endpoint, _ = endpoints.create(
            session, SecretBox([generate_key()]), owner.id, url, "desc\x1b[2J", datetime.now(UTC)
        )
        session.flush()
        session.execute(
            update(Endpoint)
            .where(Endpoint.id == endpoint.id)
            .values(
                enabled=False,
                disabled_reason="answered \x1b[31mred\u202e",
                disabled_at=datetime.now(UTC),
            )
        )

    listed = cli(stack, "endpoints", "list")

    assert listed.returncode == 0, listed.stderr
    assert not any(char in listed.stdout for char in RAW), repr(listed.stdout)
    [_, line] = listed.stdout.splitlines()
    assert "mallory\\u202eevil" in line
    assert "https://hooks.example/\\x9b31m\\u202egnp.exe\\ufeff" in line
    assert "answered \\x1b[31mred\\u202e" in line

    as_json = cli(stack, "endpoints", "list", "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert not any(char in as_json.stdout for char in RAW)
    [shown] = json.loads(as_json.stdout)
    assert (shown["url"], shown["owner"]) == (url, "mallory\u202eevil")  # the same, escaped
