"""The `postgresql` workflow: rows of one table in a PostgreSQL database.

Design note. Records are the rows of `table` (optionally filtered by the
operator's `where`, used as written), ordered by `id_column`. Record ids
are text. How values convert in both directions is described in
`fleetd.workflows.postgresql_sql`.

The table name is `name` or `schema.name`; a part that contains a dot is
written in double quotes (`"odd.name"`). Names are matched exactly, case
included, like column names. The table is looked up in the catalog at
each listing, and every statement uses its schema-qualified name, so the
`UPDATE` finds the same table whatever the `search_path` of the connection
that runs it.

A commit is one `UPDATE` of the staged columns of the record's row. The
state store may be PostgreSQL on the same server, database and user
(`shares_store`). Then the runtime calls `commit_in_transaction` with the
store's connection inside the lock's resolution transaction, so the
record's `UPDATE` and its commit mark are written together or not at all.
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
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import structlog

from fleetd.config.model import WorkflowSettings
from fleetd.locks.backoff import retry_delay
from fleetd.pgurl import connect_arguments
from fleetd.workflows.base import Record
from fleetd.workflows.errors import WorkflowError
from fleetd.workflows.postgresql_sql import (
    Column,
    Table,
    assignment,
    connection_identity,
    json_text,
    parameter_text,
    quote_identifier,
    split_table_name,
    to_value,
)

log = structlog.get_logger()

T = TypeVar("T")

#: Maximum number of connections in one workflow's pool.
POOL_SIZE = 4
#: Seconds during which connection loss is retried before the listing or
#: the commit fails.
RETRY_FOR_S = 60.0
#: Seconds that closing the pool waits for connections in use.
CLOSE_TIMEOUT_S = 10.0

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


class PostgresqlWorkflow:
    """Records from the rows of `table` at `dsn`, as the module docstring describes."""

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
        self._shared: dict[str, bool] = {}  # by state store URL
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
        shared = self._shared.get(url)
        if shared is None:
            shared = self._shared[url] = connection_identity(url) == self._identity

        return shared

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
        """Close the connection pool, if one was opened.

        Connections still in use after CLOSE_TIMEOUT_S are terminated.
        """
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT_S)
            except TimeoutError:
                log.warning("workflow_pool_terminated", workflow=self.name)
                pool.terminate()

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
                dsn, arguments = connect_arguments(self.dsn)
                self._pool = await asyncpg.create_pool(
                    dsn, min_size=0, max_size=POOL_SIZE, init=_set_codecs, **arguments
                )

            return self._pool

    async def _retrying(
        self, operation: str, run: Callable[[asyncpg.Connection], Awaitable[T]]
    ) -> T:
        """Run `run(connection)` and retry it after connection loss.

        Retries stop `retry_for` seconds after the first attempt; the last
        error is then raised as WorkflowError.
        """
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
