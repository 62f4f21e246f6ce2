"""PostgreSQL store: schema migration, atomic UPDATE with the commit, outages."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest
from structlog.testing import capture_logs

from fleetd.locks import (
    LeaseLost,
    LockKey,
    LockManager,
    Resolution,
    SchemaError,
    current_owner,
    open_store,
    upgrade,
)
from fleetd.locks.postgres import PostgresStore
from fleetd.locks.postgres_schema import SCHEMA_VERSION

KEY = LockKey("accounts", "alice", "mk")

Spawn = Callable[[str, str, str], Any]


@pytest.fixture
async def pg_store(pg_url: str) -> AsyncIterator[PostgresStore]:
    store = open_store(pg_url)
    assert isinstance(store, PostgresStore)
    await store.open()
    yield store
    await store.close()


@pytest.fixture
async def accounts(pg_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A workflow table in the state store's schema, with one row "alice"."""
    connection = await asyncpg.connect(pg_url)
    await connection.execute("CREATE TABLE accounts (id text PRIMARY KEY, state text)")
    await connection.execute("INSERT INTO accounts VALUES ('alice', 'new')")
    yield connection
    await connection.close()


def update_state(changes: dict[str, Any]) -> Callable[[Any], Any]:
    async def update(connection: asyncpg.Connection) -> None:
        await connection.execute(
            "UPDATE accounts SET state = $1 WHERE id = 'alice'", changes["state"]
        )

    return update


async def test_concurrent_opens_migrate_once(pg_url: str) -> None:
    stores = [open_store(pg_url) for _ in range(4)]
    with capture_logs() as logs:
        await asyncio.gather(*(store.open() for store in stores))
    for store in stores:
        await store.close()
    assert [e["version"] for e in logs if e["event"] == "state_store_migrated"] == [
        *range(1, SCHEMA_VERSION + 1)
    ]
    assert await upgrade(pg_url) == SCHEMA_VERSION


async def test_newer_schema_rejected(pg_url: str) -> None:
    assert await upgrade(pg_url) == SCHEMA_VERSION
    connection = await asyncpg.connect(pg_url)
    await connection.execute("UPDATE fleetd_schema SET version = 99")
    await connection.close()
    with pytest.raises(SchemaError, match="version 99 is newer"):
        await open_store(pg_url).open()


async def test_update_commits_with_resolution(
    pg_store: PostgresStore, accounts: asyncpg.Connection
) -> None:
    locks = LockManager(pg_store, current_owner(), lease=30)
    transaction = await locks.begin(KEY, agent="a", run_id="r1", check_mark=True)
    transaction.stage("state", "active")
    await transaction.commit(in_transaction=update_state(transaction.staged))
    state = await accounts.fetchval("SELECT state FROM accounts WHERE id = 'alice'")
    assert state == "active"
    [mark] = await pg_store.marks()
    assert mark.resolution is Resolution.COMMIT


async def test_failure_after_update_writes_neither(
    pg_store: PostgresStore, accounts: asyncpg.Connection
) -> None:
    locks = LockManager(pg_store, current_owner(), lease=30)
    transaction = await locks.begin(KEY, agent="a", run_id="r1", check_mark=True)

    async def update_then_fail(connection: asyncpg.Connection) -> None:
        await update_state({"state": "active"})(connection)
        raise RuntimeError("failed after the UPDATE")

    with pytest.raises(RuntimeError):
        await transaction.commit(in_transaction=update_then_fail)
    state = await accounts.fetchval("SELECT state FROM accounts WHERE id = 'alice'")
    assert state == "new"
    assert await pg_store.marks() == []
    assert await pg_store.history("alice") == []
    # The lock is still held, so the run can still resolve.
    await transaction.rollback(reason="commit failed")
    assert [h.resolution for h in await pg_store.history("alice")] == [
        Resolution.ROLLBACK
    ]


async def test_crash_after_update_writes_neither(
    pg_url: str,
    pg_store: PostgresStore,
    accounts: asyncpg.Connection,
    spawn: Spawn,
) -> None:
    child = spawn(pg_url, "update-crash", "alice")
    assert child.wait_line() == "updated"
    assert child.process.wait(10) == -signal.SIGKILL
    # The server detects the closed connection and rolls its transaction back.
    for _ in range(100):
        busy = await accounts.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in%'"
            " AND query LIKE 'UPDATE accounts%'"
        )
        if not busy:
            break
        await asyncio.sleep(0.05)
    state = await accounts.fetchval("SELECT state FROM accounts WHERE id = 'alice'")
    assert state == "new"
    assert await pg_store.marks() == []
    assert await pg_store.history("alice") == []
    locks = LockManager(pg_store, current_owner(), lease=30)
    recovered = await locks.recover_abandoned()
    assert [lock.owner.pid for lock in recovered] == [child.process.pid]
    [entry] = await pg_store.history("alice")
    assert (entry.resolution, entry.reason) == (Resolution.ERROR, "interrupted")
    state = await accounts.fetchval("SELECT state FROM accounts WHERE id = 'alice'")
    assert state == "new"


async def test_lost_lease_skips_update(
    pg_store: PostgresStore, accounts: asyncpg.Connection
) -> None:
    locks = LockManager(pg_store, current_owner(), lease=0.2)
    transaction = await locks.begin(KEY, agent="a", run_id="r1", check_mark=True)
    await asyncio.sleep(0.4)
    with pytest.raises(LeaseLost):
        await transaction.commit(in_transaction=update_state({"state": "late"}))
    state = await accounts.fetchval("SELECT state FROM accounts WHERE id = 'alice'")
    assert state == "new"


async def test_lease_uses_database_clock(pg_store: PostgresStore) -> None:
    locks = LockManager(pg_store, current_owner(), lease=30)
    transaction = await locks.begin(KEY, agent="a", run_id="r1", check_mark=True)
    connection = await asyncpg.connect(pg_store.url)
    now = await connection.fetchval("SELECT extract(epoch from now())::float8")
    await connection.close()
    assert now + 28 < transaction.grant.expires < now + 32


async def _terminate_backends(dsn: str, application: str, stop: asyncio.Event) -> int:
    """Cut the connections named `application` every 300 ms until `stop`."""
    admin = await asyncpg.connect(dsn)
    terminated = 0
    try:
        while not stop.is_set():
            terminated += await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = $1",
                application,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.3)
    finally:
        await admin.close()

    return terminated


@pytest.mark.slow
async def test_connection_loss_during_race(pg_url: str, spawn: Spawn) -> None:
    # Every connection of the racing processes is cut again and again, as a
    # server restart would: each record is still committed exactly once.
    count = 200
    application = f"fleetd_outage_{id(spawn)}"
    url = f"{pg_url}&application_name={application}"
    store = open_store(pg_url)
    await store.open()
    try:
        started = [spawn(url, "race", str(count)) for _ in range(4)]
        for child in started:
            assert child.wait_line() == "ready"
        stop = asyncio.Event()
        cutter = asyncio.ensure_future(_terminate_backends(pg_url, application, stop))
        for child in started:
            child.release()
        results = await asyncio.gather(
            *(asyncio.to_thread(child.finish, 100) for child in started)
        )
        stop.set()
        terminated = await cutter
        assert terminated > 0
        committed = [int(out) for out, _ in results]
        assert sum(committed) == count, committed
        assert any("state_store_retry" in err for _, err in results)
        marks = await store.marks()
        assert len({mark.key for mark in marks}) == count
        assert await store.counts() == {"a": {"committed": count}}
        assert await store.locks() == []
    finally:
        await store.close()
