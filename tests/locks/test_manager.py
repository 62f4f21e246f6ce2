"""Lock manager over each real store: grants, resolutions, leases, hooks."""

from __future__ import annotations

import asyncio
import os

import pytest
from structlog.testing import capture_logs

from fleetd.locks import (
    Done,
    LeaseLost,
    Locked,
    LockKey,
    LockManager,
    Owner,
    Resolution,
    StateStore,
    current_owner,
    open_store,
)

KEY = LockKey("accounts", "alice", "mk")


def other_owner() -> Owner:
    # The same live process under another daemon instance.
    owner = current_owner()
    return Owner(owner.host, owner.pid, "other-instance", owner.started)


async def test_grant_then_locked(store: StateStore) -> None:
    first = LockManager(store, current_owner(), lease=30)
    second = LockManager(store, other_owner(), lease=30)
    transaction = await first.begin(KEY, agent="a", run_id="r1", check_mark=True)
    with pytest.raises(Locked) as refused:
        await second.begin(KEY, agent="a", run_id="r2", check_mark=True)
    assert refused.value.holder.run_id == "r1"
    assert refused.value.holder.token == transaction.grant.token
    assert first.statistics().held == 1
    assert second.statistics().refused == 1


async def test_tokens_grow_with_every_grant(store: StateStore) -> None:
    locks = LockManager(store, current_owner(), lease=30)
    tokens = []
    for _ in range(3):
        transaction = await locks.begin(KEY, agent="a", run_id="r", check_mark=True)
        tokens.append(transaction.grant.token)
        await transaction.rollback()
    assert tokens == sorted(set(tokens))


@pytest.mark.parametrize("resolve", ["commit", "commit_with_error"])
async def test_marked_record_is_done(store: StateStore, resolve: str) -> None:
    locks = LockManager(store, current_owner(), lease=30)
    transaction = await locks.begin(KEY, agent="a", run_id="r1", check_mark=True)
    await getattr(transaction, resolve)(reason="why")
    with pytest.raises(Done) as refused:
        await locks.begin(KEY, agent="a", run_id="r2", check_mark=True)
    expected = Resolution.COMMIT if resolve == "commit" else Resolution.ERROR
    assert refused.value.mark.resolution is expected
    assert str(refused.value) == ("committed" if resolve == "commit" else "in error")


async def test_unchecked_mark_grants(store: StateStore) -> None:
    locks = LockManager(store, current_owner(), lease=30)
    null_key = LockKey("Null", "", "mk")
    transaction = await locks.begin(null_key, agent="a", run_id="r1", check_mark=False)
    await transaction.commit_with_error(reason="failed")
    again = await locks.begin(null_key, agent="a", run_id="r2", check_mark=False)
    await again.commit()
    marks = await store.marks()
    assert [m.resolution for m in marks] == [Resolution.COMMIT]


async def test_null_error_listed_in_marks(store: StateStore) -> None:
    locks = LockManager(store, current_owner(), lease=30)
    null_key = LockKey("Null", "", "mk")
    transaction = await locks.begin(null_key, agent="a", run_id="r1", check_mark=False)
    await transaction.commit_with_error(reason="cleanup failed")
    errors = await store.marks(errors_only=True)
    assert [(m.key, m.reason) for m in errors] == [(null_key, "cleanup failed")]


async def test_nul_in_reason_is_stored_escaped(store: StateStore) -> None:
    # A reason quotes program output and record values; PostgreSQL text
    # cannot hold NUL, so the resolution must not fail on one.
    locks = LockManager(store, current_owner(), lease=30)
    transaction = await locks.begin(KEY, agent="a", run_id="r1", check_mark=True)
    await transaction.commit_with_error(reason="bad\0byte")
    [entry] = await store.history(KEY.record)
    assert entry.reason == "bad\\x00byte"
    assert await store.locks() == []


