"""The embedded state store: one SQLite file, shared by the processes of a host.

Writes go through `BatchWriter` (group commit on the event loop, the WAL
synced by a thread before a result is delivered), so a write is durable
when its coroutine returns and the runs that resolve together share one
fsync. Reads of one lock run at once on the write connection; other reads
run on a second connection in a reader thread. Lease times come from this host's clock,
which every process sharing the file also uses.
"""

from __future__ import annotations

import asyncio
import inspect
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

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
    Mark,
    Owner,
    Resolution,
)
from fleetd.locks.common import (
    HISTORY_COLUMNS,
    LOCK_COLUMNS,
    MARK_COLUMNS,
    SchemaError,
    await_detached,
    history_from_row,
    keep_detached,
    lock_from_row,
    mark_from_row,
    require_schema_version,
)
from fleetd.locks.sqlite_writer import (
    BatchWriter,
    StoreClosed,
    connect,
    connect_read_only,
    is_transient,
)
from fleetd.logs import get_logger

log = get_logger()

T = TypeVar("T")

# Each migration brings the schema from the version before it to its own.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE tokens (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            value INTEGER NOT NULL)""",
        "INSERT INTO tokens (id, value) VALUES (1, 0)",
        """CREATE TABLE locks (
            workflow TEXT NOT NULL, record TEXT NOT NULL, mnemonic TEXT NOT NULL,
            agent TEXT NOT NULL,
            owner_host TEXT NOT NULL, owner_pid INTEGER NOT NULL,
            owner_started INTEGER NOT NULL, owner_instance TEXT NOT NULL,
            token INTEGER NOT NULL, since REAL NOT NULL, expires REAL NOT NULL,
            run_id TEXT NOT NULL,
            PRIMARY KEY (workflow, record, mnemonic))""",
        """CREATE TABLE marks (
            workflow TEXT NOT NULL, record TEXT NOT NULL, mnemonic TEXT NOT NULL,
            agent TEXT NOT NULL, resolution TEXT NOT NULL, reason TEXT,
            at REAL NOT NULL,
            PRIMARY KEY (workflow, record, mnemonic))""",
        """CREATE TABLE history (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            workflow TEXT NOT NULL, record TEXT NOT NULL, mnemonic TEXT NOT NULL,
            agent TEXT NOT NULL, resolution TEXT NOT NULL, reason TEXT,
            run_id TEXT NOT NULL, owner TEXT NOT NULL, token INTEGER NOT NULL,
            started REAL NOT NULL, at REAL NOT NULL)""",
        "CREATE INDEX history_by_record ON history (record, workflow)",
    ),
}
#: Version of the SQLite schema this fleetd writes.
SCHEMA_VERSION = max(MIGRATIONS)

KEY_WHERE = "workflow = ? AND record = ? AND mnemonic = ?"


def _key(key: LockKey) -> tuple[str, str, str]:
    return (key.workflow, key.record, key.mnemonic)


def migrate(connection: sqlite3.Connection) -> int:
    """Create or upgrade the schema inside the open transaction; return its version."""
    connection.execute(
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
    )
    row = connection.execute("SELECT max(version) FROM schema_version").fetchone()
    version = row[0] or 0
    if version > SCHEMA_VERSION:
        raise SchemaError(
            f"state database schema version {version} is newer than this"
            f" fleetd supports ({SCHEMA_VERSION}); upgrade fleetd"
        )
    for target in range(version + 1, SCHEMA_VERSION + 1):
        for statement in MIGRATIONS[target]:
            connection.execute(statement)
        connection.execute("DELETE FROM schema_version")
        connection.execute("INSERT INTO schema_version (version) VALUES (?)", (target,))
        log.info("state_store_migrated", version=target)

    return SCHEMA_VERSION


def check_schema(connection: sqlite3.Connection) -> int:
    """Raise SchemaError unless the schema is at this fleetd's version."""
    try:
        row = connection.execute("SELECT max(version) FROM schema_version").fetchone()
    except sqlite3.OperationalError as error:
        if "no such table" not in str(error):
            raise
        row = None
    version = (row[0] if row else None) or 0
    require_schema_version(version, SCHEMA_VERSION)

    return version


