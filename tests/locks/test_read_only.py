"""State stores opened read-only, for commands that only read them."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from fleetd.locks import LockKey, LockManager, current_owner, open_store
from fleetd.locks.common import SchemaError
from fleetd.locks.sqlite import SQLiteStore
from tests.locks.test_sqlite import chattr

KEY = LockKey("accounts", "alice", "mk")


async def fill(url: str) -> None:
    """Commit one record and leave another locked."""
    store = open_store(url)
    await store.open()
    try:
        locks = LockManager(store, current_owner(), lease=30)
        transaction = await locks.begin(KEY, agent="a", run_id="r1", check_mark=True)
        await transaction.commit()
        await locks.begin(
            LockKey("accounts", "bob", "mk"), agent="a", run_id="r2", check_mark=True
        )
    finally:
        await store.close()


async def test_read_only_store_reads(store_url: str) -> None:
    await fill(store_url)
    store = open_store(store_url)
    await store.open(read_only=True)
    try:
        locks = await store.locks()
        marks = await store.marks()
        history = await store.history("alice")
        counts = await store.counts()
    finally:
        await store.close()

    assert [lock.key.record for lock in locks] == ["bob"]
    assert [mark.key.record for mark in marks] == ["alice"]
    assert [entry.run_id for entry in history] == ["r1"]
    assert counts == {"a": {"committed": 1}}


async def test_read_only_store_needs_schema(store_url: str, tmp_path: Path) -> None:
    if store_url.startswith("sqlite"):
        (tmp_path / "state.db").write_bytes(b"")  # an empty SQLite database
    store = open_store(store_url)
    with pytest.raises(SchemaError, match="open it once with write access"):
        await store.open(read_only=True)


async def test_read_only_sqlite_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    await fill(f"sqlite:///{path}")
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    store = SQLiteStore(path)
    await store.open(read_only=True)
    try:
        assert len(await store.locks()) == 1
    finally:
        await store.close()

    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


async def test_read_only_sqlite_on_immutable_folder(tmp_path: Path) -> None:
    # As on a read-only mount: SQLite cannot create the WAL's files there,
    # and the usual open fails, even for root.
    folder = tmp_path / "state"
    folder.mkdir()
    path = folder / "state.db"
    await fill(f"sqlite:///{path}")
    if not chattr("+i", folder):
        pytest.skip("cannot make a folder immutable on this file system")
    try:
        with pytest.raises(Exception, match="unable to open|readonly"):
            await SQLiteStore(path).open()
        store = SQLiteStore(path)
        await store.open(read_only=True)
        try:
            locks = await store.locks()
        finally:
            await store.close()
    finally:
        chattr("-i", folder)

    assert [lock.key.record for lock in locks] == ["bob"]
