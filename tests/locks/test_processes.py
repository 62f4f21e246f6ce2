"""Several real processes on one state store: kills, durability, races."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from fleetd.locks import LockKey, LockManager, Resolution, current_owner, open_store

KEY = LockKey("accounts", "alice", "mk")

# The `spawn` fixture: (url, mode, argument) -> a running child process.
Spawn = Callable[[str, str, str], Any]


async def test_killed_holder_recovered_as_interrupted(
    store_url: str, spawn: Spawn
) -> None:
    child = spawn(store_url, "hold", "alice")
    assert child.wait_line() == "locked"
    store = open_store(store_url)
    await store.open()
    try:
        locks = LockManager(store, current_owner(), lease=30)
        # The holder lives: its lease is valid and its pid runs.
        assert await locks.recover_abandoned() == []
        child.kill()
        recovered = await locks.recover_abandoned()
        assert [lock.owner.pid for lock in recovered] == [child.process.pid]
        assert await locks.recover_abandoned() == []
        [entry] = await store.history("alice")
        assert entry.resolution is Resolution.ERROR
        assert entry.reason == "interrupted"
        assert entry.owner == str(recovered[0].owner)
        [mark] = await store.marks(errors_only=True)
        assert mark.key == KEY
        assert await store.locks() == []
    finally:
        await store.close()


async def test_commit_survives_sigkill(store_url: str, spawn: Spawn) -> None:
    child = spawn(store_url, "commit", "alice")
    assert child.wait_line() == "committed"
    child.kill()
    store = open_store(store_url)
    await store.open()
    try:
        [entry] = await store.history("alice")
        assert entry.resolution is Resolution.COMMIT
        [mark] = await store.marks()
        assert mark.key == KEY
        assert await store.locks() == []
    finally:
        await store.close()


@pytest.mark.slow
async def test_four_processes_commit_each_record_once(
    store_url: str, spawn: Spawn
) -> None:
    # PostgreSQL is the fleet store: it gets ten times the records.
    count = 200 if store_url.startswith("sqlite") else 2000
    store = open_store(store_url)
    await store.open()  # create the schema before the race starts
    try:
        started = [spawn(store_url, "race", str(count)) for _ in range(4)]
        for child in started:
            assert child.wait_line() == "ready"
        for child in started:
            child.release()
        committed = [int(child.finish(timeout=100)[0]) for child in started]
        assert sum(committed) == count, committed
        # The processes overlapped: more than one of them won records.
        assert sum(1 for n in committed if n) >= 2, committed
        marks = await store.marks()
        assert len({mark.key for mark in marks}) == count
        assert {mark.resolution for mark in marks} == {Resolution.COMMIT}
        # Every commit writes its mark and one history row in one
        # transaction, so as many rows as marked records means one each.
        assert await store.counts() == {"a": {"committed": count}}
        history = await store.history("r00000")
        assert [entry.resolution for entry in history] == [Resolution.COMMIT]
        assert await store.locks() == []
    finally:
        await store.close()