class SQLiteStore:
    """State store in one SQLite file; see the module docstring."""

    def __init__(
        self, path: str | Path, *, url: str | None = None, busy_timeout: float = 5.0
    ) -> None:
        self.path = str(path)
        self.url = url or f"sqlite:///{self.path}"
        self.busy_timeout = busy_timeout
        self._writer = BatchWriter(self.path, busy_timeout=busy_timeout)
        self._reader: ThreadPoolExecutor | None = None
        self._read_connection: sqlite3.Connection | None = None
        self._read_only = False
        self._tasks: set[asyncio.Future[Any]] = set()

    async def open(self, *, read_only: bool = False) -> None:
        self._read_only = read_only
        if not read_only:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="fleetd-sqlite-reader")
        try:
            if read_only:
                await self._read(check_schema)
            else:
                await self._writer.start()
                await self._writer.submit(migrate)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        # Detached writes (a resolution whose caller was cancelled, the
        # release of an orphaned grant) get a bounded wait first, because a
        # batch that retries a busy database may never finish. Stopping the
        # writer then fails what is left.
        await self._drain(self.busy_timeout + 1.0)
        await self._writer.stop()
        await self._drain(None)
        if self._reader is not None:
            reader, self._reader = self._reader, None
            await asyncio.get_running_loop().run_in_executor(reader, self._close_reader)
            reader.shutdown(wait=True)

    async def _drain(self, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._tasks:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            await asyncio.wait(set(self._tasks), timeout=remaining)

    def statistics(self) -> Any:
        return self._writer.statistics()

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
        def operation(connection: sqlite3.Connection) -> Grant:
            if check_mark:
                row = connection.execute(
                    f"SELECT {MARK_COLUMNS} FROM marks WHERE {KEY_WHERE}", _key(key)
                ).fetchone()
                if row is not None:
                    raise Done(mark_from_row(row))
            row = connection.execute(
                f"SELECT {LOCK_COLUMNS} FROM locks WHERE {KEY_WHERE}", _key(key)
            ).fetchone()
            if row is not None:
                raise Locked(lock_from_row(row))
            token = connection.execute(
                "UPDATE tokens SET value = value + 1 WHERE id = 1 RETURNING value"
            ).fetchone()[0]
            now = time.time()
            connection.execute(
                f"INSERT INTO locks ({LOCK_COLUMNS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    *_key(key),
                    agent,
                    owner.host,
                    owner.pid,
                    owner.started,
                    owner.instance,
                    token,
                    now,
                    now + lease,
                    run_id,
                ),
            )

            return Grant(key=key, token=token, expires=now + lease)

        return await await_detached(
            self._writer.submit(operation), self._tasks, self._release_orphan
        )

    def _release_orphan(self, grant: Grant) -> None:
        # The caller was cancelled after its lock was granted: drop the lock
        # without a resolution, as if it had never been taken.
        def operation(connection: sqlite3.Connection) -> None:
            connection.execute(
                f"DELETE FROM locks WHERE {KEY_WHERE} AND token = ?",
                (*_key(grant.key), grant.token),
            )

        log.info(
            "lock_released_after_cancel",
            record=grant.key.record,
            mnemonic=grant.key.mnemonic,
            token=grant.token,
        )
        try:
            keep_detached(self._writer.submit(operation), self._tasks)
        except StoreClosed:
            pass  # the lease expires and the lock is recovered as interrupted

    async def renew(
        self, grants: list[Grant], owner: Owner, lease: float
    ) -> list[Grant]:
        def operation(connection: sqlite3.Connection) -> list[Grant]:
            now = time.time()
            renewed = []
            for grant in grants:
                cursor = connection.execute(
                    f"UPDATE locks SET expires = ? WHERE {KEY_WHERE}"
                    " AND token = ? AND expires >= ?",
                    (now + lease, *_key(grant.key), grant.token, now),
                )
                if cursor.rowcount == 1:
                    renewed.append(Grant(grant.key, grant.token, now + lease))

            return renewed

        return await self._writer.submit(operation)

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
        if in_transaction is not None and inspect.iscoroutinefunction(in_transaction):
            raise ValueError(
                "in_transaction must be a plain function for the SQLite state"
                " store: its statements run synchronously on the event loop"
            )

        def operation(connection: sqlite3.Connection) -> None:
            now = time.time()
            row = connection.execute(
                f"SELECT {LOCK_COLUMNS} FROM locks WHERE {KEY_WHERE}", _key(grant.key)
            ).fetchone()
            if row is None or row[8] != grant.token or row[10] < now:
                raise LeaseLost(_lease_lost_message(grant, row, now))
            if in_transaction is not None:
                # A workflow table in this file: its UPDATE commits with the
                # resolution, or, when either fails, neither does.
                in_transaction(connection)
            _write_resolution(
                connection,
                lock_from_row(row),
                resolution,
                agent,
                run_id,
                reason,
                mark,
                now,
            )

        # A resolution is not urgent: it may wait a moment for a claim to
        # share its commit and fsync.
        await await_detached(self._writer.submit(operation, urgent=False), self._tasks)

    async def validate(self, grant: Grant) -> None:
        def read(connection: sqlite3.Connection) -> None:
            row = connection.execute(
                f"SELECT {LOCK_COLUMNS} FROM locks WHERE {KEY_WHERE}", _key(grant.key)
            ).fetchone()
            now = time.time()
            if row is None or row[8] != grant.token or row[10] < now:
                raise LeaseLost(_lease_lost_message(grant, row, now))

        # One row by key: read at once on the write connection; a busy
        # file (WAL recovery by another process) is read in the thread.
        try:
            self._writer.read(read)
        except sqlite3.Error as error:
            if not is_transient(error):
                raise
            await self._read(read)

    async def abandoned(
        self, host: str, alive: Callable[[Owner], bool]
    ) -> list[LockInfo]:
        def read(connection: sqlite3.Connection) -> list[tuple[LockInfo, bool]]:
            now = time.time()
            rows = connection.execute(
                f"SELECT {LOCK_COLUMNS}, expires < ? FROM locks"
                " WHERE expires < ? OR owner_host = ?",
                (now, now, host),
            ).fetchall()

            return [(lock_from_row(row), bool(row[12])) for row in rows]

        found = await self._read(read)

        return [
            lock
            for lock, expired in found
            if expired or (lock.owner.host == host and not alive(lock.owner))
        ]

    async def resolve_abandoned(self, lock: LockInfo, reason: str) -> bool:
        def operation(connection: sqlite3.Connection) -> bool:
            # The token and expiry must be those seen when the lock was found
            # abandoned: a renewal in between means its owner lives.
            row = connection.execute(
                f"SELECT {LOCK_COLUMNS} FROM locks WHERE {KEY_WHERE}"
                " AND token = ? AND expires = ?",
                (*_key(lock.key), lock.token, lock.expires),
            ).fetchone()
            if row is None:
                return False
            _write_resolution(
                connection,
                lock,
                Resolution.ERROR,
                lock.agent,
                lock.run_id,
                reason,
                True,
                time.time(),
            )

            return True

        return await await_detached(self._writer.submit(operation), self._tasks)

    # Reports

    async def locks(self) -> list[LockInfo]:
        def read(connection: sqlite3.Connection) -> list[LockInfo]:
            rows = connection.execute(
                f"SELECT {LOCK_COLUMNS} FROM locks ORDER BY since, token"
            ).fetchall()

            return [lock_from_row(row) for row in rows]

        return await self._read(read)

    async def marks(self, *, errors_only: bool = False) -> list[Mark]:
        def read(connection: sqlite3.Connection) -> list[Mark]:
            where = " WHERE resolution = 'error'" if errors_only else ""
            rows = connection.execute(
                f"SELECT {MARK_COLUMNS} FROM marks{where} ORDER BY at"
            ).fetchall()

            return [mark_from_row(row) for row in rows]

        return await self._read(read)

    async def history(
        self, record: str, workflow: str | None = None
    ) -> list[HistoryEntry]:
        def read(connection: sqlite3.Connection) -> list[HistoryEntry]:
            query = f"SELECT {HISTORY_COLUMNS} FROM history WHERE record = ?"
            parameters: tuple[str, ...] = (record,)
            if workflow is not None:
                query += " AND workflow = ?"
                parameters += (workflow,)
            rows = connection.execute(
                query + " ORDER BY at DESC, id DESC", parameters
            ).fetchall()

            return [history_from_row(row) for row in rows]

        return await self._read(read)

    async def counts(self) -> dict[str, dict[str, int]]:
        def read(connection: sqlite3.Connection) -> dict[str, dict[str, int]]:
            counts: dict[str, dict[str, int]] = {}
            for agent, resolution, count in connection.execute(
                "SELECT agent, resolution, count(*) FROM history"
                " GROUP BY agent, resolution"
            ):
                counts.setdefault(agent, {})[resolution] = count

            return counts

        return await self._read(read)

    async def retry(self, workflow: str, mnemonic: str, records: list[str]) -> int:
        def operation(connection: sqlite3.Connection) -> int:
            cleared = 0
            for record in records:
                cleared += connection.execute(
                    f"DELETE FROM marks WHERE {KEY_WHERE}", (workflow, record, mnemonic)
                ).rowcount

            return cleared

        return await self._writer.submit(operation)

    # Reader thread

    async def _read(self, read: Callable[[sqlite3.Connection], T]) -> T:
        if self._reader is None:
            raise RuntimeError(f"state store {self.path} is not open")
        loop = asyncio.get_running_loop()

        return await loop.run_in_executor(self._reader, self._read_in_thread, read)

    def _read_in_thread(self, read: Callable[[sqlite3.Connection], T]) -> T:
        attempt = 0
        while True:
            try:
                if self._read_connection is None:
                    opener = connect_read_only if self._read_only else connect
                    self._read_connection = opener(self.path, self.busy_timeout)
                return read(self._read_connection)
            except sqlite3.Error as error:
                attempt += 1
                if not is_transient(error) or attempt > 20:
                    raise
                delay = retry_delay(attempt)
                log.warning(
                    "state_store_retry",
                    store=self.path,
                    attempt=attempt,
                    delay_s=round(delay, 3),
                    error=str(error),
                )
                time.sleep(delay)

    def _close_reader(self) -> None:
        if self._read_connection is not None:
            self._read_connection.close()
            self._read_connection = None


def _write_resolution(
    connection: sqlite3.Connection,
    lock: LockInfo,
    resolution: Resolution,
    agent: str,
    run_id: str,
    reason: str | None,
    mark: bool,
    now: float,
) -> None:
    key = _key(lock.key)
    connection.execute(f"DELETE FROM locks WHERE {KEY_WHERE}", key)
    if mark:
        connection.execute(
            f"INSERT OR REPLACE INTO marks ({MARK_COLUMNS})"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (*key, agent, resolution.value, reason, now),
        )
    connection.execute(
        f"INSERT INTO history ({HISTORY_COLUMNS}, token)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            *key,
            agent,
            resolution.value,
            reason,
            run_id,
            str(lock.owner),
            lock.since,
            now,
            lock.token,
        ),
    )


def _lease_lost_message(grant: Grant, row: Any, now: float) -> str:
    record = f"{grant.key.workflow}/{grant.key.record}/{grant.key.mnemonic}"
    if row is None:
        return f"lock on {record} is no longer held (token {grant.token})"
    if row[8] != grant.token:
        return f"lock on {record} has token {row[8]}, not {grant.token}"

    return f"lease on {record} expired {now - row[10]:.1f} s ago"
