"""A request's JSON body, parsed once before any view, and refused when it is not JSON or is
nested deeper than `MAX_DEPTH`.

Python's JSON parser, and what walks the parsed value afterwards (validation, the
``Idempotency-Key`` fingerprint), recurse once per level of nesting. A body nested a
thousand levels deep fits easily in 64 KiB and would exhaust the interpreter's recursion
limit in one of them, as a 500, at a depth that depends on where. No request of this API
nests deeper than three levels, so the body is refused past a fixed depth right after it is
parsed: a 400 at any depth. The parsed value stays in the request's cache, where the views
(flask-openapi3's validation, `api.tasks`) read it without parsing it again.
"""

from __future__ import annotations

from typing import Any

from flask import request
from werkzeug.exceptions import BadRequest

MAX_DEPTH = 32
NOT_JSON = "the body is not valid JSON"
TOO_DEEP = f"the body's JSON is nested more than {MAX_DEPTH} levels deep"


def nesting_depth(value: Any, stop_past: int = MAX_DEPTH) -> int:
    """How many arrays and objects deep ``value`` is (a scalar: 0, ``[]``: 1, ``[[1]]``: 2);
    counting stops, without recursion, once the depth is past ``stop_past``."""
    deepest = 0
    pending = [(value, 1)]
    while pending:
        item, level = pending.pop()
        if isinstance(item, dict):
            children = list(item.values())
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        if deepest > stop_past:
            break
        pending.extend((child, level + 1) for child in children)
    return deepest


def refusal() -> str | None:
    """Parse the request's ``application/json`` body into the request's cache; return why
    it is refused (not JSON, or nested past `MAX_DEPTH`), or None when it may be read."""
    try:
        value = request.get_json(cache=True)
    except BadRequest:  # Flask's answer to a body that does not decode
        return NOT_JSON
    except RecursionError:  # nested so deep the parser gave up: far past MAX_DEPTH
        return TOO_DEEP
    return TOO_DEEP if nesting_depth(value) > MAX_DEPTH else None
