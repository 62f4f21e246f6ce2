"""The sqlite workflow against real SQLite database files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from fleetd.config.model import WorkflowSettings
from fleetd.workflows import Record, WorkflowError, open_workflow
from fleetd.workflows.sqlite import SqliteWorkflow


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "requests.db"
    with sqlite3.connect(path) as connection:
        connection.execute(
            'CREATE TABLE "account requests" (id INTEGER PRIMARY KEY, '
            'user TEXT, status TEXT, "odd ""column""" TEXT)'
        )
        connection.executemany(
            'INSERT INTO "account requests" VALUES (?, ?, ?, ?)',
            [
                (2, "bob", "pending", None),
                (1, "alice", "approved", None),
                (3, "carol", "approved", None),
            ],
        )
    connection.close()
    return path


def rows(path: Path) -> list[tuple]:
    connection = sqlite3.connect(path)
    try:
        return connection.execute(
            'SELECT id, user, status, "odd ""column""" FROM "account requests" '
            "ORDER BY id"
        ).fetchall()
    finally:
        connection.close()


async def test_rows_become_records(database: Path) -> None:
    workflow = SqliteWorkflow("db", database, "account requests")
    records = await workflow.records()
    assert [r.id for r in records] == ["1", "2", "3"]
    assert records[0].fields["user"] == "alice"
    assert records[0].fields["status"] == "approved"


async def test_where_filters_rows(database: Path) -> None:
    workflow = SqliteWorkflow(
        "db", database, "account requests", where="status = 'approved'"
    )
    assert [r.id for r in await workflow.records()] == ["1", "3"]


async def test_custom_id_column(database: Path) -> None:
    workflow = SqliteWorkflow("db", database, "account requests", id_column="user")
    records = await workflow.records()
    assert [r.id for r in records] == ["alice", "bob", "carol"]
    await workflow.commit(records[1], {"status": "done"})
    assert rows(database)[1] == (2, "bob", "done", None)


async def test_commit_updates_staged_columns(database: Path) -> None:
    workflow = SqliteWorkflow("db", database, "account requests")
    records = await workflow.records()
    await workflow.commit(records[2], {"status": "done", 'odd "column"': "x'; --"})
    assert rows(database) == [
        (1, "alice", "approved", None),
        (2, "bob", "pending", None),
        (3, "carol", "done", "x'; --"),
    ]


async def test_commit_unknown_column_fails(database: Path) -> None:
    workflow = SqliteWorkflow("db", database, "account requests")
    records = await workflow.records()
    with pytest.raises(WorkflowError, match="no such column"):
        await workflow.commit(records[0], {"nope": 1})
    assert rows(database)[0] == (1, "alice", "approved", None)


async def test_commit_of_deleted_row_fails(database: Path) -> None:
    workflow = SqliteWorkflow("db", database, "account requests")
    with pytest.raises(WorkflowError, match="expected 1 row to update, found 0"):
        await workflow.commit(Record(id="99"), {"status": "done"})


async def test_missing_database_fails(tmp_path: Path) -> None:
    workflow = SqliteWorkflow("db", tmp_path / "none.db", "t")
    with pytest.raises(WorkflowError, match="not found"):
        await workflow.records()


async def test_missing_table_fails(database: Path) -> None:
    workflow = SqliteWorkflow("db", database, "nope")
    with pytest.raises(WorkflowError, match="no such table"):
        await workflow.records()


async def test_null_id_is_invalid(database: Path) -> None:
    workflow = SqliteWorkflow("db", database, "account requests", id_column="status")
    with sqlite3.connect(database) as connection:
        connection.execute('UPDATE "account requests" SET status = NULL WHERE id = 2')
    connection.close()
    records = await workflow.records()
    assert records[0].invalid == "status is NULL"


async def test_open_workflow_builds_sqlite(database: Path) -> None:
    settings = WorkflowSettings(
        "db",
        "sqlite",
        {"path": str(database), "table": "account requests", "id_column": "id",
         "where": None},
    )  # fmt: skip
    workflow = open_workflow(settings)
    assert workflow.kind == "sqlite"
    assert len(await workflow.records()) == 3


async def test_blob_values_read_as_text(tmp_path: Path) -> None:
    path = tmp_path / "blobs.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE items (id BLOB, name BLOB, state TEXT)")
        connection.executemany(
            "INSERT INTO items VALUES (?, ?, ?)",
            [
                (b"alpha", "caf\u00e9".encode(), "new"),
                (b"beta", b"\x00\xff", "new"),
            ],
        )
    connection.close()
    workflow = SqliteWorkflow("db", path, "items")

    alpha, beta = await workflow.records()
    await workflow.commit(alpha, {"state": "done"})

    assert alpha.id == "alpha"
    assert alpha.fields["name"] == "caf\u00e9"
    assert alpha.invalid is None
    assert beta.id == "beta"
    assert beta.invalid == "column name: not valid UTF-8 text (byte 0xFF at offset 1)"
    with sqlite3.connect(path) as connection:
        states = connection.execute(
            "SELECT id, state FROM items ORDER BY id"
        ).fetchall()
    connection.close()
    assert states == [(b"alpha", "done"), (b"beta", "new")]