async def test_rollback_leaves_record_eligible(store: StateStore) -> None:
    locks = LockManager(store, current_owner(), lease=30)
    transaction = await locks.begin(KEY, agent="a", run_id="r1", check_mark=True)
    transaction.stage("state", "x")
    applied: list[dict] = []

    async def apply(changes: dict) -> None:
        applied.append(changes)

    await transaction.rollback(reason="run failed")
    assert applied == []
    assert await store.marks() == []
    again = await locks.begin(KEY, agent="a", run_id="r2", check_mark=True)
    await again.commit(apply)
    assert applied == []  # nothing was staged in the second run


async def test_history_newest_first(store: StateStore) -> None:
    locks = LockManager(store, current_owner(), lease=30)
    transaction = await locks.begin(KEY, agent="a", run_id="r1", check_mark=True)
    await transaction.rollback(reason="check failed")
    transaction = await locks.begin(KEY, agent="a", run_id="r2", check_mark=True)
    await transaction.commit_with_error(reason="cleanup failed")
    assert await store.retry("accounts", "mk", ["alice"]) == 1
    transaction = await locks.begin(KEY, agent="a", run_id="r3", check_mark=True)
    await transaction.commit()
    history = await store.history("alice")
    assert [(h.run_id, h.resolution) for h in history] == [
        ("r3", Resolution.COMMIT),
        ("r2", Resolution.ERROR),
        ("r1", Resolution.ROLLBACK),
    ]
    assert history[1].reason == "cleanup failed"
    assert history[0].owner == str(current_owner())
    assert await store.counts() == {"a": {"committed": 1, "error": 1, "rolled_back": 1}}


async def test_retry_clears_marks(store: StateStore) -> None:
    locks = LockManager(store, current_owner(), lease=30)
    for record in ("alice", "bob"):
        transaction = await locks.begin(
            LockKey("accounts", record, "mk"), agent="a", run_id="r", check_mark=True
        )
        await transaction.commit_with_error(reason="failed")
    assert await store.retry("accounts", "other", ["alice"]) == 0
    assert await store.retry("billing", "mk", ["alice"]) == 0
    assert await store.retry("accounts", "mk", ["alice", "bob", "carol"]) == 2
    assert await store.marks() == []
    transaction = await locks.begin(KEY, agent="a", run_id="r2", check_mark=True)
    assert transaction.grant.token > 0


async def test_commit_applies_staged_changes(store: StateStore) -> None:
    locks = LockManager(store, current_owner(), lease=30)
    transaction = await locks.begin(KEY, agent="a", run_id="r1", check_mark=True)
    transaction.stage("state", "active")
    transaction.stage("uid", 1001)
    applied: list[dict] = []

    async def apply(changes: dict) -> None:
        applied.append(changes)

    await transaction.commit(apply)
    assert applied == [{"state": "active", "uid": 1001}]
    assert transaction.resolution is Resolution.COMMIT
    with pytest.raises(RuntimeError, match="already resolved"):
        await transaction.rollback()


async def test_failed_apply_leaves_transaction_open(store: StateStore) -> None:
    locks = LockManager(store, current_owner(), lease=30)
    transaction = await locks.begin(KEY, agent="a", run_id="r1", check_mark=True)
    transaction.stage("state", "active")

    async def apply(changes: dict) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError):
        await transaction.commit(apply)
    assert transaction.resolution is None
    assert await store.history("alice") == []
    await transaction.commit_with_error(apply, reason="commit failed")
    [entry] = await store.history("alice")
    assert entry.resolution is Resolution.ERROR
    assert entry.reason == "commit failed; applying staged changes failed: disk full"


