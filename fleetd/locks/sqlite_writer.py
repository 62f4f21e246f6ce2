"""One writer thread per SQLite file, committing queued operations in batches.

Design: every write goes through a single thread that owns the write
connection. The thread takes all operations queued so far, runs them in one
`BEGIN IMMEDIATE` transaction, each inside its own savepoint, and commits
once. With `synchronous=FULL` that commit is the one fsync the whole batch
pays for. Operations queued while a commit is in progress wait for the
next batch ("group commit"). An operation that raises is rolled back to
its savepoint and gets its exception; the others still commit.

SQLite calls never run on the event loop: `submit` hands an operation to
the thread and returns an asyncio future that the thread completes with
`call_soon_threadsafe` after the commit returned.

Several processes may share one file. `BEGIN IMMEDIATE` takes the write
lock up front, so a transaction never fails half-way on a lock upgrade.
`busy_timeout` waits for another process's commit. When SQLITE_BUSY,
SQLITE_LOCKED or SQLITE_FULL persists, the batch is rolled back and retried
after a growing, jittered delay, and each retry is logged.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fleetd.locks.backoff import retry_delay
from fleetd.logs import get_logger

log = get_logger()

#: SQLite primary result codes that a retry can cure.
TRANSIENT_CODES = frozenset(
    {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_FULL}
)

#: Operations committed in one transaction at most.
MAX_BATCH = 512


class StoreClosed(Exception):
    """The store was closed before the operation could be committed."""


def is_transient(error: BaseException) -> bool:
    """Tell whether an sqlite3 error is one that a retry may cure."""
    code = getattr(error, "sqlite_errorcode", None)
    if code is None:
        return False

    return (code & 0xFF) in TRANSIENT_CODES


def connect(path: str, busy_timeout: float) -> sqlite3.Connection:
    """Open `path` in WAL mode with `synchronous=FULL`, in autocommit mode."""
    connection = sqlite3.connect(
        path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
    )
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")

    return connection


Operation = Callable[[sqlite3.Connection], Any]


@dataclass(slots=True)
class _Pending:
    operation: Operation
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


@dataclass(frozen=True, slots=True)
class WriterStatistics:
    """Counters of one writer thread."""

    batches: int
    operations: int
    retries: int


class BatchWriter:
    """The thread that owns the write connection of one SQLite file."""

    def __init__(self, path: str, *, busy_timeout: float = 5.0) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._batches = 0
        self._operations = 0
        self._retries = 0

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._main, name=f"fleetd-sqlite-writer:{self.path}", daemon=True
        )
        self._thread.start()

    def submit(self, operation: Operation) -> asyncio.Future[Any]:
        """Queue `operation`; the future gets its result after the commit."""
        if self._thread is None or self._closing.is_set():
            raise StoreClosed(f"state store {self.path} is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.put(_Pending(operation, future, loop))

        return future

    async def stop(self) -> None:
        """Commit what is queued, then end the thread.

        A batch that is still retrying a busy or full database is abandoned
        and its operations fail with `StoreClosed`.
        """
        if self._thread is None:
            return
        self._closing.set()
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)
        self._thread = None

    def statistics(self) -> WriterStatistics:
        return WriterStatistics(self._batches, self._operations, self._retries)

    # Writer thread

    def _main(self) -> None:
        connection: sqlite3.Connection | None = None
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            if connection is None:
                connection = self._connect(batch)
                if connection is None:
                    continue
            self._run_batch(connection, batch)
        if connection is not None:
            connection.close()

    def _connect(self, batch: list[_Pending]) -> sqlite3.Connection | None:
        attempt = 0
        while True:
            try:
                return connect(self.path, self.busy_timeout)
            except sqlite3.Error as error:
                attempt += 1
                if not is_transient(error) or not self._wait_retry(attempt, error):
                    self._fail(batch, error)
                    return None

    def _run_batch(self, connection: sqlite3.Connection, batch: list[_Pending]) -> None:
        attempt = 0
        while True:
            try:
                results = self._execute(connection, batch)
            except sqlite3.Error as error:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                attempt += 1
                if is_transient(error) and self._wait_retry(attempt, error):
                    continue
                self._fail(batch, error)
                return
            self._batches += 1
            self._operations += len(batch)
            _deliver(batch, results)
            return

    def _execute(
        self, connection: sqlite3.Connection, batch: list[_Pending]
    ) -> list[tuple[bool, Any]]:
        results: list[tuple[bool, Any]] = []
        connection.execute("BEGIN IMMEDIATE")
        for pending in batch:
            connection.execute("SAVEPOINT operation")
            try:
                value = pending.operation(connection)
            except sqlite3.Error as error:
                if is_transient(error):
                    raise
                connection.execute("ROLLBACK TO operation")
                results.append((False, error))
            except Exception as error:  # noqa: BLE001 - handed to the awaiting task
                connection.execute("ROLLBACK TO operation")
                results.append((False, error))
            else:
                results.append((True, value))
            connection.execute("RELEASE operation")
        connection.execute("COMMIT")

        return results

    def _wait_retry(self, attempt: int, error: sqlite3.Error) -> bool:
        """Sleep before the next attempt; False when the store is closing."""
        delay = retry_delay(attempt)
        self._retries += 1
        log.warning(
            "state_store_retry",
            store=self.path,
            attempt=attempt,
            delay_s=round(delay, 3),
            error=str(error),
        )
        # A closing store gives up at once: the operations fail, so nothing
        # is reported durable that is not.
        self._closing.wait(delay)

        return not self._closing.is_set()

    def _fail(self, batch: list[_Pending], error: BaseException) -> None:
        if self._closing.is_set() and is_transient(error):
            error = StoreClosed(f"state store {self.path} closed during retry: {error}")
        log.error("state_store_write_failed", store=self.path, error=str(error))
        _deliver(batch, [(False, error)] * len(batch))


def _deliver(batch: list[_Pending], results: list[tuple[bool, Any]]) -> None:
    """Complete the futures of a batch, with one wake-up per event loop.

    Waking a loop from another thread writes to its self-pipe, and one
    call per operation measured as a visible part of a short run.
    """
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Pending, bool, Any]]] = {}
    for pending, (ok, value) in zip(batch, results, strict=True):
        by_loop.setdefault(pending.loop, []).append((pending, ok, value))
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_complete, items)
        except RuntimeError:
            # The event loop is closed, so no task awaits these results.
            pass


def _complete(items: list[tuple[_Pending, bool, Any]]) -> None:
    """Set each future's result or exception, on its event loop's thread."""
    for pending, ok, value in items:
        if pending.future.done():
            continue
        if ok:
            pending.future.set_result(value)
        else:
            pending.future.set_exception(value)
