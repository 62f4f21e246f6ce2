"""The lock manager: transactions over a state store, with leases and fencing.

A run takes its lock with `LockManager.begin`, which returns a
`Transaction`. The transaction contains the staged `this.*` changes and the
hooks that commands register, and it ends in exactly one resolution:
commit, rollback or commit with error. The resolution is written with the
grant's fencing token. The store rejects it (`LeaseLost`) when the token is
no longer the lock's, and then nothing is written.

While the manager is entered, one background task renews the leases of all
held locks every `lease / 3` seconds, in one store write. A lease that the
store no longer renews (expired, or recovered by another process) sets
`Transaction.lost`; that run cannot commit any more.

Hooks run only after the resolution is durable. A hook that raises is
logged and changes nothing, because the resolution is already written.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.abc
import msgspec

from fleetd.locks.base import (
    Grant,
    InTransaction,
    LeaseLost,
    LockInfo,
    LockKey,
    LockRefused,
    Owner,
    Resolution,
    StateStore,
)
from fleetd.locks.owner import owner_alive
from fleetd.logs import get_logger

log = get_logger()

Hook = Callable[[], Awaitable[None] | None]
Apply = Callable[[dict[str, Any]], Awaitable[None]]

#: Reason written for a lock whose owner died or whose lease expired.
INTERRUPTED = "interrupted"


class LockManagerStatistics(msgspec.Struct, frozen=True):
    """Counters of one lock manager, for `status` and the daemon's STATUS."""

    held: int  # locks held now
    renewals: int  # leases renewed since start
    lost: int  # leases found lost, by renewal or at resolution
    granted: int  # locks granted since start
    refused: int  # begin() calls refused with Locked or Done
    recovered: int  # abandoned locks this manager resolved as interrupted


