"""What a client reads about a field that failed validation: pydantic's error types, worded
as sentences in one place.

pydantic's messages are written for Python programmers ("Input should be a valid dictionary
or instance of TaskCreate", "String should match pattern '^[^\\x00]*$'"). Every 422 takes
each ``errors[].message`` from `message`, which says what the field must be, in the terms
of the OpenAPI document, after the field's name ("must be at most 200 characters long").
The checks of `api.schemas` raise their own code and sentence (``PydanticCustomError``),
which pass through as written; a value that does not match a pattern is explained by the
sentence `api.schemas.PATTERN_SENTENCES` gives that pattern.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic_core import ErrorDetails

from api.schemas import DATE_TIME_SENTENCE, PATTERN_SENTENCES

# For a pattern without a sentence (a new one): never the expression itself.
UNKNOWN_PATTERN = "contains characters that are not allowed here"
JSON_OBJECT = "must be a JSON object"
OFFSET = "must carry a UTC offset (Z or +hh:mm), e.g. 2030-01-31T09:00:00+01:00"


def _count(number: Any, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _number(value: Any) -> str:
    # A bound as the document writes it: 1000, not 1000.0; 0.5 stays 0.5.
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _too_short_text(context: dict[str, Any]) -> str:
    if context["min_length"] == 1:
        return "must not be empty"
    return f"must be at least {_count(context['min_length'], 'character')} long"


def _datetime_parsing(context: dict[str, Any]) -> str:
    # The parser's reason ("day value is outside expected range") is written for people.
    return (
        f"{DATE_TIME_SENTENCE} ({context['error']})" if "error" in context else DATE_TIME_SENTENCE
    )


_Wording = str | Callable[[dict[str, Any]], str]

# By pydantic error type: a sentence, or a function of the error's context.
SENTENCES: dict[str, _Wording] = {
    "missing": "is required",
    "string_type": "must be a string",
    "string_too_short": _too_short_text,
    "string_too_long": lambda ctx: f"must be at most {_count(ctx['max_length'], 'character')} long",
    "string_pattern_mismatch": lambda ctx: PATTERN_SENTENCES.get(ctx["pattern"], UNKNOWN_PATTERN),
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "greater_than_equal": lambda ctx: f"must be at least {_number(ctx['ge'])}",
    "less_than_equal": lambda ctx: f"must be at most {_number(ctx['le'])}",
    "greater_than": lambda ctx: f"must be more than {_number(ctx['gt'])}",
    "less_than": lambda ctx: f"must be less than {_number(ctx['lt'])}",
    "literal_error": lambda ctx: f"must be {ctx['expected']}",
    "list_type": "must be an array",
    "too_short": lambda ctx: f"must hold at least {_count(ctx['min_length'], 'item')}",
    "too_long": lambda ctx: f"must hold at most {_count(ctx['max_length'], 'item')}",
    "model_type": JSON_OBJECT,
    "model_attributes_type": JSON_OBJECT,
    "dict_type": JSON_OBJECT,
    # flask-openapi3 parses a body that is a JSON string as JSON text.
    "json_invalid": JSON_OBJECT,
    "json_type": JSON_OBJECT,
    "uuid_type": "must be a UUID",
    "uuid_parsing": "must be a UUID",
    "datetime_type": DATE_TIME_SENTENCE,
    "datetime_parsing": _datetime_parsing,
    "datetime_from_date_parsing": _datetime_parsing,
    "datetime_object_invalid": _datetime_parsing,
    "timezone_aware": OFFSET,
    "none_required": "must be null",
    # A ValueError raised by code a validator calls: its text, without pydantic's prefix.
    "value_error": lambda ctx: str(ctx["error"]),
}


def message(error: ErrorDetails, location: str) -> str:
    """The sentence for one of a `pydantic.ValidationError`'s ``errors()`` (with their
    context) about a field in ``location`` (``body``, ``query``, ``header``)."""
    if error["type"] == "extra_forbidden":
        if location == "body":
            return "is not a field this operation takes"
        return f"is not a {location} parameter this operation takes"
    wording = SENTENCES.get(error["type"])
    if wording is None:
        # The schemas' own sentence (PydanticCustomError); or pydantic's, for a type no
        # schema here produces.
        sentence = error["msg"]
    elif isinstance(wording, str):
        sentence = wording
    else:
        sentence = wording(dict(error.get("ctx") or {}))
    # A list's item: ("reminders", <the union branch>, 1) is the field's item 1.
    item = next((part for part in error["loc"][1:] if isinstance(part, int)), None)
    return sentence if item is None else f"item {item} {sentence}"
