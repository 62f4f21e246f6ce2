"""The postgresql workflow against a real PostgreSQL server."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
import structlog
from structlog.testing import LogCapture

from fleetd.config.model import WorkflowSettings
from fleetd.workflows import Record, WorkflowError, open_workflow
from fleetd.workflows.postgresql import PostgresqlWorkflow
from fleetd.workflows.postgresql_sql import (
    connection_identity,
    split_table_name,
    to_value,
)

pytestmark = pytest.mark.postgres

TABLE = '"account requests"'


@dataclass
class Database:
    """A fresh schema on the test server with one table of requests."""

    dsn: str
    schema: str

    @property
    def table(self) -> str:
        """The table name as the workflow's `table` option writes it."""
        return f"{self.schema}.account requests"

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        connection = await asyncpg.connect(self.dsn)
        try:
            await connection.execute(f"SET search_path = {self.schema}")
            return await connection.fetch(query, *args)
        finally:
            await connection.close()

    async def execute(self, statement: str) -> None:
        connection = await asyncpg.connect(self.dsn)
        try:
            await connection.execute(f"SET search_path = {self.schema}")
            await connection.execute(statement)
        finally:
            await connection.close()

    def workflow(self, **options: Any) -> PostgresqlWorkflow:
        return PostgresqlWorkflow("requests", self.dsn, self.table, **options)


@pytest.fixture
def pg_dsn() -> str:
    dsn = os.environ.get("FLEETD_TEST_PG_DSN")
    if not dsn:
        pytest.skip("FLEETD_TEST_PG_DSN is not set: no PostgreSQL server to test")
    return dsn


@pytest.fixture
def database(pg_dsn: str) -> Iterator[Database]:
    schema = f"fleetd_wf_{os.getpid()}_{secrets.token_hex(4)}"
    created = Database(pg_dsn, schema)
    asyncio.run(_create(created))
    try:
        yield created
    finally:
        asyncio.run(_drop(pg_dsn, schema))


async def _create(database: Database) -> None:
    connection = await asyncpg.connect(database.dsn)
    try:
        await connection.execute(f"CREATE SCHEMA {database.schema}")
        await connection.execute(f"SET search_path = {database.schema}")
        await connection.execute(
            f"CREATE TABLE {TABLE} (id integer PRIMARY KEY, login text,"
            " status text, quota numeric(10, 2), seats numeric, due date,"
            " created timestamptz, active boolean, extra jsonb, tags text[],"
            ' counts integer[], token uuid, "odd ""column""" text)'
        )
        await connection.execute(
            f"INSERT INTO {TABLE} VALUES"
            " (2, 'bob', 'pending', 1.50, 3, '2026-01-31',"
            " '2026-01-31 12:00:00+00', false, '{\"shell\": \"zsh\"}',"
            " '{a,b}', '{1,2}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', NULL),"
            " (1, 'alice', 'approved', NULL, NULL, NULL, NULL, true, NULL,"
            " NULL, NULL, NULL, NULL),"
            " (3, 'carol', 'approved', NULL, NULL, NULL, NULL, NULL, NULL,"
            " NULL, NULL, NULL, NULL)"
        )
    finally:
        await connection.close()


