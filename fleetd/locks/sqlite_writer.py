"""Group commit for one SQLite file: statements on the event loop, fsync in a thread.

Design. Writes are operations: functions that take the write connection
and run a few statements. The operations queued during one turn of the
event loop run in a single `BEGIN IMMEDIATE` transaction at the end of
that turn. When there are several, each runs inside its own savepoint, so
an operation that raises is rolled back alone and the others commit.

Durability. The connection runs in WAL mode with `synchronous=NORMAL`: a
commit writes its frames to the WAL through the page cache and returns
without waiting for the disk. The syncer thread then calls `fdatasync` on
the WAL file, and only after it returns are the futures of the commit's
operations completed. One fdatasync covers every commit made before it
started, so runs that resolve together share it. This is the guarantee of
`synchronous=FULL`: frames are on disk before a write is reported. What
an earlier sync made durable stays so, because in NORMAL mode SQLite
still syncs the WAL before each checkpoint, the database after it, and
the WAL header when the WAL is reused (SQLite's documentation of PRAGMA
synchronous). Failed operations changed nothing and get their exception
at once.

Why statements run on the event loop. A statement here reads and writes
pages in memory and in the page cache, which takes microseconds. What can
wait (fsync, checkpoints, a busy database) never runs on the loop. When
every statement ran in a writer thread instead, each one waited for the
interpreter lock while the loop was busy, and a batch measured 1.8 ms for
0.3 ms of work. It is written here because aiosqlite, the usual library,
runs every call in a thread.

- Busy: the connection has no busy timeout, so `BEGIN IMMEDIATE` fails
  at once when another process holds the write lock. The batch is retried
  from the loop after a short, growing delay. After `busy_timeout`
  seconds each retry is logged as `state_store_retry`. SQLITE_FULL (a
  full disk) is retried the same way.
- Checkpoints: automatic checkpoints are off on the loop's connection.
  A checkpointer thread copies the WAL into the database every
  `CHECKPOINT_COMMITS` commits, and when a commit found the disk full. It
  then restarts the WAL with a write that changes nothing, so the sync of
  the new WAL header happens in that thread, unless the loop's next commit
  comes first.
- Resolutions can be queued as not urgent: they wait up to `LAZY_DELAY`
  for an urgent operation (a claim) and share its commit and fsync.
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from fleetd.locks.backoff import retry_delay
from fleetd.logs import get_logger

log = get_logger()

#: SQLite primary result codes that a retry can cure.
TRANSIENT_CODES = frozenset(
    {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_FULL}
)

#: Operations committed in one transaction at most.
MAX_BATCH = 512

#: Seconds a queued operation that is not urgent waits for an urgent one.
LAZY_DELAY = 0.002

#: Commits after which the checkpointer thread copies the WAL into the
#: database. A commit here writes about 5 pages, and SQLite's own default
#: is a checkpoint per 1,000 pages.
CHECKPOINT_COMMITS = 200

#: Seconds the checkpointer waits for writers and readers. Writers wait
#: for the checkpoint meanwhile, so this bounds how long they may wait. A
#: checkpoint that times out is tried again after the next 200 commits.
CHECKPOINT_WAIT = 0.2

#: First and largest delay, in seconds, between attempts on a busy file
#: before `busy_timeout` has passed.
BUSY_DELAY = 0.0005
BUSY_DELAY_MAX = 0.02


class StoreClosed(Exception):
    """The store was closed before the operation could be committed."""


class _BatchAborted(Exception):
    """An operation ended the whole transaction (a trigger's RAISE(ROLLBACK)).

    Every operation of the batch was rolled back with it; the one at
    `index` failed with `error`, and the others must run again.
    """

    def __init__(self, index: int, error: Exception) -> None:
        super().__init__(str(error))
        self.index = index
        self.error = error


def is_transient(error: BaseException) -> bool:
    """Tell whether an sqlite3 error is one that a retry may cure."""
    code = getattr(error, "sqlite_errorcode", None)
    if code is None:
        return False

    return (code & 0xFF) in TRANSIENT_CODES


def connect(path: str, busy_timeout: float) -> sqlite3.Connection:
    """Open `path` in WAL mode with `synchronous=FULL`, in autocommit mode.

    For connections that sync on their own: readers, command-line tools.
    """
    connection = sqlite3.connect(
        path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
    )
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")

    return connection


def connect_read_only(path: str, busy_timeout: float) -> sqlite3.Connection:
    """Open `path` for reading only, for a user who may not write to it.

    A reader of a WAL database needs its -wal and -shm files, and it
    creates them when they are missing. This is SQLite 3.22 and later, as
    "Read-Only Databases" in SQLite's WAL documentation describes. On a
    read-only file system it cannot create them, so a database without a
    -wal file is opened as immutable, because nothing can change it there.
    """
    uri = f"{Path(path).resolve().as_uri()}?mode=ro"
    connection = sqlite3.connect(
        uri, uri=True, timeout=busy_timeout, isolation_level=None,
        check_same_thread=False,
    )  # fmt: skip
    try:
        connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError:
        connection.close()
        if os.path.exists(os.path.realpath(path) + "-wal"):
            raise  # immutable would ignore the commits in the WAL
        connection = sqlite3.connect(
            f"{uri}&immutable=1", uri=True, isolation_level=None,
            check_same_thread=False,
        )  # fmt: skip

    return connection


def connect_for_loop(path: str, busy_timeout: float) -> sqlite3.Connection:
    """Open the write connection: WAL, NORMAL sync, no automatic checkpoint.

    The busy timeout applies while opening, because another process may
    be recovering a WAL left by a killed one. It is then set to zero, so
    a busy file never makes a statement wait on the event loop.
    """
    connection = connect(path, busy_timeout)
    try:
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute("PRAGMA wal_autocheckpoint=0")
        # A read makes SQLite create the WAL file if no process has yet.
        connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
        # A file that can be read but not written opens without error: fail
        # here, once, rather than at every claim.
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        connection.execute("BEGIN IMMEDIATE")
        try:
            connection.execute(f"PRAGMA user_version = {int(version)}")
        finally:
            connection.execute("ROLLBACK")
        connection.execute("PRAGMA busy_timeout=0")
    except BaseException:
        connection.close()
        raise

    return connection


Operation = Callable[[sqlite3.Connection], Any]


class _Pending(msgspec.Struct):
    operation: Operation
    future: asyncio.Future[Any]
    value: Any = None


class WriterStatistics(msgspec.Struct, frozen=True):
    """Counters of one writer."""

    batches: int
    operations: int
    retries: int
    syncs: int = 0
    checkpoints: int = 0


class BatchWriter:
    """The write connection of one SQLite file and its syncer thread."""

    def __init__(self, path: str, *, busy_timeout: float = 5.0) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connection: sqlite3.Connection | None = None
        self._queue: list[_Pending] = []
        self._flush_handle: asyncio.Handle | None = None
        self._flush_soon = False
        self._busy_since: float | None = None
        self._busy_attempt = 0
        self._busy_retries = 0  # logged retries of the current busy spell
        self._closing = False
        # Shared with the syncer thread, under `_sync_lock`.
        self._sync_lock = threading.Condition()
        self._unsynced: list[_Pending] = []
        self._sync_stop = False
        self._syncer: threading.Thread | None = None
        self._checkpointer: threading.Thread | None = None
        self._checkpoint_requested = threading.Event()
        self._commits = 0
        self._wal_fd = -1
        self._wal_path = ""
        self._wal_inode = 0
        self._synced = asyncio.Event()
        self._in_sync = 0
        self._batches = 0
        self._operations = 0
        self._retries = 0
        self._syncs = 0
        self._checkpoints = 0

    async def start(self) -> None:
        """Open the connection and the WAL file (in a thread), start the syncer."""
        self._loop = asyncio.get_running_loop()
        self._connection, self._wal_fd = await asyncio.to_thread(self._open)
        self._syncer = threading.Thread(
            target=self._sync_main, name=f"fleetd-sqlite-sync:{self.path}", daemon=True
        )
        self._syncer.start()
        self._checkpointer = threading.Thread(
            target=self._checkpoint_main,
            name=f"fleetd-sqlite-checkpoint:{self.path}",
            daemon=True,
        )
        self._checkpointer.start()

    def _open(self) -> tuple[sqlite3.Connection, int]:
        attempt = 0
        while True:
            try:
                connection = connect_for_loop(self.path, self.busy_timeout)
                break
            except sqlite3.Error as error:
                attempt += 1
                if not is_transient(error) or attempt > 20:
                    raise
                self._log_retry(attempt, retry_delay(attempt), error)
                time.sleep(retry_delay(attempt))
        try:
            # SQLite keeps the WAL beside the file a symlink points to.
            wal = os.path.realpath(self.path) + "-wal"
            fd = os.open(wal, os.O_RDONLY | os.O_CLOEXEC)
            # The WAL's folder entry must be durable too. SQLite syncs the
            # folder only at its own first sync of a new WAL, which may be far off.
            folder = os.open(os.path.dirname(wal), os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
        except BaseException:
            connection.close()
            raise

        self._wal_path = wal
        self._wal_inode = os.fstat(fd).st_ino

        return connection, fd

    def submit(
        self, operation: Operation, *, urgent: bool = True
    ) -> asyncio.Future[Any]:
        """Queue `operation`; the future gets its result once it is durable.

        An operation that is not urgent may wait up to `LAZY_DELAY` for an
        urgent one to share its commit. Must be called on the event loop
        that started the writer.
        """
        loop = self._loop
        if loop is None or self._closing or self._connection is None:
            raise StoreClosed(f"state store {self.path} is closed")
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append(_Pending(operation, future))
        if self._busy_since is not None:
            return future  # the pending retry takes it
        if urgent:
            if not self._flush_soon:
                if self._flush_handle is not None:
                    self._flush_handle.cancel()
                self._flush_soon = True
                self._flush_handle = loop.call_soon(self._flush)
        elif self._flush_handle is None:
            self._flush_handle = loop.call_later(LAZY_DELAY, self._flush)

        return future

    def read(self, read: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run `read` on the write connection now, outside any transaction.

        For a read of a few rows by key. In WAL mode a reader does not wait
        for a writer, and with no busy timeout a file that is busy for
        another reason (WAL recovery) raises its sqlite3 error at once.
        The read returns commits of this process that are not yet synced.
        """
        if self._connection is None:
            raise StoreClosed(f"state store {self.path} is closed")
        return read(self._connection)

    async def stop(self) -> None:
        """Commit and sync what is queued, then close.

        A batch that is waiting for a busy or full database gets one more
        attempt; if that fails too, its operations fail with `StoreClosed`.
        """
        if self._connection is None:
            return
        self._closing = True
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        while self._queue:
            if not self._run_batch(final=True):
                break
        await self._wait_synced()
        with self._sync_lock:
            self._sync_stop = True
            self._sync_lock.notify()
        self._checkpoint_requested.set()
        connection, self._connection = self._connection, None
        threads = [self._syncer, self._checkpointer]
        self._syncer = self._checkpointer = None

        def close() -> None:
            for thread in threads:
                if thread is not None:
                    thread.join()
            connection.close()
            os.close(self._wal_fd)

        await asyncio.to_thread(close)

    def statistics(self) -> WriterStatistics:
        return WriterStatistics(
            self._batches,
            self._operations,
            self._retries,
            self._syncs,
            self._checkpoints,
        )

    # On the event loop

    def _flush(self) -> None:
        self._flush_handle = None
        self._flush_soon = False
        self._run_batch()

    def _run_batch(self, *, final: bool = False) -> bool:
        """Run one batch; False when it must wait for a busy or full file."""
        batch = self._queue[:MAX_BATCH]
        del self._queue[:MAX_BATCH]
        connection = self._connection
        assert connection is not None
        try:
            results = self._execute(connection, batch)
        except _BatchAborted as aborted:
            # The others were rolled back with it: they run again next turn
            # (or in the next round of `stop`).
            failed = batch.pop(aborted.index)
            if not failed.future.done():
                failed.future.set_exception(aborted.error)
            self._queue[:0] = batch
            if self._queue and self._flush_handle is None and not self._closing:
                self._flush_soon = True
                self._flush_handle = self._loop.call_soon(self._flush)  # type: ignore[union-attr]
            return True
        except sqlite3.Error as error:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            if is_transient(error) and not final:
                self._queue[:0] = batch
                self._wait_busy(error)
                return False
            if final and is_transient(error):
                # The store is closing: give up rather than wait.
                error = StoreClosed(
                    f"state store {self.path} closed while busy: {error}"
                )
            log.error("state_store_write_failed", store=self.path, error=str(error))
            results = [(False, error)] * len(batch)
        self._busy_since = None
        self._busy_attempt = 0
        self._busy_retries = 0
        self._batches += 1
        self._operations += len(batch)
        durable: list[_Pending] = []
        for pending, (ok, value) in zip(batch, results, strict=True):
            if pending.future.done():
                continue
            if ok:
                pending.value = value
                durable.append(pending)
            else:
                pending.future.set_exception(value)
        self._commits += 1
        if self._commits >= CHECKPOINT_COMMITS:
            self._commits = 0
            self._checkpoint_requested.set()
        if durable:
            self._in_sync += len(durable)
            with self._sync_lock:
                self._unsynced.extend(durable)
                self._sync_lock.notify()
        if self._queue and self._flush_handle is None and not self._closing:
            self._flush_soon = True
            self._flush_handle = self._loop.call_soon(self._flush)  # type: ignore[union-attr]

        return True

    @staticmethod
    def _execute(
        connection: sqlite3.Connection, batch: list[_Pending]
    ) -> list[tuple[bool, Any]]:
        connection.execute("BEGIN IMMEDIATE")
        if len(batch) == 1:
            # One operation needs no savepoint: if it fails, nothing commits.
            try:
                value = batch[0].operation(connection)
            except sqlite3.Error as error:
                if is_transient(error):
                    raise
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                return [(False, error)]
            except Exception as error:  # noqa: BLE001 - handed to the awaiting task
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                return [(False, error)]
            connection.execute("COMMIT")
            return [(True, value)]
        results: list[tuple[bool, Any]] = []
        for index, pending in enumerate(batch):
            connection.execute("SAVEPOINT operation")
            try:
                value = pending.operation(connection)
            except sqlite3.Error as error:
                if is_transient(error):
                    raise
                if not connection.in_transaction:
                    raise _BatchAborted(index, error) from error
                connection.execute("ROLLBACK TO operation")
                results.append((False, error))
            except Exception as error:  # handed to the awaiting task, or raised
                if not connection.in_transaction:
                    raise _BatchAborted(index, error) from error
                connection.execute("ROLLBACK TO operation")
                results.append((False, error))
            else:
                results.append((True, value))
            connection.execute("RELEASE operation")
        connection.execute("COMMIT")

        return results

    def _wait_busy(self, error: sqlite3.Error) -> None:
        now = time.monotonic()
        if self._busy_since is None:
            self._busy_since = now
        self._busy_attempt += 1
        if now - self._busy_since < self.busy_timeout:
            # As SQLite's own busy handler would: short waits, not logged.
            ceiling = min(BUSY_DELAY_MAX, BUSY_DELAY * 2 ** min(self._busy_attempt, 8))
            delay = random.uniform(ceiling / 2, ceiling)
        else:
            self._retries += 1
            self._busy_retries += 1
            delay = retry_delay(self._busy_retries)
            self._log_retry(self._busy_retries, delay, error)
        if (getattr(error, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_FULL:
            # A checkpoint lets the WAL start over in the space it has.
            self._checkpoint_requested.set()
        self._flush_soon = False
        self._flush_handle = self._loop.call_later(delay, self._flush)  # type: ignore[union-attr]

    def _log_retry(self, attempt: int, delay: float, error: sqlite3.Error) -> None:
        log.warning(
            "state_store_retry",
            store=self.path,
            attempt=attempt,
            delay_s=round(delay, 3),
            error=str(error),
        )

    async def _wait_synced(self) -> None:
        while self._in_sync:
            self._synced.clear()
            await self._synced.wait()

    def _deliver(self, batch: list[_Pending], error: OSError | None) -> None:
        """Complete the futures of a synced batch, on the event loop."""
        self._in_sync -= len(batch)
        for pending in batch:
            future = pending.future
            if future.done():
                continue
            if error is None:
                future.set_result(pending.value)
            else:
                future.set_exception(error)
        if not self._in_sync:
            self._synced.set()

    # Syncer thread

    def _sync_main(self) -> None:
        while True:
            with self._sync_lock:
                while not self._unsynced and not self._sync_stop:
                    self._sync_lock.wait()
                if not self._unsynced:
                    break
                batch, self._unsynced = self._unsynced, []
            error: OSError | None = None
            try:
                os.fdatasync(self._wal_fd)
                self._check_wal()
                self._syncs += 1
            except OSError as failure:
                # The frames may or may not be on disk: report none durable.
                error = failure
                log.error(
                    "state_store_sync_failed", store=self.path, error=str(failure)
                )
            try:
                self._loop.call_soon_threadsafe(self._deliver, batch, error)  # type: ignore[union-attr]
            except RuntimeError:
                pass  # the event loop is closed, so no task awaits these results

    def _check_wal(self) -> None:
        """Raise OSError when the WAL synced is no longer the file's WAL.

        Someone removed or replaced it: commits then land in a file that
        no process reads after a restart, so none may be reported durable.
        """
        try:
            inode = os.stat(self._wal_path).st_ino
        except FileNotFoundError:
            inode = 0
        if inode != self._wal_inode:
            raise OSError(
                f"the WAL {self._wal_path} was removed or replaced while open;"
                " restart fleetd and check the state database"
            )

    # Checkpointer thread

    def _checkpoint_main(self) -> None:
        checkpointer: sqlite3.Connection | None = None
        while True:
            self._checkpoint_requested.wait()
            self._checkpoint_requested.clear()
            if self._sync_stop:
                break
            checkpointer = self._checkpoint(checkpointer)
        if checkpointer is not None:
            checkpointer.close()

    def _checkpoint(
        self, checkpointer: sqlite3.Connection | None
    ) -> sqlite3.Connection | None:
        try:
            if checkpointer is None:
                checkpointer = connect(self.path, CHECKPOINT_WAIT)
            # RESTART keeps writers out while it copies the WAL into the
            # database (the loop's commits wait a few ms, as on a busy file).
            # A passive checkpoint rarely caught up with the loop's commits,
            # and the WAL grew past 25 MB over 20,000 runs.
            busy, frames, copied = checkpointer.execute(
                "PRAGMA wal_checkpoint(RESTART)"
            ).fetchone()
            self._checkpoints += 1
            if not busy and frames == copied:
                # Every frame is in the database, so the next write starts
                # the WAL over. Writing here syncs the new WAL header in this
                # thread, not on the loop (unless the loop commits first).
                checkpointer.execute("BEGIN IMMEDIATE")
                version = checkpointer.execute("PRAGMA user_version").fetchone()[0]
                checkpointer.execute(f"PRAGMA user_version = {int(version)}")
                checkpointer.execute("COMMIT")
        except sqlite3.Error as error:
            if checkpointer is not None and checkpointer.in_transaction:
                checkpointer.execute("ROLLBACK")
            if not is_transient(error):
                log.error(
                    "state_store_checkpoint_failed", store=self.path, error=str(error)
                )
        except OSError as error:
            log.error(
                "state_store_checkpoint_failed", store=self.path, error=str(error)
            )

        return checkpointer
