"""The keys of each TOML table, their types and their expected forms.

msgspec checks each value against its type, key by key rather than a whole
table at once, so that one pass reports every wrong key of every file
instead of stopping at the first.
"""

from __future__ import annotations

import math
import re
import shlex
from typing import Annotated, Any, Literal, get_args, get_origin

import msgspec

from fleetd.config.durations import DURATION_FORM, parse_duration
from fleetd.config.state import STATE_FORM

LOG_LEVELS = (
    "debug", "info", "notice", "warning", "error", "critical", "alert", "emergency",
)  # fmt: skip
WORKFLOW_KINDS = ("spool", "sqlite", "postgresql", "command")
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]+")
GLOBAL_NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
NonEmptyText = Annotated[str, msgspec.Meta(min_length=1)]


class Key(msgspec.Struct, frozen=True):
    """One allowed key: its msgspec type, expected form, and conversion.

    `convert` is "plain" (the value as msgspec returns it), "duration"
    (seconds), "argv" (a list of words, a string being split as a POSIX
    shell would) or "tuple" (a list turned into a tuple).
    """

    type: Any
    form: str
    convert: str = "plain"
    required: bool = False


def _duration(form_extra: str = "") -> Key:
    return Key(float | str, DURATION_FORM + form_extra, convert="duration")


DAEMON_KEYS: dict[str, Key] = {
    "state": Key(NonEmptyText, STATE_FORM),
    "max_concurrency": Key(PositiveInt, "a whole number of at least 1"),
    "interval": _duration(),
    "splay": _duration(),
    "shutdown_grace": _duration(),
    "cleanup_timeout": _duration(),
    "lease": _duration(),
    "safe_path": Key(list[NonEmptyText], "a list of folder paths", convert="tuple"),
    "plugin_dirs": Key(list[NonEmptyText], "a list of folder paths", convert="tuple"),
    "log_level": Key(Literal[LOG_LEVELS], "one of " + ", ".join(LOG_LEVELS)),
    "loop": Key(Literal["asyncio", "uvloop"], '"asyncio" or "uvloop"'),
}

_ARGV_FORM = 'a list of words such as ["/usr/local/bin/list-requests", "--json"]'
_ID_COLUMN = Key(NonEmptyText, "a column name")
_WHERE = Key(NonEmptyText, "an SQL condition such as \"status = 'approved'\"")

WORKFLOW_KEYS: dict[str, dict[str, Key]] = {
    "spool": {"path": Key(NonEmptyText, "a folder path", required=True)},
    "sqlite": {
        "path": Key(NonEmptyText, "an SQLite database file path", required=True),
        "table": Key(NonEmptyText, "a table name", required=True),
        "id_column": _ID_COLUMN,
        "where": _WHERE,
    },
    "postgresql": {
        "dsn": Key(NonEmptyText, "a postgresql:// URL", required=True),
        "table": Key(NonEmptyText, "a table name", required=True),
        "id_column": _ID_COLUMN,
        "where": _WHERE,
    },
    "command": {
        "list_command": Key(list[NonEmptyText] | str, _ARGV_FORM, "argv", True),
        "update_command": Key(list[NonEmptyText] | str, _ARGV_FORM, "argv"),
        "timeout": _duration(),
    },
}

# Keys whose values are paths, by kind, resolved against the TOML file's folder.
WORKFLOW_PATH_KEYS = {"spool": ("path",), "sqlite": ("path",)}
WORKFLOW_ARGV_KEYS = ("list_command", "update_command")
WORKFLOW_DEFAULTS: dict[str, dict[str, Any]] = {
    "spool": {},
    "sqlite": {"id_column": "id", "where": None},
    "postgresql": {"id_column": "id", "where": None},
    "command": {"update_command": None, "timeout": 60.0},
}


def convert_value(key: Key, value: Any) -> Any:
    """Check `value` against `key` and convert it.

    Raises ValueError whose message states the expected form.
    """
    try:
        checked = msgspec.convert(value, type=key.type, strict=True)
    except msgspec.ValidationError:
        if _has_base_type(key.type, value):
            # The kind is right and a bound such as `ge=1` failed, so the
            # message shows only the value: "got 0".
            raise ValueError(f"expected {key.form}, got {value!r}") from None
        raise ValueError(f"expected {key.form}, got {_describe(value)}") from None
    # No path, URL or program argument can contain a NUL byte.
    texts = checked if isinstance(checked, list) else [checked]
    if any(isinstance(text, str) and "\0" in text for text in texts):
        raise ValueError(f"expected {key.form}, got a string with a NUL byte")

    if key.convert == "duration":
        if isinstance(checked, str):
            try:
                seconds = parse_duration(checked)
            except ValueError:
                raise ValueError(f"expected {key.form}, got {checked!r}") from None
        else:
            seconds = float(checked)
        if seconds < 0:
            raise ValueError(f"expected {key.form}, got a negative number")
        if not math.isfinite(seconds):
            raise ValueError(f"expected {key.form}, got {checked!r}")
        return seconds
    if key.convert == "argv":
        try:
            words = shlex.split(checked) if isinstance(checked, str) else list(checked)
        except ValueError as error:
            raise ValueError(f"invalid command line: {error}") from None
        if not words:
            raise ValueError(f"expected {key.form}, got no words")
        return words
    if key.convert == "tuple":
        return tuple(checked)

    return checked


def _has_base_type(expected: Any, value: Any) -> bool:
    """Tell whether `value` is of the type that `expected` annotates with bounds."""
    if get_origin(expected) is not Annotated:
        return False
    try:
        msgspec.convert(value, type=get_args(expected)[0], strict=True)
    except msgspec.ValidationError:
        return False

    return True


def _describe(value: Any) -> str:
    kind = {
        bool: "a boolean",
        int: "a whole number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)
    if isinstance(value, (dict, list)):
        return kind
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."

    return f"{kind} ({text})"