async def _drop(dsn: str, schema: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(f"DROP SCHEMA {schema} CASCADE")
    finally:
        await connection.close()


@pytest.fixture
def events() -> Iterator[list[dict[str, Any]]]:
    capture = LogCapture()
    old = structlog.get_config()
    structlog.configure(processors=[capture], cache_logger_on_first_use=False)
    try:
        yield capture.entries
    finally:
        structlog.configure(**old)


@pytest.fixture
async def workflow(database: Database) -> AsyncIterator[PostgresqlWorkflow]:
    opened = database.workflow()
    yield opened
    await opened.aclose()


async def test_rows_become_records(workflow: PostgresqlWorkflow) -> None:
    records = await workflow.records()
    assert [r.id for r in records] == ["1", "2", "3"]
    assert records[0].fields["login"] == "alice"
    assert records[0].fields["id"] == 1
    assert records[0].fields["active"] == 1
    assert records[0].fields["quota"] is None


async def test_values_become_json_values(workflow: PostgresqlWorkflow) -> None:
    bob = (await workflow.records())[1].fields
    assert bob["quota"] == "1.50"
    assert bob["seats"] == 3
    assert bob["due"] == "2026-01-31"
    assert bob["created"] == "2026-01-31T12:00:00+00:00"
    assert bob["active"] == 0
    assert bob["extra"] == {"shell": "zsh"}
    assert bob["tags"] == ["a", "b"]
    assert bob["counts"] == [1, 2]
    assert bob["token"] == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"


def test_to_value_of_other_types() -> None:
    import datetime
    import decimal

    assert to_value(decimal.Decimal("NaN")) == "NaN"
    assert to_value(decimal.Decimal(12)) == 12
    assert to_value(decimal.Decimal("1E+2")) == 100
    assert to_value(b"\x00\xff") == "\\x00ff"
    assert to_value(datetime.timedelta(hours=1)) == 3600
    assert to_value(datetime.time(8, 30)) == "08:30:00"
    assert to_value(float("inf")) == "inf"
    assert to_value(asyncpg.Range(1, 5)) == {
        "lower": 1,
        "upper": 5,
        "lower_inc": 1,
        "upper_inc": 0,
    }


async def test_where_filters_rows(database: Database) -> None:
    workflow = database.workflow(where="status = 'approved'")
    try:
        assert [r.id for r in await workflow.records()] == ["1", "3"]
    finally:
        await workflow.aclose()


async def test_bad_where_fails_listing(database: Database) -> None:
    workflow = database.workflow(where="no_such_column = 1")
    try:
        with pytest.raises(WorkflowError, match="cannot list"):
            await workflow.records()
    finally:
        await workflow.aclose()


async def test_custom_id_column(database: Database) -> None:
    workflow = database.workflow(id_column="login")
    try:
        records = await workflow.records()
        assert [r.id for r in records] == ["alice", "bob", "carol"]
        await workflow.commit(records[1], {"status": "done"})
    finally:
        await workflow.aclose()
    [row] = await database.fetch(f"SELECT status FROM {TABLE} WHERE id = 2")
    assert row["status"] == "done"


async def test_null_id_is_invalid_record(database: Database) -> None:
    workflow = database.workflow(id_column="quota")
    try:
        records = await workflow.records()
    finally:
        await workflow.aclose()
    assert records[0] == Record(id="1.50", fields=records[0].fields)
    assert records[1].invalid == "quota is NULL"
    assert records[2].invalid == "quota is NULL"


async def test_commit_updates_staged_columns(
    database: Database, workflow: PostgresqlWorkflow
) -> None:
    records = await workflow.records()
    await workflow.commit(
        records[2],
        {
            "status": "done",
            "quota": "2.5",
            "seats": 7,
            "due": "2026-02-01",
            "active": "",
            "extra": {"shell": "bash", "groups": ["a"]},
            "tags": ["x", "y z"],
            "counts": ["3", 4],
            'odd "column"': "x'; --",
        },
    )
    [row] = await database.fetch(f"SELECT * FROM {TABLE} WHERE id = 3")
    assert row["status"] == "done"
    assert str(row["quota"]) == "2.50"
    assert row["seats"] == 7
    assert str(row["due"]) == "2026-02-01"
    assert row["active"] is False
    assert row["extra"] == '{"shell": "bash", "groups": ["a"]}'
    assert row["tags"] == ["x", "y z"]
    assert row["counts"] == [3, 4]
    assert row['odd "column"'] == "x'; --"
    others = await database.fetch(f"SELECT status FROM {TABLE} WHERE id <> 3")
    assert sorted(r["status"] for r in others) == ["approved", "pending"]


async def test_commit_writes_null_and_numbers_as_text(
    database: Database, workflow: PostgresqlWorkflow
) -> None:
    records = await workflow.records()
    await workflow.commit(
        records[1], {"status": 5, "seats": None, "active": 1, "login": 2.0}
    )
    [row] = await database.fetch(f"SELECT * FROM {TABLE} WHERE id = 2")
    assert row["status"] == "5"
    assert row["seats"] is None
    assert row["active"] is True
    assert row["login"] == "2"


async def test_commit_unknown_column_fails(workflow: PostgresqlWorkflow) -> None:
    records = await workflow.records()
    with pytest.raises(WorkflowError, match="no column nope"):
        await workflow.commit(records[0], {"nope": 1})


async def test_commit_value_of_wrong_type_fails(
    database: Database, workflow: PostgresqlWorkflow
) -> None:
    records = await workflow.records()
    with pytest.raises(WorkflowError, match='UPDATE failed: .*numeric: "many"'):
        await workflow.commit(records[0], {"status": "x", "seats": "many"})
    [row] = await database.fetch(f"SELECT status FROM {TABLE} WHERE id = 1")
    assert row["status"] == "approved"


async def test_commit_of_deleted_row_fails(
    database: Database, workflow: PostgresqlWorkflow
) -> None:
    records = await workflow.records()
    await database.execute(f"DELETE FROM {TABLE} WHERE id = 1")
    with pytest.raises(WorkflowError, match="expected 1 row to update, found 0"):
        await workflow.commit(records[0], {"status": "done"})


async def test_missing_table_fails(database: Database) -> None:
    workflow = PostgresqlWorkflow("requests", database.dsn, f"{database.schema}.nope")
    try:
        with pytest.raises(WorkflowError, match="table .*nope not found"):
            await workflow.records()
    finally:
        await workflow.aclose()


async def test_quoted_table_name_with_dot(database: Database) -> None:
    await database.execute('CREATE TABLE "v1.Tickets" (key text PRIMARY KEY)')
    await database.execute("""INSERT INTO "v1.Tickets" VALUES ('t-1')""")
    workflow = PostgresqlWorkflow(
        "tickets",
        database.dsn,
        f'{database.schema}."v1.Tickets"',
        id_column="key",
    )
    try:
        assert [r.id for r in await workflow.records()] == ["t-1"]
    finally:
        await workflow.aclose()


async def test_unqualified_table_follows_search_path(database: Database) -> None:
    dsn = f"{database.dsn}?search_path={database.schema}"
    workflow = PostgresqlWorkflow("requests", dsn, "account requests")
    try:
        records = await workflow.records()
        await workflow.commit(records[0], {"status": "done"})
    finally:
        await workflow.aclose()
    [row] = await database.fetch(f"SELECT status FROM {TABLE} WHERE id = 1")
    assert row["status"] == "done"


async def test_listing_retries_after_connection_loss(
    database: Database, events: list[dict[str, Any]]
) -> None:
    name = f"fleetd_wf_{secrets.token_hex(4)}"
    # Each row sleeps, so the listing is still running when its connection
    # is terminated.
    workflow = PostgresqlWorkflow(
        "requests",
        f"{database.dsn}?application_name={name}",
        database.table,
        where="pg_sleep(0.2) IS NOT NULL",
    )
    try:
        listing = asyncio.ensure_future(workflow.records())
        await asyncio.sleep(0.3)
        [killed] = await database.fetch(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = $1",
            name,
        )
        assert killed[0] == 1
        assert len(await listing) == 3
    finally:
        await workflow.aclose()
    assert workflow.retries >= 1
    retries = [e for e in events if e["event"] == "workflow_retry"]
    assert retries
    assert retries[0]["workflow"] == "requests"
    assert retries[0]["operation"] == "list"


async def test_unreachable_server_fails_after_retries() -> None:
    # Nothing listens on port 1 of the loopback address.
    workflow = PostgresqlWorkflow(
        "requests", "postgresql://postgres@127.0.0.1:1/test", "t", retry_for=0.5
    )
    with pytest.raises(WorkflowError, match="list failed after .* attempts"):
        await workflow.records()
    assert workflow.retries >= 1
    await workflow.aclose()


def test_open_workflow_builds_postgresql(pg_dsn: str) -> None:
    settings = WorkflowSettings(
        "requests",
        "postgresql",
        {"dsn": pg_dsn, "table": "s.t", "id_column": None, "where": "x > 1"},
    )
    workflow = open_workflow(settings)
    assert isinstance(workflow, PostgresqlWorkflow)
    assert workflow.kind == "postgresql"
    assert (workflow.schema, workflow.relation) == ("s", "t")
    assert workflow.id_column == "id"
    assert workflow.where == "x > 1"


class FakeStore:
    def __init__(self, url: str) -> None:
        self.url = url


@pytest.mark.parametrize(
    ("store_url", "shared"),
    [
        ("postgresql://postgres@127.0.0.1/test", True),
        ("postgres://postgres@127.0.0.1:5432/test?search_path=fleet", True),
        ("postgresql://postgres:secret@127.0.0.1/test?sslmode=disable", True),
        ("postgresql://127.0.0.1/test?user=postgres", True),
        ("postgresql://postgres@127.0.0.1:5433/test", False),
        ("postgresql://postgres@127.0.0.1/other", False),
        ("postgresql://fleetd@127.0.0.1/test", False),
        ("postgresql://postgres@localhost/test", False),
        ("sqlite:////var/lib/fleetd/state.db", False),
    ],
)
def test_shares_store_compares_server_database_user(
    store_url: str, shared: bool
) -> None:
    workflow = PostgresqlWorkflow(
        "requests", "postgresql://postgres@127.0.0.1/test", "t"
    )
    assert workflow.shares_store(FakeStore(store_url)) is shared


def test_connection_identity_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGUSER", "ops")
    monkeypatch.delenv("PGHOST", raising=False)
    monkeypatch.delenv("PGPORT", raising=False)
    monkeypatch.delenv("PGDATABASE", raising=False)
    assert connection_identity("postgresql://") == ("localhost", 5432, "ops", "ops")
    assert connection_identity("postgresql://[::1]:6543/db") == (
        "::1",
        6543,
        "db",
        "ops",
    )
    assert connection_identity("postgresql:///db?host=%2Fvar%2Frun%2Fpostgresql") == (
        "/var/run/postgresql",
        5432,
        "db",
        "ops",
    )


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("tickets", (None, "tickets")),
        ("crm.Tickets", ("crm", "Tickets")),
        ('"crm.v1"."odd ""name"""', ("crm.v1", 'odd "name"')),
        ("account requests", (None, "account requests")),
    ],
)
def test_split_table_name(text: str, parts: tuple[str | None, str]) -> None:
    assert split_table_name(text) == parts