async def test_hooks_run_after_durable_resolution(store: StateStore) -> None:
    locks = LockManager(store, current_owner(), lease=30)
    transaction = await locks.begin(KEY, agent="a", run_id="r1", check_mark=True)
    calls: list[str] = []

    async def first() -> None:
        history = await store.history("alice")
        calls.append(f"first:{history[0].resolution.value}")

    def failing() -> None:
        calls.append("failing")
        raise ValueError("hook broke")

    transaction.on_commit(first)
    transaction.on_commit(failing)
    transaction.on_commit(lambda: calls.append("third"))
    transaction.on_rollback(lambda: calls.append("rollback"))
    transaction.on_error(lambda: calls.append("error"))
    with capture_logs() as logs:
        await transaction.commit()
    assert calls == ["first:committed", "failing", "third"]
    assert transaction.resolution is Resolution.COMMIT
    failures = [e for e in logs if e["event"] == "hook_failed"]
    assert len(failures) == 1
    assert "hook broke" in failures[0]["error"]


@pytest.mark.parametrize(
    ("resolve", "expected"),
    [("rollback", ["rollback"]), ("commit_with_error", ["error"])],
)
async def test_hooks_by_resolution(
    store: StateStore, resolve: str, expected: list[str]
) -> None:
    locks = LockManager(store, current_owner(), lease=30)
    transaction = await locks.begin(KEY, agent="a", run_id="r1", check_mark=True)
    calls: list[str] = []
    transaction.on_commit(lambda: calls.append("commit"))
    transaction.on_rollback(lambda: calls.append("rollback"))
    transaction.on_error(lambda: calls.append("error"))
    await getattr(transaction, resolve)()
    assert calls == expected


async def test_expired_lease_cannot_commit(store: StateStore) -> None:
    # The manager is not entered, so nothing renews the lease.
    locks = LockManager(store, current_owner(), lease=0.2)
    transaction = await locks.begin(KEY, agent="a", run_id="r1", check_mark=True)
    await asyncio.sleep(0.4)
    with capture_logs() as logs, pytest.raises(LeaseLost):
        await transaction.commit()
    assert transaction.lost
    assert await store.history("alice") == []
    assert [e["event"] for e in logs if e["log_level"] == "error"] == [
        "resolution_rejected"
    ]


async def test_recovered_lock_fences_late_commit(store: StateStore) -> None:
    holder = LockManager(store, current_owner(), lease=0.2)
    transaction = await holder.begin(KEY, agent="a", run_id="r1", check_mark=True)
    transaction.stage("state", "late")
    applied: list[dict] = []

    async def apply(changes: dict) -> None:
        applied.append(changes)

    await asyncio.sleep(0.4)
    recoverer = LockManager(store, other_owner(), lease=30)
    recovered = await recoverer.recover_abandoned()
    assert [lock.run_id for lock in recovered] == ["r1"]
    with pytest.raises(LeaseLost):
        await transaction.commit(apply)
    with pytest.raises(LeaseLost):
        await transaction.rollback()
    assert applied == []
    history = await store.history("alice")
    assert [(h.resolution, h.reason) for h in history] == [
        (Resolution.ERROR, "interrupted")
    ]
    assert recoverer.statistics().recovered == 1
    assert holder.statistics().lost == 1


async def test_renewal_keeps_lease(store: StateStore) -> None:
    async with LockManager(store, current_owner(), lease=0.6) as locks:
        transaction = await locks.begin(KEY, agent="a", run_id="r1", check_mark=True)
        first_expiry = transaction.grant.expires
        await asyncio.sleep(1.5)
        assert transaction.grant.expires > first_expiry
        assert not transaction.lost
        await transaction.commit()
        assert locks.statistics().renewals >= 2
        assert locks.statistics().held == 0


async def test_renewal_detects_lost_lease(store: StateStore) -> None:
    locks = LockManager(store, current_owner(), lease=30)
    transaction = await locks.begin(KEY, agent="a", run_id="r1", check_mark=True)
    [held] = await store.locks()
    # Another process resolves the lock, as if it had found it abandoned.
    assert await store.resolve_abandoned(held, "interrupted")
    await locks.renew()
    assert transaction.lost
    assert locks.statistics().lost == 1
    with pytest.raises(LeaseLost):
        await transaction.commit()


