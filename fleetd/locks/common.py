"""Helpers shared by the SQLite and PostgreSQL stores."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fleetd.locks.base import (
    Grant,
    HistoryEntry,
    LockInfo,
    LockKey,
    Mark,
    Owner,
    Resolution,
)

T = TypeVar("T")


class SchemaError(Exception):
    """The database schema cannot be used by this version of fleetd."""


async def await_detached(
    awaitable: Awaitable[T],
    keep: set[asyncio.Future[Any]],
    on_orphan: Callable[[T], None] | None = None,
) -> T:
    """Await `awaitable` so that cancelling the caller does not stop it.

    A state store write that was started must end in the database, not
    half-way. When the caller is cancelled the write goes on, and
    `on_orphan` receives its result (an unused grant, say) to undo it.
    """
    future = asyncio.ensure_future(awaitable)
    keep.add(future)
    future.add_done_callback(keep.discard)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        if on_orphan is not None:
            future.add_done_callback(_call_on_success(on_orphan))
        raise


def _call_on_success(
    callback: Callable[[Any], None],
) -> Callable[[asyncio.Future[Any]], None]:
    def done(future: asyncio.Future[Any]) -> None:
        if not future.cancelled() and future.exception() is None:
            callback(future.result())

    return done


def lock_from_row(row: Any) -> LockInfo:
    """Build a LockInfo from a row of the locks table, columns in order."""
    (
        workflow,
        record,
        mnemonic,
        agent,
        host,
        pid,
        started,
        instance,
        token,
        since,
        expires,
        run_id,
    ) = tuple(row)[:12]

    return LockInfo(
        key=LockKey(workflow, record, mnemonic),
        agent=agent,
        owner=Owner(host=host, pid=pid, instance=instance, started=started),
        token=token,
        since=since,
        expires=expires,
        run_id=run_id,
    )


def same_claim(lock: LockInfo, owner: Owner, run_id: str) -> bool:
    """Tell whether `lock` is the one this owner took for `run_id`.

    An acquire whose reply was lost (connection cut after the commit) is
    retried; finding its own lock then means it was granted.
    """
    return lock.owner.instance == owner.instance and lock.run_id == run_id


def grant_of(lock: LockInfo) -> Grant:
    return Grant(key=lock.key, token=lock.token, expires=lock.expires)


LOCK_COLUMNS = (
    "workflow, record, mnemonic, agent, owner_host, owner_pid, owner_started,"
    " owner_instance, token, since, expires, run_id"
)
MARK_COLUMNS = "workflow, record, mnemonic, agent, resolution, reason, at"
HISTORY_COLUMNS = (
    "workflow, record, mnemonic, agent, resolution, reason, run_id, owner, started, at"
)


def mark_from_row(row: Any) -> Mark:
    """Build a Mark from a row of the marks table, columns in order."""
    workflow, record, mnemonic, agent, resolution, reason, at = tuple(row)

    return Mark(
        LockKey(workflow, record, mnemonic), agent, Resolution(resolution), reason, at
    )


def history_from_row(row: Any) -> HistoryEntry:
    """Build a HistoryEntry from a row of the history table, columns in order."""
    (
        workflow,
        record,
        mnemonic,
        agent,
        resolution,
        reason,
        run_id,
        owner,
        started,
        at,
    ) = tuple(row)

    return HistoryEntry(
        LockKey(workflow, record, mnemonic),
        agent,
        Resolution(resolution),
        reason,
        run_id,
        owner,
        started,
        at,
    )
