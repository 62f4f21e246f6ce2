"""PostgreSQL store: concurrent claims and resolutions sent as batches."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
from structlog.testing import capture_logs

from fleetd.locks import (
    Done,
    LeaseLost,
    Locked,
    LockKey,
    LockManager,
    Owner,
    Transaction,
    current_owner,
    open_store,
)
from fleetd.locks.postgres import PostgresStore


def other_owner() -> Owner:
    # The same live process under another daemon instance.
    owner = current_owner()
    return Owner(owner.host, owner.pid, "other-instance", owner.started)


def key(record: str) -> LockKey:
    return LockKey("accounts", record, "mk")


@pytest.fixture
async def pg_store(pg_url: str) -> AsyncIterator[PostgresStore]:
    store = open_store(pg_url)
    assert isinstance(store, PostgresStore)
    await store.open()
    yield store
    await store.close()


async def begin(locks: LockManager, record: str) -> Transaction:
    return await locks.begin(key(record), agent="a", run_id="r", check_mark=True)


async def test_concurrent_claims_share_batches(pg_store: PostgresStore) -> None:
    locks = LockManager(pg_store, current_owner(), lease=30)
    records = [f"r{n:02d}" for n in range(20)]
    results = await asyncio.gather(
        *(begin(locks, record) for record in [*records, *records]),
        return_exceptions=True,
    )

    granted = [r for r in results if isinstance(r, Transaction)]
    refused = [r for r in results if isinstance(r, Locked)]
    assert sorted(t.key.record for t in granted) == records
    assert sorted(r.holder.key.record for r in refused) == records
    assert pg_store._claims.items == 40
    assert pg_store._claims.batches < 40
    assert len({t.grant.token for t in granted}) == 20


async def test_invalid_record_fails_alone(pg_store: PostgresStore) -> None:
    # PostgreSQL text cannot contain a NUL byte, so that claim fails and
    # rolls back its batch; the others are then claimed one by one.
    locks = LockManager(pg_store, current_owner(), lease=30)
    with capture_logs() as logs:
        results = await asyncio.gather(
            begin(locks, "alice"),
            begin(locks, "bad\x00id"),
            begin(locks, "bob"),
            return_exceptions=True,
        )

    assert isinstance(results[0], Transaction)
    assert isinstance(results[1], asyncpg.PostgresError)
    assert isinstance(results[2], Transaction)
    assert [
        e["operation"] for e in logs if e["event"] == "state_store_batch_rejected"
    ] == ["acquire"]
    assert {lock.key.record for lock in await pg_store.locks()} == {"alice", "bob"}


async def test_lost_lease_fails_alone_in_batch(
    pg_store: PostgresStore, pg_url: str
) -> None:
    locks = LockManager(pg_store, current_owner(), lease=30)
    transactions = [await begin(locks, record) for record in ("a", "b", "c")]
    connection = await asyncpg.connect(pg_url)
    try:
        await connection.execute(
            "UPDATE fleetd_locks SET token = token + 1000 WHERE record = 'b'"
        )
    finally:
        await connection.close()

    results = await asyncio.gather(
        *(transaction.commit() for transaction in transactions),
        return_exceptions=True,
    )

    assert results[0] is None
    assert isinstance(results[1], LeaseLost)
    assert results[2] is None
    assert sorted(mark.key.record for mark in await pg_store.marks()) == ["a", "c"]
    assert [lock.key.record for lock in await pg_store.locks()] == ["b"]


async def test_cancelled_claim_releases_lock(pg_store: PostgresStore) -> None:
    locks = LockManager(pg_store, current_owner(), lease=30)
    claim = asyncio.ensure_future(begin(locks, "alice"))
    await asyncio.sleep(0)  # the claim is queued, its batch not yet sent
    claim.cancel()
    with pytest.raises(asyncio.CancelledError):
        await claim

    while pg_store._tasks:
        await asyncio.wait(set(pg_store._tasks))
    assert await pg_store.locks() == []
    assert len(await pg_store.history("alice")) == 0


async def test_opposite_orders_grant_each_once(pg_url: str) -> None:
    # Two stores (two processes' pools) claim the same records, in
    # opposite orders, in batches: each record is granted once, and no
    # batch waits for a deadlock to be detected and retried.
    stores = [open_store(pg_url), open_store(pg_url)]
    for store in stores:
        await store.open()
    try:
        first = LockManager(stores[0], current_owner(), lease=30)
        second = LockManager(stores[1], other_owner(), lease=30)

        async def claim_all(locks: LockManager, order: list[str]) -> list[str]:
            granted: list[Transaction] = []
            for start in range(0, len(order), 20):
                results = await asyncio.gather(
                    *(begin(locks, record) for record in order[start : start + 20]),
                    return_exceptions=True,
                )
                for result in results:
                    if isinstance(result, Transaction):
                        granted.append(result)
                    else:
                        assert isinstance(result, (Locked, Done)), repr(result)
            await asyncio.gather(*(transaction.commit() for transaction in granted))

            return [transaction.key.record for transaction in granted]

        with capture_logs() as logs:
            # Each round meets in the middle once; more rounds, more meetings.
            for round_ in range(5):
                records = [f"{round_}-{n:03d}" for n in range(100)]
                mine, theirs = await asyncio.gather(
                    claim_all(first, records), claim_all(second, records[::-1])
                )
                assert sorted(mine + theirs) == records
    finally:
        for store in stores:
            await store.close()

    assert [e for e in logs if e["event"] == "state_store_retry"] == []