async def test_live_owner_not_abandoned(store: StateStore) -> None:
    locks = LockManager(store, current_owner(), lease=30)
    await locks.begin(KEY, agent="a", run_id="r1", check_mark=True)
    assert await locks.recover_abandoned() == []
    assert len(await store.locks()) == 1


async def test_reused_pid_is_abandoned(store: StateStore) -> None:
    me = current_owner()
    # This process's pid with another start time: a process that died and
    # whose pid the kernel gave to this one.
    ghost = Owner(me.host, os.getpid(), "ghost", me.started + 1)
    await LockManager(store, ghost, lease=30).begin(
        KEY, agent="a", run_id="r1", check_mark=True
    )
    locks = LockManager(store, me, lease=30)
    assert [lock.owner.instance for lock in await locks.recover_abandoned()] == [
        "ghost"
    ]


async def test_recover_abandoned_by_workflow(store: StateStore) -> None:
    holder = LockManager(store, current_owner(), lease=0.1)
    await holder.begin(KEY, agent="a", run_id="r1", check_mark=True)
    await holder.begin(
        LockKey("other", "x", "mk"), agent="a", run_id="r2", check_mark=True
    )
    await asyncio.sleep(0.3)
    locks = LockManager(store, other_owner(), lease=30)
    assert [lock.run_id for lock in await locks.recover_abandoned("accounts")] == ["r1"]
    assert [lock.run_id for lock in await store.locks()] == ["r2"]


async def test_recovery_reported_once(store: StateStore) -> None:
    holder = LockManager(store, current_owner(), lease=0.1)
    for record in range(10):
        await holder.begin(
            LockKey("accounts", str(record), "mk"),
            agent="a",
            run_id=str(record),
            check_mark=True,
        )
    await asyncio.sleep(0.3)
    managers = [LockManager(store, other_owner(), lease=30) for _ in range(3)]
    results = await asyncio.gather(*(m.recover_abandoned() for m in managers))
    recovered = sorted(lock.run_id for result in results for lock in result)
    assert recovered == sorted(str(record) for record in range(10))


async def test_cancelled_begin_leaves_no_lock(store: StateStore) -> None:
    locks = LockManager(store, current_owner(), lease=30)
    task = asyncio.ensure_future(
        locks.begin(KEY, agent="a", run_id="r1", check_mark=True)
    )
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Closing waits for the detached acquire and for the release of its grant.
    await store.close()
    reopened = open_store(store.url)
    await reopened.open()
    try:
        assert await reopened.locks() == []
        assert await reopened.history("alice") == []
    finally:
        await reopened.close()


async def test_renewal_during_resolution_keeps_lease(store: StateStore) -> None:
    async with LockManager(store, current_owner(), lease=30) as manager:
        transaction = await manager.begin(
            KEY, agent="Agent", run_id="run-1", check_mark=True
        )
        resolve = store.resolve

        async def resolve_then_renew(*args: object, **kwargs: object) -> None:
            # A renewal that runs after the store released the lock but
            # before the resolution returned finds no lease to renew.
            await resolve(*args, **kwargs)
            await manager.renew()

        store.resolve = resolve_then_renew  # type: ignore[method-assign]
        try:
            await transaction.commit()
        finally:
            del store.resolve

        assert transaction.resolution is Resolution.COMMIT
        assert not transaction.lost
        assert manager.statistics().lost == 0


async def test_own_expired_lock_not_recovered(store: StateStore) -> None:
    # The lease expired because the store was too slow to renew it, and the
    # run still holds its transaction. Its own process must not mark it
    # interrupted, but another process may.
    holder = LockManager(store, current_owner(), lease=0.2)
    transaction = await holder.begin(KEY, agent="a", run_id="r1", check_mark=True)
    await asyncio.sleep(0.4)
    assert await holder.recover_abandoned() == []
    assert [lock.token for lock in await store.locks()] == [transaction.grant.token]
    recoverer = LockManager(store, other_owner(), lease=30)
    assert [lock.run_id for lock in await recoverer.recover_abandoned()] == ["r1"]
