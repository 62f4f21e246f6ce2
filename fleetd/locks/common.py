"""Helpers shared by the SQLite and PostgreSQL stores."""

from __future__ import annotations

import asyncio
import functools
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
from fleetd.logs import get_logger

T = TypeVar("T")

log = get_logger()


class SchemaError(Exception):
    """The database schema cannot be used by this version of fleetd."""


def require_schema_version(version: int, expected: int) -> None:
    """Raise SchemaError unless a store read only opens a schema at `expected`."""
    if version != expected:
        raise SchemaError(
            f"state database schema version {version} is not this fleetd's"
            f" ({expected}); open it once with write access to create or"
            " upgrade it"
        )


async def await_detached(
    awaitable: Awaitable[T],
    keep: set[asyncio.Future[Any]],
    on_orphan: Callable[[T], None] | None = None,
) -> T:
    """Await `awaitable` so that cancelling the caller does not stop it.

    A state store write that was started must end in the database, not
    half-way. When the caller is cancelled the write goes on, and
    `on_orphan` receives its result (an unused grant, say) to undo it. If
    the write fails instead, its error is logged as
    `store_write_failed_after_cancel`.
    """
    future = asyncio.ensure_future(awaitable)
    keep.add(future)
    future.add_done_callback(keep.discard)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        # The cancelled shield stops watching `future`, so nothing else
        # retrieves its error. The callback runs in a copy of this context,
        # so its log event carries the run's ids bound with
        # structlog.contextvars.
        future.add_done_callback(functools.partial(_settle_orphan, on_orphan))
        raise


def keep_detached(future: asyncio.Future[Any], keep: set[asyncio.Future[Any]]) -> None:
    """Hold `future` in `keep` until it is done, and log its error if it fails.

    Use it for a state store write that no caller awaits. The error is
    logged as `store_write_failed_after_cancel`, with the ids bound with
    structlog.contextvars at this call.
    """
    keep.add(future)
    future.add_done_callback(keep.discard)
    future.add_done_callback(functools.partial(_settle_orphan, None))


def _settle_orphan(
    on_orphan: Callable[[Any], None] | None, future: asyncio.Future[Any]
) -> None:
    if future.cancelled():
        return
    error = future.exception()
    if error is not None:
        # Retrieving the error above keeps asyncio from reporting it as
        # "exception was never retrieved" when the future is collected.
        log.warning(
            "store_write_failed_after_cancel",
            error=str(error),
            error_type=type(error).__name__,
        )
        return
    if on_orphan is not None:
        on_orphan(future.result())


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
