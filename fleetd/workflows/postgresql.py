"""The `postgresql` workflow: rows of one table in a PostgreSQL database.

Design note. Records are the rows of `table` (optionally filtered by the
operator's `where`, used as written), ordered by `id_column`. Record ids
are text. Field values become the agent language's JSON-like values
(`to_value`): dates and times as ISO 8601 text, `numeric` as an integer
when it has no fraction and as text otherwise (so "12.50" keeps its
scale), booleans as 1 and 0 (as Perl's DBD::Pg returns them), `json` and
`jsonb` decoded, `bytea` as `\\x` hex text, intervals as seconds.

The table name is `name` or `schema.name`; a part that contains a dot is
written in double quotes (`"odd.name"`). Names are matched exactly, case
included, like column names. The table is looked up once per listing in
the catalog, and every statement uses its schema-qualified name, so the
`UPDATE` finds the same table whatever the `search_path` of the connection
that runs it.

A commit is one `UPDATE` of the staged columns of the record's row. Each
value is sent as text and cast to its column's type by PostgreSQL
(`$1::text::"pg_catalog"."int4"`), because agent values are loosely typed
("5" and 5 are the same number to an agent) while asyncpg's binary
parameters are not. Lists go to array columns through
`jsonb_array_elements_text`, and lists and dicts go to other columns as
JSON text.

When the state store is PostgreSQL on the same server, database and user
(`shares_store`), the runtime calls `commit_in_transaction` with the
store's connection inside the lock's resolution transaction: the record's
`UPDATE` and its commit mark are then written together or not at all.
Otherwise `commit` runs the `UPDATE` on the workflow's own connection
pool, before the resolution is written.

Connection loss (a restart, a cut network) while listing or committing on
the workflow's own pool is retried with backoff and jitter for up to
`retry_for` seconds, each retry logged as `workflow_retry`. Inside the
store's transaction a connection error is left to the store, which retries
the whole resolution.
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import ipaddress
import json
import math
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import asyncpg
import structlog

from fleetd.config.model import WorkflowSettings
from fleetd.locks.backoff import retry_delay
from fleetd.workflows.base import Record
from fleetd.workflows.errors import WorkflowError

log = structlog.get_logger()

T = TypeVar("T")

POSTGRES_SCHEMES = ("postgresql", "postgres")

#: Connections of one workflow's pool, at most.
POOL_SIZE = 4
#: Seconds during which connection loss is retried before the listing or
#: the commit fails.
RETRY_FOR_S = 60.0

# Errors after which the same statement may succeed on a new connection.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.InterfaceError,
    asyncpg.exceptions._base.InternalClientError,
)

_DESCRIBE = """
    SELECT c.oid, n.nspname, c.relname
    FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relname = $1
      AND c.relkind IN ('r', 'p', 'v', 'f', 'm')
      AND CASE WHEN $2::text IS NULL THEN pg_catalog.pg_table_is_visible(c.oid)
               ELSE n.nspname = $2 END
"""

_COLUMNS = """
    SELECT a.attname, tn.nspname, t.typname, t.typcategory::text
    FROM pg_catalog.pg_attribute a
    JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
    JOIN pg_catalog.pg_namespace tn ON tn.oid = t.typnamespace
    WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