@pytest.mark.parametrize("text", ["a.b.c", '"open', '"a"b', ".a", "a."])
def test_split_table_name_rejects(text: str) -> None:
    with pytest.raises(WorkflowError, match="invalid table name"):
        split_table_name(text)


async def test_commit_retries_after_connection_loss(database: Database) -> None:
    name = f"fleetd_wf_{secrets.token_hex(4)}"
    workflow = PostgresqlWorkflow(
        "requests", f"{database.dsn}?application_name={name}", database.table
    )
    blocker = await asyncpg.connect(database.dsn)
    try:
        records = await workflow.records()
        # A row lock held elsewhere keeps the UPDATE waiting while its
        # connection is terminated.
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute(
            f"SELECT 1 FROM {database.schema}.{TABLE} WHERE id = 1 FOR UPDATE"
        )
        commit = asyncio.ensure_future(workflow.commit(records[0], {"status": "x"}))
        await asyncio.sleep(0.3)
        assert not commit.done()
        [killed] = await blocker.fetch(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = $1",
            name,
        )
        assert killed[0] == 1
        await transaction.rollback()
        await commit
    finally:
        await blocker.close()
        await workflow.aclose()
    assert workflow.retries >= 1
    [row] = await database.fetch(f"SELECT status FROM {TABLE} WHERE id = 1")
    assert row["status"] == "x"


async def test_aclose_terminates_busy_connections(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fleetd.workflows.postgresql as module

    monkeypatch.setattr(module, "CLOSE_TIMEOUT_S", 0.2)
    name = f"fleetd_wf_{secrets.token_hex(4)}"
    workflow = PostgresqlWorkflow(
        "requests", f"{database.dsn}?application_name={name}", database.table
    )
    await workflow.records()
    pool = workflow._pool
    assert pool is not None
    await pool.acquire()  # never released
    await workflow.aclose()
    assert workflow._pool is None
    assert await connections_gone(database, name)


async def connections_gone(database: Database, name: str) -> bool:
    """Wait up to 5 s for the server to drop the connections named `name`."""
    for _ in range(50):
        [left] = await database.fetch(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            name,
        )
        if left[0] == 0:
            return True
        await asyncio.sleep(0.1)

    return False
