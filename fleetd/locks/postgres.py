"""The fleet state store: PostgreSQL, shared by the fleetd processes of many hosts.

Claims are atomic under concurrency because the lock row's primary key
decides them: `INSERT ... ON CONFLICT DO NOTHING` grants to exactly one
claimant. The mark is read again after the insert, in the same transaction,
so a claim that raced a commit either waits for that commit and reads its
mark, or finds no commit at all. Lease times come from the database clock
(`now()`), never from a host's clock. Tokens come from a sequence, so they
only grow. A resolution locks the row (`FOR UPDATE`), checks the token and
the expiry, runs `in_transaction` (a workflow's `UPDATE`) and writes the
mark and history, all in one transaction. Claims and resolutions without
`in_transaction` run as PL/pgSQL functions. The claims that a process's
runs make at the same time go to the database as one batch, in one round
trip and one transaction (`fleetd_acquire_many`, or `fleetd_acquire` for a
batch of one), and so do their resolutions (`fleetd_resolve_many`,
`fleetd_resolve`). The batch commits once, and each caller returns only
after that commit.

Connection loss (a restart, a failover, a cut network) is retried with
backoff and jitter, for as long as it lasts: a run waits, and nothing is
reported written before PostgreSQL acknowledged the commit. A commit whose
acknowledgement was lost is retried too. The retry then finds its own
result (the lock it was granted, the history row of its token) instead of
failing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import structlog

from fleetd.locks.backoff import retry_delay
from fleetd.locks.base import (
    Done,
    Grant,
    HistoryEntry,
    InTransaction,
    LeaseLost,
    Locked,
    LockInfo,
    LockKey,
    LockRefused,
    Mark,
    Owner,
    Resolution,
)
from fleetd.locks.batching import Batcher
from fleetd.locks.common import (
    HISTORY_COLUMNS,
    LOCK_COLUMNS,
    MARK_COLUMNS,
    await_detached,
    grant_of,
    history_from_row,
    keep_detached,
    lock_from_row,
    mark_from_row,
    same_claim,
)
from fleetd.locks.postgres_schema import check_schema, migrate
from fleetd.pgurl import connect_arguments

log = structlog.get_logger()

T = TypeVar("T")

NOW = "extract(epoch from now())::float8"
KEY_WHERE = "workflow = $1 AND record = $2 AND mnemonic = $3"


class ConnectionLost(ConnectionError):
    """The connection closed under an operation; a retry may succeed."""


# Errors after which the same operation may succeed: the connection went
# away, the server is starting or stopping, or a transaction conflicted.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.TooManyConnectionsError,
    # Raised when the pool resets a connection that the server cut in the
    # middle of an operation; the pool then drops that connection.
    asyncpg.exceptions._base.InternalClientError,
)

CLIENT_STATE_ERRORS = (
    asyncpg.InterfaceError,
    asyncpg.exceptions._base.InternalClientError,
)

#: Operations retried on a connection in a broken client state, at most.
#: These retries are bounded, unlike those of an outage, because a bug in
#: how a connection is used would otherwise repeat forever.
MAX_BROKEN_CONNECTIONS = 20

#: Claims, or resolutions, sent to the database in one batch at most.
MAX_BATCH = 100


@dataclass(frozen=True, slots=True)
class _Claim:
    key: LockKey
    owner: Owner
    agent: str
    run_id: str
    lease: float
    check_mark: bool


@dataclass(frozen=True, slots=True)
class _Resolve:
    grant: Grant
    resolution: Resolution
    agent: str
    run_id: str
    reason: str | None
    mark: bool


def _terminate(connection: Any) -> None:
    with contextlib.suppress(Exception):
        connection.terminate()


def is_transient(error: BaseException) -> bool:
    """Tell whether `error` is one that a retry of the operation may cure."""
    return isinstance(error, TRANSIENT_ERRORS)


class PostgresStore:
    """State store in a PostgreSQL database; see the module docstring."""

    def __init__(
        self, url: str, *, pool_size: int = 10, open_attempts: int = 10
    ) -> None:
        self.url = url
        self.pool_size = pool_size
        self.open_attempts = open_attempts
        self._pool: asyncpg.Pool | None = None
        self._tasks: set[asyncio.Future[Any]] = set()
        self.retries = 0
        self._claims: Batcher[_Claim, Grant] = Batcher(
            self._acquire_batch, max_batch=MAX_BATCH, keep=self._tasks
        )
        self._resolutions: Batcher[_Resolve, None] = Batcher(
            self._resolve_batch, max_batch=MAX_BATCH, keep=self._tasks
        )

    async def open(self, *, read_only: bool = False) -> None:
        """Connect and migrate; retry a server that is not up yet a few times.

        With `read_only`, check the schema version instead of migrating, so a
        role that may only read the tables can open the store.
        """
        for attempt in range(1, self.open_attempts + 1):
            try:
                url, arguments = connect_arguments(self.url)
                self._pool = await asyncpg.create_pool(
                    url, min_size=1, max_size=self.pool_size, **arguments
                )
                async with self._pool.acquire() as connection:
                    if read_only:
                        await check_schema(connection)
                    else:
                        await migrate(connection, offline=False)
                return
            except Exception as error:
                if self._pool is not None:
                    self._pool.terminate()
                    self._pool = None
                # A server that restarts during the migration closes the
                # connection under it, and asyncpg raises InterfaceError.
                # The migration rolled back, so it runs again on a new pool.
                cut = isinstance(error, CLIENT_STATE_ERRORS)
                if not (is_transient(error) or cut) or attempt == self.open_attempts:
                    raise
                await self._wait_retry("open", attempt, error)

    async def close(self) -> None:
        # A detached task may start another (an orphaned grant's release).
        while self._tasks:
            await asyncio.wait(set(self._tasks))
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def _wait_retry(
        self, operation: str, attempt: int, error: BaseException
    ) -> None:
        delay = retry_delay(attempt)
        self.retries += 1
        log.warning(
            "state_store_retry",
            store="postgresql",
            operation=operation,
            attempt=attempt,
            delay_s=round(delay, 3),
            error=repr(error),
        )
        await asyncio.sleep(delay)

    async def _retrying(
        self, operation: str, run: Callable[[asyncpg.Connection, int], Awaitable[T]]
    ) -> T:
        """Run `run(connection, attempt)` until it ends without a transient error."""
        if self._pool is None:
            raise RuntimeError("the PostgreSQL state store is not open")
        attempt = 1
        broken = 0
        while True:
            try:
                async with self._pool.acquire() as connection:
                    try:
                        return await run(connection, attempt)
                    except CLIENT_STATE_ERRORS as error:
                        # A cut connection can leave asyncpg's protocol state
                        # broken ("the underlying connection is closed",
                        # "another operation is in progress"): drop it.
                        _terminate(connection)
                        raise ConnectionLost(repr(error)) from error
            except Exception as error:
                if isinstance(error, ConnectionLost):
                    broken += 1
                    if broken > MAX_BROKEN_CONNECTIONS:
                        raise
                elif not is_transient(error):
                    raise
                await self._wait_retry(operation, attempt, error)
                attempt += 1

    # Locks

    async def acquire(
        self,
        key: LockKey,
        owner: Owner,
        agent: str,
        run_id: str,
        lease: float,
        *,
        check_mark: bool,
    ) -> Grant:
        claim = _Claim(key, owner, agent, run_id, lease, check_mark)

        return await await_detached(
            self._claims.submit(claim), self._tasks, self._release_orphan
        )

    async def _acquire_batch(self, claims: list[_Claim]) -> list[Grant | LockRefused]:
        async def run(
            connection: asyncpg.Connection, attempt: int
        ) -> list[Grant | LockRefused]:
            rows = await _fetch_batch(
                connection,
                "fleetd_acquire",
                "*",
                [
                    [c.key.workflow for c in claims],
                    [c.key.record for c in claims],
                    [c.key.mnemonic for c in claims],
                    [c.agent for c in claims],
                    [c.owner.host for c in claims],
                    [c.owner.pid for c in claims],
                    [c.owner.started for c in claims],
                    [c.owner.instance for c in claims],
                    [c.lease for c in claims],
                    [c.run_id for c in claims],
                    [c.check_mark for c in claims],
                ],
            )
            results: list[Grant | LockRefused] = [None] * len(claims)  # type: ignore[list-item]
            for row in rows:
                index = row["r_index"] - 1
                results[index] = _claim_result(claims[index], row, attempt)

            return results

        try:
            return await self._retrying("acquire", run)
        except _BatchRejected as rejected:
            return await self._each_alone(self._acquire_batch, claims, rejected)

    def _release_orphan(self, grant: Grant) -> None:
        # The caller was cancelled after its lock was granted: drop the lock
        # without a resolution, as if it had never been taken.
        async def run(connection: asyncpg.Connection, attempt: int) -> None:
            await connection.execute(
                f"DELETE FROM fleetd_locks WHERE {KEY_WHERE} AND token = $4",
                grant.key.workflow,
                grant.key.record,
                grant.key.mnemonic,
                grant.token,
            )

        log.info(
            "lock_released_after_cancel",
            record=grant.key.record,
            mnemonic=grant.key.mnemonic,
            token=grant.token,
        )
        keep_detached(
            asyncio.ensure_future(self._retrying("release", run)), self._tasks
        )

    async def renew(
        self, grants: list[Grant], owner: Owner, lease: float
    ) -> list[Grant]:
        async def run(connection: asyncpg.Connection, attempt: int) -> list[Grant]:
            # The rows are locked in key order, as a batch of resolutions
            # locks them, so that the two cannot deadlock.
            rows = await connection.fetch(
                "WITH held AS (SELECT l.workflow, l.record, l.mnemonic"
                " FROM fleetd_locks AS l"
                " JOIN unnest($1::text[], $2::text[], $3::text[], $4::bigint[])"
                " AS g(workflow, record, mnemonic, token)"
                " ON l.workflow = g.workflow AND l.record = g.record"
                " AND l.mnemonic = g.mnemonic AND l.token = g.token"
                f" WHERE l.expires >= {NOW}"
                " ORDER BY l.workflow, l.record, l.mnemonic FOR UPDATE OF l)"
                f" UPDATE fleetd_locks AS l SET expires = {NOW} + $5 FROM held AS h"
                " WHERE l.workflow = h.workflow AND l.record = h.record"
                " AND l.mnemonic = h.mnemonic"
                " RETURNING l.workflow, l.record, l.mnemonic, l.token, l.expires",
                [g.key.workflow for g in grants],
                [g.key.record for g in grants],
                [g.key.mnemonic for g in grants],
                [g.token for g in grants],
                lease,
            )

            return [Grant(LockKey(r[0], r[1], r[2]), r[3], r[4]) for r in rows]

        return await self._retrying("renew", run)

    async def resolve(
        self,
        grant: Grant,
        resolution: Resolution,
        *,
        agent: str,
        run_id: str,
        reason: str | None,
        mark: bool,
        in_transaction: InTransaction | None = None,
    ) -> None:
        key = grant.key

        async def run(connection: asyncpg.Connection, attempt: int) -> None:
            async with connection.transaction():
                row = await connection.fetchrow(
                    f"SELECT {LOCK_COLUMNS}, {NOW} FROM fleetd_locks"
                    f" WHERE {KEY_WHERE} FOR UPDATE",
                    key.workflow,
                    key.record,
                    key.mnemonic,
                )
                if (
                    row is None
                    or row["token"] != grant.token
                    or (row["expires"] < row[12])
                ):
                    if attempt > 1 and await _resolved_before(
                        connection, grant.token, resolution
                    ):
                        return  # the attempt whose reply was lost committed
                    raise LeaseLost(_lease_lost_message(grant, row))
                if in_transaction is not None:
                    await in_transaction(connection)
                await _write_resolution(
                    connection,
                    lock_from_row(row),
                    resolution,
                    agent,
                    run_id,
                    reason,
                    mark,
                )

        operation: Awaitable[None]
        if in_transaction is None:
            operation = self._resolutions.submit(
                _Resolve(grant, resolution, agent, run_id, reason, mark)
            )
        else:
            operation = self._retrying("resolve", run)
        await await_detached(operation, self._tasks)

    async def _resolve_batch(self, items: list[_Resolve]) -> list[None | LeaseLost]:
        async def run(
            connection: asyncpg.Connection, attempt: int
        ) -> list[None | LeaseLost]:
            rows = await _fetch_batch(
                connection,
                "fleetd_resolve",
                "r_status",
                [
                    [i.grant.key.workflow for i in items],
                    [i.grant.key.record for i in items],
                    [i.grant.key.mnemonic for i in items],
                    [i.grant.token for i in items],
                    [i.resolution.value for i in items],
                    [i.agent for i in items],
                    [i.run_id for i in items],
                    [i.reason for i in items],
                    [i.mark for i in items],
                ],
            )
            results: list[None | LeaseLost] = [None] * len(items)
            for index, status in rows:
                if status == "ok":
                    continue
                item = items[index - 1]
                if attempt > 1 and await _resolved_before(
                    connection, item.grant.token, item.resolution
                ):
                    continue  # the attempt whose reply was lost committed
                key = item.grant.key
                results[index - 1] = LeaseLost(
                    _LEASE_LOST[status].format(
                        record=f"{key.workflow}/{key.record}/{key.mnemonic}",
                        token=item.grant.token,
                    )
                )

            return results

        try:
            return await self._retrying("resolve", run)
        except _BatchRejected as rejected:
            return await self._each_alone(self._resolve_batch, items, rejected)

    async def _each_alone(
        self,
        run_batch: Callable[[list[Any]], Awaitable[list[Any]]],
        items: list[Any],
        rejected: _BatchRejected,
    ) -> list[Any]:
        """Run each item of a rejected batch alone, so that only its culprit fails."""
        log.warning(
            "state_store_batch_rejected",
            store="postgresql",
            operation="acquire" if run_batch == self._acquire_batch else "resolve",
            items=len(items),
            error=repr(rejected.__cause__),
        )
        results: list[Any] = []
        for item in items:
            try:
                [result] = await run_batch([item])
            except Exception as error:  # noqa: BLE001 - the item's caller raises it
                result = error
            results.append(result)

        return results

    async def validate(self, grant: Grant) -> None:
        async def run(connection: asyncpg.Connection, attempt: int) -> None:
            row = await connection.fetchrow(
                f"SELECT {LOCK_COLUMNS}, {NOW} FROM fleetd_locks WHERE {KEY_WHERE}",
                grant.key.workflow,
                grant.key.record,
                grant.key.mnemonic,
            )
            if row is None or row["token"] != grant.token or (row["expires"] < row[12]):
                raise LeaseLost(_lease_lost_message(grant, row))

        await self._retrying("validate", run)

    async def abandoned(
        self, host: str, alive: Callable[[Owner], bool]
    ) -> list[LockInfo]:
        async def run(connection: asyncpg.Connection, attempt: int) -> list[Any]:
            return await connection.fetch(
                f"SELECT {LOCK_COLUMNS}, expires < {NOW} AS expired"
                f" FROM fleetd_locks WHERE expires < {NOW} OR owner_host = $1",
                host,
            )

        found = []
        for row in await self._retrying("abandoned", run):
            lock = lock_from_row(row)
            if row["expired"] or (lock.owner.host == host and not alive(lock.owner)):
                found.append(lock)

        return found

    async def resolve_abandoned(self, lock: LockInfo, reason: str) -> bool:
        key = lock.key

        async def run(connection: asyncpg.Connection, attempt: int) -> bool:
            async with connection.transaction():
                # The token and expiry must be those seen when the lock was
                # found abandoned: a renewal in between means its owner lives.
                found = await connection.fetchval(
                    f"SELECT 1 FROM fleetd_locks WHERE {KEY_WHERE}"
                    " AND token = $4 AND expires = $5 FOR UPDATE",
                    key.workflow,
                    key.record,
                    key.mnemonic,
                    lock.token,
                    lock.expires,
                )
                if found is None:
                    # NOTE: after a lost acknowledgement this also claims a
                    # recovery that another process made in between.
                    return attempt > 1 and await _resolved_before(
                        connection, lock.token, Resolution.ERROR
                    )
                await _write_resolution(
                    connection,
                    lock,
                    Resolution.ERROR,
                    lock.agent,
                    lock.run_id,
                    reason,
                    True,
                )

                return True

        return await await_detached(self._retrying("recover", run), self._tasks)

    # Reports

    async def locks(self) -> list[LockInfo]:
        async def run(connection: asyncpg.Connection, attempt: int) -> list[Any]:
            return await connection.fetch(
                f"SELECT {LOCK_COLUMNS} FROM fleetd_locks ORDER BY since, token"
            )

        return [lock_from_row(row) for row in await self._retrying("locks", run)]

    async def marks(self, *, errors_only: bool = False) -> list[Mark]:
        where = " WHERE resolution = 'error'" if errors_only else ""

        async def run(connection: asyncpg.Connection, attempt: int) -> list[Any]:
            return await connection.fetch(
                f"SELECT {MARK_COLUMNS} FROM fleetd_marks{where} ORDER BY at"
            )

        return [mark_from_row(row) for row in await self._retrying("marks", run)]

    async def history(
        self, record: str, workflow: str | None = None
    ) -> list[HistoryEntry]:
        async def run(connection: asyncpg.Connection, attempt: int) -> list[Any]:
            return await connection.fetch(
                f"SELECT {HISTORY_COLUMNS} FROM fleetd_history WHERE record = $1"
                " AND ($2::text IS NULL OR workflow = $2)"
                " ORDER BY at DESC, id DESC",
                record,
                workflow,
            )

        rows = await self._retrying("history", run)

        return [history_from_row(row) for row in rows]

    async def counts(self) -> dict[str, dict[str, int]]:
        async def run(connection: asyncpg.Connection, attempt: int) -> list[Any]:
            return await connection.fetch(
                "SELECT agent, resolution, count(*) FROM fleetd_history"
                " GROUP BY agent, resolution"
            )

        counts: dict[str, dict[str, int]] = {}
        for agent, resolution, count in await self._retrying("counts", run):
            counts.setdefault(agent, {})[resolution] = count

        return counts

    async def retry(self, workflow: str, mnemonic: str, records: list[str]) -> int:
        async def run(connection: asyncpg.Connection, attempt: int) -> int:
            return await connection.fetchval(
                "WITH cleared AS (DELETE FROM fleetd_marks WHERE workflow = $1"
                " AND mnemonic = $2 AND record = ANY($3::text[]) RETURNING 1)"
                " SELECT count(*) FROM cleared",
                workflow,
                mnemonic,
                records,
            )

        return await self._retrying("retry", run)


class _BatchRejected(Exception):
    """PostgreSQL rejected a statement of several items; it wrote none of them."""


async def _fetch_batch(
    connection: asyncpg.Connection,
    function: str,
    columns: str,
    arguments: list[list[Any]],
) -> list[Any]:
    """Call `function` for a batch; return rows of `r_index` and `columns`.

    `arguments` contains one list per parameter, with one value per item.
    A batch of one item calls the single-record function, which costs the
    server less; more items call `{function}_many` with arrays.

    A batch statement runs in one transaction, so an error that one item
    causes (a record id with a NUL byte, say) rolls back all of them. Such
    an error is raised as `_BatchRejected`, and the caller then runs the
    items one by one.
    """
    placeholders = ", ".join(f"${n}" for n in range(1, len(arguments) + 1))
    if len(arguments[0]) == 1:
        values = [argument[0] for argument in arguments]
        if columns == "*":  # a function that returns a table
            query = f"SELECT 1 AS r_index, * FROM {function}({placeholders})"
        else:
            query = f"SELECT 1 AS r_index, {function}({placeholders}) AS {columns}"
        return await connection.fetch(query, *values)
    listed = "*" if columns == "*" else f"r_index, {columns}"
    query = f"SELECT {listed} FROM {function}_many({placeholders})"
    try:
        return await connection.fetch(query, *arguments)
    except asyncpg.PostgresError as error:
        if is_transient(error):
            raise
        raise _BatchRejected() from error


def _claim_result(claim: _Claim, row: Any, attempt: int) -> Grant | LockRefused:
    """Turn a row of `fleetd_acquire_many` into a grant or a refusal."""
    key = claim.key
    if row["r_outcome"] == "granted":
        return Grant(key, row["r_token"], row["r_expires"])
    if row["r_outcome"] == "done":
        return Done(
            Mark(
                key,
                row["r_agent"],
                Resolution(row["r_resolution"]),
                row["r_reason"],
                row["r_at"],
            )
        )
    holder = LockInfo(
        key=key,
        agent=row["r_agent"],
        owner=Owner(
            host=row["r_host"],
            pid=row["r_pid"],
            instance=row["r_instance"],
            started=row["r_started"],
        ),
        token=row["r_token"],
        since=row["r_since"],
        expires=row["r_expires"],
        run_id=row["r_run_id"],
    )
    if attempt > 1 and same_claim(holder, claim.owner, claim.run_id):
        return grant_of(holder)  # the attempt whose reply was lost was granted

    return Locked(holder)


async def _resolved_before(
    connection: asyncpg.Connection, token: int, resolution: Resolution
) -> bool:
    found = await connection.fetchval(
        "SELECT 1 FROM fleetd_history WHERE token = $1 AND resolution = $2",
        token,
        resolution.value,
    )

    return found is not None


async def _write_resolution(
    connection: asyncpg.Connection,
    lock: LockInfo,
    resolution: Resolution,
    agent: str,
    run_id: str,
    reason: str | None,
    mark: bool,
) -> None:
    key = (lock.key.workflow, lock.key.record, lock.key.mnemonic)
    await connection.execute(f"DELETE FROM fleetd_locks WHERE {KEY_WHERE}", *key)
    if mark:
        await connection.execute(
            f"INSERT INTO fleetd_marks ({MARK_COLUMNS})"
            f" VALUES ($1, $2, $3, $4, $5, $6, {NOW})"
            " ON CONFLICT (workflow, record, mnemonic) DO UPDATE SET"
            " agent = excluded.agent, resolution = excluded.resolution,"
            " reason = excluded.reason, at = excluded.at",
            *key,
            agent,
            resolution.value,
            reason,
        )
    await connection.execute(
        f"INSERT INTO fleetd_history ({HISTORY_COLUMNS}, token)"
        f" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, {NOW}, $10)",
        *key,
        agent,
        resolution.value,
        reason,
        run_id,
        str(lock.owner),
        lock.since,
        lock.token,
    )


_LEASE_LOST = {
    "released": "lock on {record} is no longer held (token {token})",
    "token": "lock on {record} has another token than {token}",
    "expired": "lease on {record} expired",
}


def _lease_lost_message(grant: Grant, row: Any) -> str:
    record = f"{grant.key.workflow}/{grant.key.record}/{grant.key.mnemonic}"
    if row is None:
        return f"lock on {record} is no longer held (token {grant.token})"
    if row["token"] != grant.token:
        return f"lock on {record} has token {row['token']}, not {grant.token}"

    return f"lease on {record} expired {row[12] - row['expires']:.1f} s ago"