"""


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
        or _login_name()
    )
    database = (
        query.get("dbname")
        or query.get("database")
        or unquote(parts.path.lstrip("/"))
        or os.environ.get("PGDATABASE")
        or user
    )

    return host, port, database, user


def _login_name() -> str:
    import getpass

    return getpass.getuser()


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


class PostgresqlWorkflow:
    """Records from the rows of `table` at `dsn`; see the module docstring."""

    kind = "postgresql"

    def __init__(
        self,
        name: str,
        dsn: str,
        table: str,
        *,
        id_column: str = "id",
        where: str | None = None,
        retry_for: float = RETRY_FOR_S,
    ) -> None:
        self.name = name
        self.dsn = dsn
        self.table_name = table
        self.schema, self.relation = split_table_name(table)
        self.id_column = id_column
        self.where = where
        self.retry_for = retry_for
        self.retries = 0
        self._identity = connection_identity(dsn)
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()
        self._table: Table | None = None

    # Records

    async def records(self) -> list[Record]:
        async def run(connection: asyncpg.Connection) -> list[Record]:
            table = await self._describe(connection)
            query = f"SELECT * FROM {table.qualified}"
            if self.where:
                query += f" WHERE ({self.where})"
            query += f" ORDER BY {quote_identifier(self.id_column)}"
            try:
                rows = await connection.fetch(query)
            except asyncpg.PostgresError as error:
                if isinstance(error, TRANSIENT_ERRORS):
                    raise
                raise WorkflowError(
                    f"postgresql workflow {self.name}: cannot list"
                    f" {self.table_name}: {error}"
                ) from error

            return [self._record(number, row) for number, row in enumerate(rows, 1)]

        return await self._retrying("list", run)

    def _record(self, number: int, row: asyncpg.Record) -> Record:
        fields = {key: to_value(value) for key, value in row.items()}
        raw_id = fields.get(self.id_column)
        if raw_id is None:
            return Record(id=f"row {number}", invalid=f"{self.id_column} is NULL")
        record_id = raw_id if isinstance(raw_id, str) else json_text(raw_id)

        return Record(id=record_id, fields=fields)

    # Commits

    async def commit(self, record: Record, changes: dict[str, Any]) -> None:
        if not changes:
            return

        async def run(connection: asyncpg.Connection) -> None:
            await self.commit_in_transaction(connection, record, changes)

        await self._retrying("commit", run)

    def shares_store(self, store: Any) -> bool:
        """Tell whether `store` is on this workflow's server, database and user.

        Then the runtime runs `commit_in_transaction` inside the store's
        resolution transaction.
        """
        url = getattr(store, "url", None)
        if not isinstance(url, str) or self._identity is None:
            return False

        return connection_identity(url) == self._identity

    async def commit_in_transaction(
        self, connection: asyncpg.Connection, record: Record, changes: dict[str, Any]
    ) -> None:
        """Write `changes` to the record's row with `connection`.

        Runs inside the caller's transaction, if any. Raises WorkflowError
        when a column is unknown, a value does not fit its column or no row
        has the record's id. Connection errors propagate unchanged, so the
        caller can retry.
        """
        if record.id is None:
            raise WorkflowError(f"postgresql workflow {self.name}: a record without id")
        if not changes:
            return
        table = self._table or await self._describe_on_pool()
        unknown = [column for column in changes if column not in table.columns]
        if self.id_column not in table.columns:
            unknown.append(self.id_column)
        if unknown:
            raise WorkflowError(
                f"postgresql workflow {self.name}: record {record.id}: table"
                f" {self.table_name} has no column {', '.join(unknown)}"
            )
        assignments = []
        parameters: list[str | None] = []
        for number, (column, value) in enumerate(changes.items(), 1):
            column_type = table.columns[column]
            assignments.append(
                f"{quote_identifier(column)} = {assignment(column_type, value, number)}"
            )
            parameters.append(parameter_text(column_type, value))
        id_type = table.columns[self.id_column]
        statement = (
            f"UPDATE {table.qualified} SET {', '.join(assignments)}"
            f" WHERE {quote_identifier(self.id_column)}"
            f" = ${len(parameters) + 1}::text::{id_type.cast}"
        )
        parameters.append(record.id)
        try:
            status = await connection.execute(statement, *parameters)
        except asyncpg.PostgresError as error:
            if isinstance(error, TRANSIENT_ERRORS):
                raise
            raise WorkflowError(
                f"postgresql workflow {self.name}: record {record.id}: UPDATE"
                f" failed: {error}"
            ) from error
        updated = int(status.rsplit(" ", 1)[1])
        if updated != 1:
            raise WorkflowError(
                f"postgresql workflow {self.name}: record {record.id}: "
                f"expected 1 row to update, found {updated}"
            )

    async def aclose(self) -> None:
        """Close the connection pool, if one was opened."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    # Catalog and connections

    async def _describe(self, connection: asyncpg.Connection) -> Table:
        row = await connection.fetchrow(_DESCRIBE, self.relation, self.schema)
        if row is None:
            raise WorkflowError(
                f"postgresql workflow {self.name}: table {self.table_name}"
                " not found (names are matched exactly, case included)"
            )
        columns = {}
        for name, type_schema, type_name, category in await connection.fetch(
            _COLUMNS, row["oid"]
        ):
            columns[name] = Column(
                cast=f"{quote_identifier(type_schema)}.{quote_identifier(type_name)}",
                category=category,
                json=type_schema == "pg_catalog" and type_name in ("json", "jsonb"),
            )
        if self.id_column not in columns:
            raise WorkflowError(
                f"postgresql workflow {self.name}: table {self.table_name} has no"
                f" column {self.id_column}"
            )
        qualified = (
            f"{quote_identifier(row['nspname'])}.{quote_identifier(row['relname'])}"
        )
        self._table = Table(qualified, columns)

        return self._table

    async def _describe_on_pool(self) -> Table:
        return await self._retrying("describe", self._describe)

    async def _connect_pool(self) -> asyncpg.Pool:
        async with self._pool_lock:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(
                    self.dsn, min_size=0, max_size=POOL_SIZE, init=_set_codecs
                )

            return self._pool

    async def _retrying(
        self, operation: str, run: Callable[[asyncpg.Connection], Awaitable[T]]
    ) -> T:
        """Run `run(connection)`, retrying connection loss for `retry_for` s."""
        attempt = 1
        deadline = time.monotonic() + self.retry_for
        while True:
            try:
                pool = self._pool or await self._connect_pool()
                async with pool.acquire() as connection:
                    return await run(connection)
            except TRANSIENT_ERRORS as error:
                delay = retry_delay(attempt)
                if time.monotonic() + delay > deadline:
                    raise WorkflowError(
                        f"postgresql workflow {self.name}: {operation} failed"
                        f" after {attempt} attempts: {error!r}"
                    ) from error
                self.retries += 1
                log.warning(
                    "workflow_retry",
                    workflow=self.name,
                    operation=operation,
                    attempt=attempt,
                    delay_s=round(delay, 3),
                    error=repr(error),
                )
                await asyncio.sleep(delay)
                attempt += 1
            except asyncpg.PostgresError as error:
                raise WorkflowError(
                    f"postgresql workflow {self.name}: {operation} failed: {error}"
                ) from error


def json_text(value: Any) -> str:
    """Return the id text of a non-text id value: numbers plain, others JSON."""
    if isinstance(value, (int, float)):
        return str(value)

    return json.dumps(value, ensure_ascii=False)


async def _set_codecs(connection: asyncpg.Connection) -> None:
    for type_name in ("json", "jsonb"):
        await connection.set_type_codec(
            type_name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )


def open_postgresql_workflow(settings: WorkflowSettings) -> PostgresqlWorkflow:
    """Build the postgresql workflow of one `[workflows.NAME]` table."""
    options = settings.options

    return PostgresqlWorkflow(
        settings.name,
        options["dsn"],
        options["table"],
        id_column=options.get("id_column") or "id",
        where=options.get("where"),
    )
