"""SQLite store: URLs, schema, group commit, busy and full databases."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from fleetd.locks import (
    LockKey,
    LockManager,
    SchemaError,
    current_owner,
    open_store,
    sqlite_writer,
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


async def test_result_waits_for_wal_sync(
    sqlite_store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Statements run with synchronous=NORMAL; a result is delivered only
    # after fdatasync of the WAL file returned, as synchronous=FULL would.
    synced: list[str] = []
    release = threading.Event()
    real_fdatasync = os.fdatasync

    def fdatasync(fd: int) -> None:
        release.wait(5)
        real_fdatasync(fd)
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))

    monkeypatch.setattr(sqlite_writer.os, "fdatasync", fdatasync)
    locks = LockManager(sqlite_store, current_owner(), lease=30)
    begin = asyncio.ensure_future(
        locks.begin(LockKey("w", "r", "mk"), agent="a", run_id="r", check_mark=True)
    )
    await asyncio.sleep(0.2)
    assert not begin.done()
    # The claim is committed, so another connection reads it, but not reported yet.
    reader = sqlite3.connect(sqlite_store.path)
    assert reader.execute("SELECT count(*) FROM locks").fetchone() == (1,)
    reader.close()
    release.set()
    transaction = await asyncio.wait_for(begin, 5)
    assert transaction.grant.token == 1
    assert synced[0] == str(Path(sqlite_store.path).resolve()) + "-wal"
    assert sqlite_store.statistics().syncs >= 1


async def test_writer_connection_settings(sqlite_store: SQLiteStore) -> None:
    def settings(connection: sqlite3.Connection) -> tuple[int, int, int]:
        return tuple(  # type: ignore[return-value]
            connection.execute(f"PRAGMA {name}").fetchone()[0]
            for name in ("synchronous", "wal_autocheckpoint", "busy_timeout")
        )

    assert await sqlite_store._writer.submit(settings) == (1, 0, 0)


async def test_wal_checkpointed_in_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_writer, "CHECKPOINT_COMMITS", 4)
    store = SQLiteStore(tmp_path / "state.db")
    await store.open()
    try:
        locks = LockManager(store, current_owner(), lease=30)
        for batch in range(20):
            transactions = await asyncio.gather(
                *(
                    locks.begin(
                        LockKey("w", f"{batch}-{n}", "mk"),
                        agent="a",
                        run_id="r",
                        check_mark=True,
                    )
                    for n in range(10)
                )
            )
            await asyncio.gather(*(t.commit() for t in transactions))
        assert store.statistics().checkpoints >= 1
        # The WAL starts over after a checkpoint instead of growing.
        assert (tmp_path / "state.db-wal").stat().st_size < 256 * 1024
        assert len(await store.marks()) == 200
    finally:
        await store.close()
    reader = sqlite3.connect(tmp_path / "state.db")
    assert reader.execute("SELECT count(*) FROM marks").fetchone() == (200,)
    reader.close()


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


async def test_rollback_by_one_operation_spares_its_batch(
    sqlite_store: SQLiteStore,
) -> None:
    # A trigger's RAISE(ROLLBACK) ends the whole transaction, savepoints
    # included: the other operations of the batch must run again.
    def prepare(connection: sqlite3.Connection) -> None:
        connection.execute("CREATE TABLE guarded (value INTEGER)")
        connection.execute(
            "CREATE TRIGGER reject BEFORE INSERT ON guarded WHEN NEW.value < 0"
            " BEGIN SELECT RAISE(ROLLBACK, 'negative'); END"
        )

    await sqlite_store._writer.submit(prepare)

    def insert(value: int) -> Callable[[sqlite3.Connection], int]:
        def operation(connection: sqlite3.Connection) -> int:
            connection.execute("INSERT INTO guarded VALUES (?)", (value,))
            return value

        return operation

    results = await asyncio.gather(
        *(sqlite_store._writer.submit(insert(value)) for value in (1, -1, 2, 3)),
        return_exceptions=True,
    )
    assert results[0] == 1
    assert isinstance(results[1], sqlite3.IntegrityError)
    assert results[2:] == [2, 3]
    rows = sqlite_store._writer.read(
        lambda connection: connection.execute(
            "SELECT value FROM guarded ORDER BY value"
        ).fetchall()
    )
    assert rows == [(1,), (2,), (3,)]


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


async def test_symlinked_state_syncs_real_wal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SQLite keeps the WAL beside the symlink's target; a leftover file
    # beside the symlink must not be the one synced.
    (tmp_path / "real").mkdir()
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "state.db").symlink_to(tmp_path / "real" / "state.db")
    (tmp_path / "links" / "state.db-wal").write_bytes(b"")
    synced: list[str] = []
    real_fdatasync = os.fdatasync

    def fdatasync(fd: int) -> None:
        real_fdatasync(fd)
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))

    monkeypatch.setattr(sqlite_writer.os, "fdatasync", fdatasync)
    store = SQLiteStore(tmp_path / "links" / "state.db")
    await store.open()
    try:
        locks = LockManager(store, current_owner(), lease=30)
        await locks.begin(
            LockKey("w", "r", "mk"), agent="a", run_id="r", check_mark=True
        )
    finally:
        await store.close()
    assert synced
    assert set(synced) == {str(tmp_path / "real" / "state.db-wal")}


def chattr(flag: str, path: Path) -> bool:
    """Set or clear a file attribute; False when the file system refuses."""
    result = subprocess.run(
        ["chattr", flag, str(path)], check=False, capture_output=True
    )
    return result.returncode == 0


async def test_read_only_state_file_fails_open(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SQLiteStore(path)
    await store.open()
    await store.close()
    path.chmod(0o444)
    # Root may write a mode 444 file; an immutable one it may not.
    immutable = os.access(path, os.W_OK)
    if immutable and not chattr("+i", path):
        pytest.skip("cannot make the state file read-only for root")
    try:
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            await SQLiteStore(path).open()
    finally:
        if immutable:
            chattr("-i", path)


async def test_replaced_wal_fails_writes(sqlite_store: SQLiteStore) -> None:
    # Commits that land in a WAL no longer at the file's path would be
    # lost at the next start, so none may be reported durable.
    locks = LockManager(sqlite_store, current_owner(), lease=30)
    await locks.begin(LockKey("w", "a", "mk"), agent="a", run_id="a", check_mark=True)
    wal = Path(sqlite_store.path + "-wal")
    wal.rename(wal.with_name("moved-wal"))
    wal.write_bytes(b"")
    with capture_logs() as logs, pytest.raises(OSError, match="removed or replaced"):
        await locks.begin(
            LockKey("w", "b", "mk"), agent="a", run_id="b", check_mark=True
        )
    assert [e["event"] for e in logs] == ["state_store_sync_failed"]


async def test_busy_retries_count_from_one_each_time(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SQLiteStore(path, busy_timeout=0.05)
    await store.open()
    try:
        locks = LockManager(store, current_owner(), lease=30)
        for round_number in range(2):
            blocker = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False
            )
            blocker.execute("BEGIN IMMEDIATE")
            timer = threading.Timer(0.4, blocker.execute, ("COMMIT",))
            timer.start()
            with capture_logs() as logs:
                await locks.begin(
                    LockKey("w", str(round_number), "mk"),
                    agent="a",
                    run_id="r",
                    check_mark=True,
                )
            timer.join()
            blocker.close()
            attempts = [e["attempt"] for e in logs if e["event"] == "state_store_retry"]
            assert attempts[0] == 1
    finally:
        await store.close()