def storable_text(text: str) -> str:
    """Return `text` as both stores can keep it, with NUL and lone surrogates escaped.

    A reason quotes programs' output and record values. A PostgreSQL text
    column cannot hold NUL, and neither store can encode a lone surrogate
    (an undecodable byte of a file name or of `chr(0xD800)`).
    """
    if "\0" in text:
        text = text.replace("\0", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")

    return text


class Transaction:
    """One held lock, from `begin` to its resolution."""

    def __init__(
        self,
        manager: LockManager,
        grant: Grant,
        *,
        agent: str,
        run_id: str,
        check_mark: bool,
    ) -> None:
        self.key: LockKey = grant.key
        self.grant = grant
        self.agent = agent
        self.run_id = run_id
        self.check_mark = check_mark
        self.staged: dict[str, Any] = {}
        self.lost = False
        self.resolution: Resolution | None = None
        # Set once a resolution is under way: the store's write then checks
        # the token itself, and a renewal that finds the lock already
        # released must not call the lease lost.
        self._resolving = False
        self._manager = manager
        # Made on the first hook; most transactions get none.
        self._hooks: dict[Resolution, list[Hook]] | None = None
        self._bound_log: Any = None

    @property
    def _log(self) -> Any:
        """The logger bound to this lock, bound on first use.

        Most transactions log nothing above debug, and binding a logger for
        each lock measured as a visible part of a short run.
        """
        if self._bound_log is None:
            self._bound_log = log.bind(
                workflow=self.key.workflow,
                record=self.key.record,
                mnemonic=self.key.mnemonic,
                agent=self.agent,
                run_id=self.run_id,
            )
        return self._bound_log

    def stage(self, field: str, value: Any) -> None:
        """Stage `this.<field> = value`, written only by a commit."""
        self.staged[field] = value

    def on_commit(self, hook: Hook) -> None:
        """Run `hook` after a commit is durable."""
        self._add_hook(Resolution.COMMIT, hook)

    def on_rollback(self, hook: Hook) -> None:
        """Run `hook` after a rollback is durable."""
        self._add_hook(Resolution.ROLLBACK, hook)

    def on_error(self, hook: Hook) -> None:
        """Run `hook` after a commit with error is durable."""
        self._add_hook(Resolution.ERROR, hook)

    def abandon(self) -> None:
        """Stop renewing the lease of a transaction that cannot be resolved.

        The lock stays in the store until its lease expires; then any
        fleetd recovers it and marks the record in error as interrupted.
        """
        if self.resolution is None and not self.lost:
            self._manager._release(self)
            self._log.error("lock_abandoned", token=self.grant.token)

    def _add_hook(self, resolution: Resolution, hook: Hook) -> None:
        if self._hooks is None:
            self._hooks = {r: [] for r in Resolution}
        self._hooks[resolution].append(hook)

    async def commit(
        self,
        apply: Apply | None = None,
        *,
        reason: str | None = None,
        in_transaction: InTransaction | None = None,
    ) -> None:
        """Apply the staged changes, mark the record committed, release the lock.

        `apply(staged)` runs first, when changes are staged; if it raises,
        nothing is resolved and the exception propagates, so the caller can
        resolve otherwise. `in_transaction(connection)` runs inside the
        store's resolution transaction instead (a workflow that shares the
        store's database). Raises `LeaseLost` when the lock is no longer
        this transaction's: then nothing is written.
        """
        await self._resolve(Resolution.COMMIT, apply, reason, in_transaction)

    async def rollback(self, *, reason: str | None = None) -> None:
        """Drop the staged changes and release the lock; the record stays eligible."""
        await self._resolve(Resolution.ROLLBACK, None, reason, None)

    async def commit_with_error(
        self,
        apply: Apply | None = None,
        *,
        reason: str | None = None,
        in_transaction: InTransaction | None = None,
    ) -> None:
        """Apply the staged changes and mark the record in error.

        A failing `apply` is logged and added to the reason; the record is
        marked in error all the same.
        """
        await self._resolve(Resolution.ERROR, apply, reason, in_transaction)

    async def _resolve(
        self,
        resolution: Resolution,
        apply: Apply | None,
        reason: str | None,
        in_transaction: InTransaction | None,
    ) -> None:
        if self.resolution is not None:
            raise RuntimeError(
                f"transaction of {self.key.record!r} is already resolved"
                f" ({self.resolution.value})"
            )
        store = self._manager.store
        self._resolving = True
        try:
            if self.lost:
                raise LeaseLost(f"lease on {self.key.record!r} was lost")
            if resolution is not Resolution.ROLLBACK and self.staged and apply:
                # Check the token before the changes reach the workflow; the
                # store checks it again when it writes the resolution.
                await store.validate(self.grant)
                reason = await self._apply(resolution, apply, reason)
            if reason is not None:
                reason = storable_text(reason)
            await store.resolve(
                self.grant,
                resolution,
                agent=self.agent,
                run_id=self.run_id,
                reason=reason,
                mark=resolution is not Resolution.ROLLBACK,
                in_transaction=in_transaction,
            )
        except LeaseLost as error:
            self._reject(resolution, error)
            raise
        self.resolution = resolution
        self._manager._release(self)
        # The module logger with the same keys: filtered out, it binds nothing.
        log.debug(
            "lock_resolved",
            workflow=self.key.workflow,
            record=self.key.record,
            mnemonic=self.key.mnemonic,
            agent=self.agent,
            run_id=self.run_id,
            resolution=resolution.value,
            reason=reason,
        )
        if self._hooks is not None:
            await self._run_hooks(self._hooks[resolution], resolution)

    async def _apply(
        self, resolution: Resolution, apply: Apply, reason: str | None
    ) -> str | None:
        if resolution is Resolution.COMMIT:
            await apply(dict(self.staged))
            return reason
        try:
            await apply(dict(self.staged))
        except Exception as error:  # noqa: BLE001 - the record is marked in error
            self._log.error("apply_failed", error=repr(error))
            failure = f"applying staged changes failed: {error}"
            return f"{reason}; {failure}" if reason else failure

        return reason

    def _reject(self, resolution: Resolution, error: LeaseLost) -> None:
        if not self.lost:
            self.lost = True
            self._manager._lost += 1
        self._manager._release(self)
        self._log.error(
            "resolution_rejected",
            resolution=resolution.value,
            token=self.grant.token,
            error=str(error),
        )

    async def _run_hooks(self, hooks: list[Hook], resolution: Resolution) -> None:
        for hook in hooks:
            try:
                result = hook()
                if inspect.isawaitable(result):
                    await result
            except (Exception, SystemExit) as error:  # noqa: BLE001 - a hook never changes the resolution
                self._log.error(
                    "hook_failed",
                    resolution=resolution.value,
                    hook=getattr(hook, "__qualname__", repr(hook)),
                    error=repr(error),
                )


class LockManager:
    """Grants transactions on a state store and keeps their leases alive.

    Use as an async context manager: entering starts the lease renewal
    task and leaving stops it. Held locks are not resolved on exit; a lock
    left held expires and is recovered as interrupted.

    Example::

        async with LockManager(store, current_owner(), lease=60) as locks:
            transaction = await locks.begin(key, agent="a", run_id="r1",
                                            check_mark=True)
            transaction.stage("state", "done")
            await transaction.commit(workflow_apply)
    """

    def __init__(self, store: StateStore, owner: Owner, *, lease: float) -> None:
        if lease <= 0:
            raise ValueError("lease must be > 0 seconds")
        self.store = store
        self.owner = owner
        self.lease = lease
        self._held: dict[int, Transaction] = {}
        self._task_group: anyio.abc.TaskGroup | None = None
        self._renewals = 0
        self._lost = 0
        self._granted = 0
        self._refused = 0
        self._recovered = 0

    async def __aenter__(self) -> Self:
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._renew_forever)

        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._task_group is not None:
            task_group, self._task_group = self._task_group, None
            task_group.cancel_scope.cancel()
            await task_group.__aexit__(None, None, None)

    async def begin(
        self, key: LockKey, *, agent: str, run_id: str, check_mark: bool
    ) -> Transaction:
        """Take the lock on `key`; raise `Locked` or `Done` when refused.

        `check_mark=False` (the Null workflow's record, which has no
        identity) grants the lock even when a mark exists.
        """
        try:
            grant = await self.store.acquire(
                key, self.owner, agent, run_id, self.lease, check_mark=check_mark
            )
        except LockRefused:
            self._refused += 1
            raise
        transaction = Transaction(
            self, grant, agent=agent, run_id=run_id, check_mark=check_mark
        )
        self._held[grant.token] = transaction
        self._granted += 1

        return transaction

    async def recover_abandoned(self, workflow: str | None = None) -> list[LockInfo]:
        """Resolve abandoned locks as error with reason "interrupted".

        A lock is abandoned when its lease expired, or when its owner ran on
        this host and that process is gone (or its pid now belongs to
        another process). Only locks of `workflow` are considered when it is
        given. Returns the locks that this call resolved; another process
        that got there first resolved (and reports) the rest.
        """
        found = await self.store.abandoned(self.owner.host, owner_alive)
        # A lease of this process expires when the store is busy or down for
        # longer than the lease. Its run is still going, so this process
        # must not recover it.
        found = [
            lock
            for lock in found
            if (workflow is None or lock.key.workflow == workflow)
            and not self._holds(lock)
        ]
        if not found:
            return []
        results = await asyncio.gather(
            *(self.store.resolve_abandoned(lock, INTERRUPTED) for lock in found),
            return_exceptions=True,
        )
        recovered = []
        for lock, result in zip(found, results, strict=True):
            if isinstance(result, BaseException):
                log.error(
                    "lock_recovery_failed",
                    workflow=lock.key.workflow,
                    record=lock.key.record,
                    mnemonic=lock.key.mnemonic,
                    error=repr(result),
                )
            elif result:
                recovered.append(lock)
                log.warning(
                    "lock_recovered",
                    workflow=lock.key.workflow,
                    record=lock.key.record,
                    mnemonic=lock.key.mnemonic,
                    agent=lock.agent,
                    run_id=lock.run_id,
                    owner=str(lock.owner),
                    reason=INTERRUPTED,
                )
        self._recovered += len(recovered)

        return recovered

    async def renew(self) -> None:
        """Renew every held lease now, in one store write.

        A lease the store did not renew is lost: its transaction's `lost`
        is set. A store error is logged and the next renewal tries again.
        """
        # Leases under resolution are renewed too, since a resolution that
        # waits out a store outage must not lose its lease meanwhile.
        transactions = [t for t in self._held.values() if not t.lost]
        if not transactions:
            return
        try:
            renewed = await self.store.renew(
                [t.grant for t in transactions], self.owner, self.lease
            )
        except Exception as error:  # noqa: BLE001 - retried at the next interval
            log.warning(
                "lease_renewal_failed", held=len(transactions), error=repr(error)
            )
            return
        by_token = {grant.token: grant for grant in renewed}
        self._renewals += len(renewed)
        for transaction in transactions:
            grant = by_token.get(transaction.grant.token)
            if grant is not None:
                transaction.grant = grant
            elif not transaction.lost and not transaction._resolving:
                transaction.lost = True
                self._lost += 1
                transaction._log.error("lease_lost", token=transaction.grant.token)

    def statistics(self) -> LockManagerStatistics:
        return LockManagerStatistics(
            held=len(self._held),
            renewals=self._renewals,
            lost=self._lost,
            granted=self._granted,
            refused=self._refused,
            recovered=self._recovered,
        )

    async def _renew_forever(self) -> None:
        while True:
            await anyio.sleep(self.lease / 3)
            await self.renew()

    def _holds(self, lock: LockInfo) -> bool:
        """Tell whether `lock` is one of this manager's unresolved transactions."""
        transaction = self._held.get(lock.token)
        return transaction is not None and transaction.key == lock.key

    def _release(self, transaction: Transaction) -> None:
        self._held.pop(transaction.grant.token, None)
