"""``reminders endpoints list`` shows each endpoint's delivery limits (SPEC §4.9): how many
of its requests may be in flight at once, and how many per second ("-": no rate limit).

The real ``reminders`` command against the test's own PostgreSQL schema.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from shared.delivery import endpoints
from shared.delivery.secret_box import SecretBox, generate_key
from shared.store.db import unit_of_work
from tests.conftest import create_account
from tests.pipeline import conftest as pipeline_harness
from tests.pipeline.conftest import Stack
from tests.pipeline.test_ops import cli

stack = pipeline_harness.stack  # own schema and namespace


def test_endpoints_list_shows_each_endpoint_s_limits(stack: Stack) -> None:
    owner = create_account(stack.engine, "alice")
    box = SecretBox([generate_key()])
    with unit_of_work(stack.sessions) as session:
        default, _ = endpoints.create(
            session, box, owner.id, "https://hooks.example/a", None, datetime.now(UTC)
        )
        limited, _ = endpoints.create(
            session,
            box,
            owner.id,
            "https://hooks.example/b",
            None,
            datetime.now(UTC),
            max_concurrency=2,
            max_per_second=0.5,
        )
        whole, _ = endpoints.create(
            session,
            box,
            owner.id,
            "https://hooks.example/c",
            None,
            datetime.now(UTC),
            max_concurrency=64,
            max_per_second=20,
        )
        ids = {"a": str(default.id), "b": str(limited.id), "c": str(whole.id)}

    listed = cli(stack, "endpoints", "list", "alice")

    assert listed.returncode == 0, listed.stderr
    [header, *lines] = listed.stdout.splitlines()
    columns = header.split()
    assert columns[4:6] == ["MAX_CONCURRENCY", "MAX_PER_SECOND"]
    shown = {line.split()[0]: line.split()[4:6] for line in lines}
    assert shown == {ids["a"]: ["8", "-"], ids["b"]: ["2", "0.5"], ids["c"]: ["64", "20"]}

    as_json = cli(stack, "endpoints", "list", "alice", "--json")
    assert as_json.returncode == 0, as_json.stderr
    limits = {
        item["id"]: (item["max_concurrency"], item["max_per_second"])
        for item in json.loads(as_json.stdout)
    }
    assert limits == {ids["a"]: (8, None), ids["b"]: (2, 0.5), ids["c"]: (64, 20)}
