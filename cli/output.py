"""How the commands print: aligned tables for people, JSON for scripts.

Whatever a command prints from the database or the broker (URLs, descriptions, user
names, errors, tracebacks) went in through someone else's request: its control and
invisible characters (terminal escapes such as U+009B, bidi overrides such as U+202E,
U+FEFF) are printed escaped (``\\u202e``), never raw, so they cannot move the cursor,
recolour the terminal or reorder a line. JSON output escapes them too (``ensure_ascii``).
"""

from __future__ import annotations

import json
import unicodedata
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import click


def jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, default=jsonable, indent=2))


def printable(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with its control, format (bidi, zero-width, BOM), unassigned and private-use
    characters and line separators written as Python escapes; newlines kept if asked."""
    return "".join(
        char
        if (keep_newlines and char == "\n") or not _hidden(char)
        else char.encode("unicode_escape").decode("ascii")
        for char in text
    )


def _hidden(char: str) -> bool:
    category = unicodedata.category(char)
    return category[0] == "C" or category in ("Zl", "Zp")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [
        [printable(str(jsonable(cell) if cell is not None else "")) for cell in row] for row in rows
    ]
    widths = [max([len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(headers)]
    line = "  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))
    body = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join([line, *body])
