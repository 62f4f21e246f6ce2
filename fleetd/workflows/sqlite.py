"""The `sqlite` workflow: rows of one table in an SQLite database file.

Identifiers (table and column names) are quoted with SQLite's double-quote
rule; values always travel as parameters. `where` is an SQL condition the
operator wrote in the configuration and is used as written.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import anyio.to_thread

from fleetd.workflows.base import Record
from fleetd.workflows.errors import WorkflowError
from fleetd.workflows.text import id_problem

BUSY_TIMEOUT_S = 30.0


def quote_identifier(name: str) -> str:
    """Quote `name` as an SQL identifier, doubling embedded quotes."""
    if "\x00" in name:
        raise WorkflowError(f"invalid identifier {name!r}: contains a NUL byte")
    return '"' + name.replace('"', '""') + '"'


def column_value(value: Any) -> Any:
    """Convert an agent value to an SQLite value: lists and dicts as JSON."""
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return value


class SqliteWorkflow:
    """Records from the rows of `table` in the SQLite file `path`."""

    kind = "sqlite"

    def __init__(
        self,
        name: str,
        path: str | Path,
        table: str,
        *,
        id_column: str = "id",
        where: str | None = None,
    ) -> None:
        self.name = name
        self.path = Path(path)
        self.table = table
        self.id_column = id_column
        self.where = where
        # The id column's value as read, by record id, so that an UPDATE
        # compares the value with its own type.
        self._ids: dict[str, Any] = {}

    async def records(self) -> list[Record]:
        return await anyio.to_thread.run_sync(self._read_all)

    async def commit(self, record: Record, changes: dict[str, Any]) -> None:
        await anyio.to_thread.run_sync(self._update, record, changes)

    def _connect(self) -> sqlite3.Connection:
        if not self.path.is_file():
            raise WorkflowError(
                f"sqlite workflow {self.name}: database {self.path} not found"
            )
        return sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S)

    def _read_all(self) -> list[Record]:
        table = quote_identifier(self.table)
        id_column = quote_identifier(self.id_column)
        query = f"SELECT * FROM {table}"
        if self.where:
            query += f" WHERE {self.where}"
        query += f" ORDER BY {id_column}"
        connection = self._connect()
        try:
            connection.row_factory = sqlite3.Row
            # SQLite text may hold any bytes. Decoding strictly would fail
            # the whole listing on one row, so undecodable bytes become lone
            # surrogates and make only their row invalid.
            connection.text_factory = _decode_text
            rows = connection.execute(query).fetchall()
        except sqlite3.Error as error:
            raise WorkflowError(
                f"sqlite workflow {self.name}: cannot list {self.table} "
                f"in {self.path}: {error}"
            ) from error
        finally:
            connection.close()

        records = []
        ids: dict[str, Any] = {}
        for number, row in enumerate(rows, 1):
            # A BLOB is read as text too, so a BLOB id or field that contains
            # UTF-8 reads as its text rather than as Python's b'...' form.
            fields = {
                column: _decode_text(value) if isinstance(value, bytes) else value
                for column, value in dict(row).items()
            }
            if self.id_column not in fields:
                raise WorkflowError(
                    f"sqlite workflow {self.name}: table {self.table} has no "
                    f"column {self.id_column}"
                )
            raw_id = row[self.id_column]
            if raw_id is None:
                records.append(
                    Record(id=f"row {number}", invalid=f"{self.id_column} is NULL")
                )
                continue
            record_id = str(fields[self.id_column])
            problem = _undecodable_column(fields)
            if problem is None:
                problem = id_problem(record_id)
            if problem is not None:
                printable_id = _printable_column(record_id)
                records.append(Record(id=printable_id, invalid=problem))
                continue
            ids[record_id] = raw_id
            records.append(Record(id=record_id, fields=fields))
        self._ids = ids

        return records

    def shares_store(self, store: Any) -> bool:
        """Tell whether `store` is an SQLite state store in this workflow's file.

        Then the runtime runs `commit_in_transaction` inside the store's
        resolution transaction, so a record's UPDATE and its mark commit
        together, as one transaction.
        """
        store_path = getattr(store, "path", None)
        if not isinstance(store_path, str) or not store.url.startswith("sqlite:"):
            return False
        try:
            return os.path.samefile(store_path, self.path)
        except OSError:
            return False

    def commit_in_transaction(
        self, connection: sqlite3.Connection, record: Record, changes: dict[str, Any]
    ) -> None:
        """Write `changes` to the record's row with the caller's `connection`.

        Runs inside the caller's transaction. Raises WorkflowError when the
        UPDATE fails or does not find exactly one row.
        """
        try:
            self._apply(connection, record, changes)
        except sqlite3.Error as error:
            raise WorkflowError(
                f"sqlite workflow {self.name}: record {record.id}: UPDATE failed: "
                f"{error}"
            ) from error

    def _update(self, record: Record, changes: dict[str, Any]) -> None:
        if not changes:
            return
        connection = self._connect()
        try:
            with connection:
                self.commit_in_transaction(connection, record, changes)
        finally:
            connection.close()

    def _apply(
        self, connection: sqlite3.Connection, record: Record, changes: dict[str, Any]
    ) -> None:
        if record.id is None:
            raise WorkflowError(f"sqlite workflow {self.name}: a record without id")
        if not changes:
            return
        assignments = ", ".join(f"{quote_identifier(column)} = ?" for column in changes)
        statement = (
            f"UPDATE {quote_identifier(self.table)} SET {assignments} "
            f"WHERE {quote_identifier(self.id_column)} = ?"
        )
        parameters = [column_value(value) for value in changes.values()]
        parameters.append(self._ids.get(record.id, record.id))
        cursor = connection.execute(statement, parameters)
        if cursor.rowcount != 1:
            raise WorkflowError(
                f"sqlite workflow {self.name}: record {record.id}: "
                f"expected 1 row to update, found {cursor.rowcount}"
            )


def _decode_text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _printable_column(text: str) -> str:
    """Return `text` with each undecodable byte and NUL as a backslash escape."""
    data = text.encode("utf-8", "surrogateescape")

    return data.decode("utf-8", "backslashreplace").replace("\x00", "\\x00")


def _undecodable_column(fields: dict[str, Any]) -> str | None:
    """Return which column of a row contains text that is not UTF-8, or None."""
    for column, value in fields.items():
        if not isinstance(value, str):
            continue
        data = value.encode("utf-8", "surrogateescape")
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as error:
            byte = data[error.start]
            return (
                f"column {column}: not valid UTF-8 text "
                f"(byte 0x{byte:02X} at offset {error.start})"
            )

    return None
