"""Record text that reports, logs and every state store can take.

A record id and every key and string value of its fields must encode as
UTF-8. A lone surrogate (a JSON `"\\ud800"` escape, or a byte that a
workflow decoded with Python's `surrogateescape` handler) does not, so
writing it to a report, a log or a store raises UnicodeEncodeError. A
record id must not contain NUL either, because PostgreSQL text cannot
store it. A NUL in a field value stays data: a program that receives it as
an argument fails that command.

`checked_record` turns a record that breaks these rules into an `invalid`
one whose id is printable, so the other records of the cycle still run.
"""

from __future__ import annotations

from typing import Any

from fleetd.workflows.base import Record


def utf8_problem(text: str) -> str | None:
    """Return why `text` cannot be encoded as UTF-8, or None when it can."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        character = text[error.start]
        return f"not valid UTF-8 text: lone surrogate U+{ord(character):04X}"

    return None


def printable_text(text: str) -> str:
    """Return `text` with lone surrogates and NUL written as backslash escapes."""
    escaped = text.encode("utf-8", "backslashreplace").decode("utf-8")

    return escaped.replace("\x00", "\\x00")


def id_problem(record_id: str) -> str | None:
    """Return why `record_id` cannot be a record id, or None when it can."""
    if "\x00" in record_id:
        return "record id contains a NUL character"
    problem = utf8_problem(record_id)
    if problem is not None:
        return f"record id is {problem}"

    return None


def fields_problem(fields: dict[str, Any]) -> str | None:
    """Return why a key or string value in `fields` is not UTF-8 text, or None.

    Walks lists and dicts at any depth, iteratively, because fields may nest
    deeper than Python's recursion limit.
    """
    stack: list[tuple[str, Any]] = [("", fields)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            problem = utf8_problem(value)
            if problem is not None:
                return f"field {path}: {problem}"
        elif isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    continue
                child = f"{path}.{printable_text(key)}" if path else printable_text(key)
                problem = utf8_problem(key)
                if problem is not None:
                    return f"field name {child}: {problem}"
                stack.append((child, item))
        elif isinstance(value, list):
            stack.extend((f"{path}[{index}]", item) for index, item in enumerate(value))

    return None


def checked_record(record: Record) -> Record:
    """Return `record`, or an invalid copy when its text breaks the rules above.

    An invalid copy has no fields, and its id is written with backslash
    escapes when the id was the problem, so no later step meets the text.
    """
    if record.id is not None:
        problem = id_problem(record.id)
        if problem is not None:
            return Record(id=printable_text(record.id), invalid=problem)
    if record.invalid is not None:
        return record
    problem = fields_problem(record.fields)
    if problem is not None:
        return Record(id=record.id, invalid=problem)

    return record
