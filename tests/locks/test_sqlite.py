"""SQLite store: URLs, schema, group commit, busy and full databases."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from fleetd.locks import (
    LockKey,
    LockManager,
    SchemaError,
    current_owner,
    open_store,
    upgrade,
)
from fleetd.locks.sqlite import SQLiteStore
from fleetd.locks.sqlite_writer import is_transient
from fleetd.locks.stores import sqlite_path


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:////var/lib/fleetd/state.db", "/var/lib/fleetd/state.db"),
        ("sqlite:///rel/state.db", "rel/state.db"),
        ("/srv/state.db", "/srv/state.db"),
        ("state.db", "state.db"),
    ],
)
def test_sqlite_url_path(url: str, path: str) -> None:
    assert sqlite_path(url) == Path(path)


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", ":memory:"])
def test_sqlite_url_invalid(url: str) -> None:
    with pytest.raises(ValueError):
        open_store(url)


def test_unknown_scheme_rejected() -> None:
    with pytest.raises(ValueError, match="unsupported state URL scheme 'mysql'"):
        open_store("mysql://db/fleetd")


def test_postgres_url_opens_postgres_store() -> None:
    store = open_store("postgresql://fleetd@db.invalid/fleetd")
    assert type(store).__name__ == "PostgresStore"


async def test_wal_and_full_sync(sqlite_store: SQLiteStore) -> None:
    connection = sqlite3.connect(sqlite_store.path)
    try:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        version = connection.execute("SELECT version FROM schema_version").fetchall()
        assert version == [(1,)]
    finally:
        connection.close()


async def test_writer_uses_full_sync(sqlite_store: SQLiteStore) -> None:
    def synchronous(connection: sqlite3.Connection) -> int:
        return connection.execute("PRAGMA synchronous").fetchone()[0]

    assert await sqlite_store._writer.submit(synchronous) == 2  # FULL


async def test_newer_schema_rejected(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SQLiteStore(path)
    await store.open()
    await store.close()
    connection = sqlite3.connect(path)
    connection.execute("UPDATE schema_version SET version = 99")
    connection.commit()
    connection.close()
    with pytest.raises(SchemaError, match="version 99 is newer"):
        await SQLiteStore(path).open()


async def test_upgrade_creates_schema(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "state.db"
    assert await upgrade(f"sqlite:///{path}") == 1
    assert path.exists()


async def test_concurrent_begins_share_commits(sqlite_store: SQLiteStore) -> None:
    locks = LockManager(sqlite_store, current_owner(), lease=30)
    before = sqlite_store.statistics()
    transactions = await asyncio.gather(
        *(
            locks.begin(
                LockKey("w", str(n), "mk"), agent="a", run_id=str(n), check_mark=True
            )
            for n in range(100)
        )
    )
    await asyncio.gather(*(t.commit() for t in transactions))
    after = sqlite_store.statistics()
    assert after.operations - before.operations == 200
    # Group commit: far fewer transactions (and fsyncs) than operations.
    assert after.batches - before.batches < 100
    assert len(await sqlite_store.marks()) == 100


async def test_failing_operation_spares_its_batch(sqlite_store: SQLiteStore) -> None:
    def failing(connection: sqlite3.Connection) -> None:
        connection.execute("INSERT INTO tokens (id, value) VALUES (1, 0)")

    locks = LockManager(sqlite_store, current_owner(), lease=30)
    results = await asyncio.gather(
        sqlite_store._writer.submit(failing),
        locks.begin(LockKey("w", "r", "mk"), agent="a", run_id="r", check_mark=True),
        return_exceptions=True,
    )
    assert isinstance(results[0], sqlite3.IntegrityError)
    assert len(await sqlite_store.locks()) == 1


async def test_busy_database_retried(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SQLiteStore(path, busy_timeout=0.05)
    await store.open()
    try:
        # Another process's writer holds the write lock for a while.
        blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        blocker.execute("BEGIN IMMEDIATE")
        timer = threading.Timer(0.6, blocker.execute, ("COMMIT",))
        timer.start()
        locks = LockManager(store, current_owner(), lease=30)
        with capture_logs() as logs:
            transaction = await locks.begin(
                LockKey("w", "r", "mk"), agent="a", run_id="r", check_mark=True
            )
        timer.join()
        blocker.close()
        assert transaction.grant.token == 1
        retries = [e for e in logs if e["event"] == "state_store_retry"]
        assert retries
        assert "locked" in retries[0]["error"]
        assert store.statistics().retries == len(retries)
    finally:
        await store.close()


def test_full_disk_is_transient(tmp_path: Path) -> None:
    # A page limit simulates a full disk: SQLite reports SQLITE_FULL,
    # which the writer retries like SQLITE_BUSY (see the busy test above).
    connection = sqlite3.connect(tmp_path / "full.db", isolation_level=None)
    connection.execute("CREATE TABLE t (v TEXT)")
    pages = connection.execute("PRAGMA page_count").fetchone()[0]
    connection.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(sqlite3.OperationalError) as full:
        connection.execute("INSERT INTO t VALUES (?)", ("x" * 100_000,))
    connection.close()
    assert full.value.sqlite_errorcode == sqlite3.SQLITE_FULL
    assert is_transient(full.value)


def test_constraint_error_not_transient(tmp_path: Path) -> None:
    connection = sqlite3.connect(tmp_path / "c.db", isolation_level=None)
    connection.execute("CREATE TABLE t (v TEXT PRIMARY KEY)")
    connection.execute("INSERT INTO t VALUES ('a')")
    with pytest.raises(sqlite3.IntegrityError) as duplicate:
        connection.execute("INSERT INTO t VALUES ('a')")
    connection.close()
    assert not is_transient(duplicate.value)
