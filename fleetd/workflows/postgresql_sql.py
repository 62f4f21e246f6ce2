"""Names and values between PostgreSQL and the agent language.

Used by the `postgresql` workflow. Field values become the agent
language's JSON-like values (`to_value`):

- dates and times as ISO 8601 text, intervals as seconds;
- `numeric` as an integer when it has no fraction, else as text, so that
  "12.50" keeps its scale;
- booleans as 1 and 0, which is what Perl's DBD::Pg returns unless
  `pg_bool_tf` is set;
- `json` and `jsonb` decoded, `bytea` as `\\x` hex text, and other types
  (uuid, inet, ...) as their text.

Written values travel as text and PostgreSQL casts them to the column's
type (`assignment`, `parameter_text`), because agent values are loosely
typed ("5" and 5 are the same number to an agent) while asyncpg's binary
parameters are not. Lists go to array columns through
`jsonb_array_elements_text`, and lists and dicts go to other columns as
JSON text.
"""

from __future__ import annotations

import datetime
import decimal
import getpass
import ipaddress
import json
import math
import os
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import asyncpg

from fleetd.workflows.errors import WorkflowError

POSTGRES_SCHEMES = ("postgresql", "postgres")


def quote_identifier(name: str) -> str:
    """Quote `name` as an SQL identifier, doubling embedded quotes."""
    if "\x00" in name:
        raise WorkflowError(f"invalid identifier {name!r}: contains a NUL byte")
    return '"' + name.replace('"', '""') + '"'


def split_table_name(text: str) -> tuple[str | None, str]:
    """Split `name` or `schema.name` into schema (None if absent) and name.

    A part in double quotes may contain dots; `""` inside it is one quote.
    Unquoted parts are taken exactly as written.
    """
    parts: list[str] = []
    current: list[str] = []
    index = 0
    quoted_part = False
    while index < len(text):
        char = text[index]
        if char == '"' and not current and not quoted_part:
            end = index + 1
            while True:
                end = text.find('"', end)
                if end == -1:
                    raise WorkflowError(
                        f"invalid table name {text!r}: unterminated quote"
                    )
                if text.startswith('""', end):
                    end += 2
                    continue
                break
            current.append(text[index + 1 : end].replace('""', '"'))
            quoted_part = True
            index = end + 1
            continue
        if char == ".":
            parts.append("".join(current))
            current = []
            quoted_part = False
        elif quoted_part:
            raise WorkflowError(
                f"invalid table name {text!r}: expected a dot after a quoted part"
            )
        else:
            current.append(char)
        index += 1
    parts.append("".join(current))
    if len(parts) > 2 or not all(parts):
        raise WorkflowError(
            f"invalid table name {text!r}: expected name or schema.name"
        )

    return (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])


def connection_identity(dsn: str) -> tuple[str, int, str, str] | None:
    """Return (host, port, database, user) that a postgresql:// URL names.

    Unset parts take libpq's defaults from PGHOST, PGPORT, PGDATABASE and
    PGUSER, then localhost, 5432, the user and the login name. Returns None
    for a URL of another scheme.
    """
    parts = urlsplit(dsn)
    if parts.scheme not in POSTGRES_SCHEMES:
        return None
    query = dict(parse_qsl(parts.query))
    # A netloc may list several hosts; the first one names the server.
    first = urlsplit("//" + parts.netloc.rpartition("@")[2].split(",")[0])
    host = (
        query.get("host")
        or unquote(first.hostname or "")
        or os.environ.get("PGHOST")
        or "localhost"
    )
    port = int(query.get("port") or first.port or os.environ.get("PGPORT") or 5432)
    user = (
        query.get("user")
        or unquote(parts.username or "")
        or os.environ.get("PGUSER")
        or getpass.getuser()
    )
    database = (
        query.get("dbname")
        or query.get("database")
        or unquote(parts.path.lstrip("/"))
        or os.environ.get("PGDATABASE")
        or user
    )

    return host, port, database, user


def to_value(value: Any) -> Any:
    """Convert a value asyncpg returned into a JSON-like agent value."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return 1 if value else 0
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, decimal.Decimal):
        if value.is_finite() and value.as_tuple().exponent >= 0:
            return int(value)
        return str(value)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        seconds = value.total_seconds()
        return int(seconds) if seconds.is_integer() else seconds
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "\\x" + bytes(value).hex()
    if isinstance(value, (uuid.UUID, ipaddress._BaseAddress, ipaddress._BaseNetwork)):
        return str(value)
    if isinstance(value, asyncpg.Record):
        return {key: to_value(item) for key, item in value.items()}
    if isinstance(value, dict):
        return {str(key): to_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_value(item) for item in value]
    if isinstance(value, asyncpg.Range):
        return {
            "lower": to_value(value.lower),
            "upper": to_value(value.upper),
            "lower_inc": 1 if value.lower_inc else 0,
            "upper_inc": 1 if value.upper_inc else 0,
        }

    return str(value)


@dataclass(frozen=True, slots=True)
class Column:
    """A column's type: the name to cast to and its catalog category."""

    cast: str  # schema-qualified, quoted type name
    category: str  # pg_type.typcategory: "A" array, "B" boolean, ...
    json: bool  # json or jsonb


@dataclass(frozen=True, slots=True)
class Table:
    """The workflow's table as found in the catalog."""

    qualified: str  # "schema"."name", quoted
    columns: dict[str, Column]


def parameter_text(column: Column, value: Any) -> str | None:
    """Return the text that PostgreSQL casts to `column`'s type for `value`."""
    if value is None:
        return None
    if column.json:
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    if column.category == "B":
        # Perl's false values "" and 0 are false and other numbers true.
        # Other text is left to PostgreSQL, which reads t, yes, on, 1, ...
        if value == "" or (isinstance(value, (int, float)) and value == 0):
            return "false"
        if isinstance(value, (int, float)):
            return "true"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)

    return str(value)


def assignment(column: Column, value: Any, number: int) -> str:
    """Return the SQL expression for parameter `$number` assigned to `column`."""
    if column.category == "A" and isinstance(value, list):
        return (
            f"ARRAY(SELECT pg_catalog.jsonb_array_elements_text(${number}::text"
            f"::jsonb))::{column.cast}"
        )

    return f"${number}::text::{column.cast}"


def json_text(value: Any) -> str:
    """Return the id text of a non-text id value: numbers plain, others JSON."""
    if isinstance(value, (int, float)):
        return str(value)

    return json.dumps(value, ensure_ascii=False)
