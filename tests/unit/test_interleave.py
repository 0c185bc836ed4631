"""`interleave_owners`: the order in which reminders released together go on the queue."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from dramatiq import Message
from hypothesis import given
from hypothesis import strategies as st

from shared.broker.queue import reminder_message
from shared.broker.redis_broker import OWNER, interleave_owners


def messages(owners: list[str | None]) -> list[Message[Any]]:
    """One message per entry, owned by it (None: no owner option), numbered in order."""
    made = []
    for index, owner in enumerate(owners):
        message = reminder_message(uuid.uuid4(), datetime(2030, 1, 1, tzinfo=UTC), uuid.uuid4())
        if owner is not None:
            message.options[OWNER] = owner
        message.options["n"] = index
        made.append(message)
    return made


def test_one_owners_thousands_do_not_push_the_others_back() -> None:
    burst = messages(["alice"] * 1000 + ["bob", "carol", None])
    order = [message.options.get(OWNER) for message in interleave_owners(burst)]
    assert order[:4] == ["alice", "bob", "carol", None]
    assert order[4:] == ["alice"] * 999


@given(st.lists(st.sampled_from(["a", "b", "c", "d", None]), max_size=60))
def test_turns_by_owner_keep_each_owners_order_and_lose_nothing(
    owners: list[str | None],
) -> None:
    given_order = messages(owners)
    result = interleave_owners(given_order)
    assert sorted(m.options["n"] for m in result) == list(range(len(owners)))  # each once
    seen: dict[str | None, int] = {}
    for position, message in enumerate(result):
        owner = message.options.get(OWNER)
        own = [m.options["n"] for m in result if m.options.get(OWNER) == owner]
        assert own == sorted(own)  # an owner's own messages keep their order
        # In turns: before an owner's (k+1)-th message stand at most k+1 of any other owner
        # (k+1 of those that come first in a round, k of the rest).
        turn = seen.get(owner, 0)
        for other in set(owners):
            before = sum(1 for m in result[:position] if m.options.get(OWNER) == other)
            assert before <= turn + (1 if other != owner else 0)
        seen[owner] = turn + 1
