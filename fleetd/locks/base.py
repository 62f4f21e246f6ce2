"""State store interface: locks, leases, fencing tokens, resolutions.

One interface serves the embedded SQLite store and the PostgreSQL store of
fleet mode. Every method is a coroutine; a store that talks to a blocking
driver runs it off the event loop. Every write is durable when the
coroutine returns.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import msgspec


class Resolution(enum.Enum):
    """Final state of a run that held a lock."""

    COMMIT = "committed"
    ROLLBACK = "rolled_back"
    ERROR = "error"


class LockKey(msgspec.Struct, frozen=True):
    """Key of a lock. `record` is "" for the Null workflow."""

    workflow: str
    record: str
    mnemonic: str


class Owner(msgspec.Struct, frozen=True):
    """Owner of a lock: host name, pid, pid start time, daemon instance."""

    host: str
    pid: int
    instance: str
    started: int = 0  # process start time in clock ticks, to detect pid reuse

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}"


class LockInfo(msgspec.Struct, frozen=True):
    """A held lock as stored."""

    key: LockKey
    agent: str
    owner: Owner
    token: int
    since: float  # Unix time the lock was granted
    expires: float  # Unix time the lease runs out unless renewed
    run_id: str


class Grant(msgspec.Struct, frozen=True):
    """A granted lock: the fencing token and the lease expiry."""

    key: LockKey
    token: int
    expires: float


class Mark(msgspec.Struct, frozen=True):
    """The committed or error mark of a record for one mnemonic."""

    key: LockKey
    agent: str
    resolution: Resolution
    reason: str | None
    at: float


class HistoryEntry(msgspec.Struct, frozen=True):
    """One resolution of one record, as `fleetd history` shows it."""

    key: LockKey
    agent: str
    resolution: Resolution
    reason: str | None
    run_id: str
    owner: str
    started: float
    at: float


class LockRefused(Exception):
    """The lock was not granted."""


class Locked(LockRefused):
    """Another run holds the lock."""

    def __init__(self, holder: LockInfo) -> None:
        super().__init__(f"locked by {holder.owner} since {holder.since}")
        self.holder = holder


class Done(LockRefused):
    """The mnemonic already committed the record, with or without error."""

    def __init__(self, mark: Mark) -> None:
        super().__init__(
            "in error" if mark.resolution is Resolution.ERROR else "committed"
        )
        self.mark = mark


class LeaseLost(Exception):
    """The fencing token no longer matches: the holder may not write."""


# Work done inside the store's resolution transaction. The store passes its
# own connection object; only a workflow sharing the store's database uses it.
# PostgreSQL's is a coroutine function taking an asyncpg connection; SQLite's
# is a plain function taking the sqlite3 write connection, because the
# store's statements run synchronously on the event loop.
InTransaction = Callable[[Any], Awaitable[None] | None]


class StateStore(Protocol):
    """Durable home of locks, marks and the resolution history."""

    url: str

    async def open(self, *, read_only: bool = False) -> None:
        """Connect, create or migrate the schema.

        With `read_only`, only the read methods (`locks`, `marks`, `history`,
        `counts`) may be called: the schema must already be at this
        version, and nothing is created or written.
        """
        ...

    async def close(self) -> None: ...

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
        """Take the lock, or raise `Locked` or `Done` (when `check_mark`)."""
        ...

    async def renew(
        self, grants: list[Grant], owner: Owner, lease: float
    ) -> list[Grant]:
        """Extend the leases; return the renewed grants, omitting lost ones."""
        ...

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
        """Release the lock, write the mark (when `mark`) and history.

        Raises `LeaseLost` when `grant.token` is no longer the lock's token;
        then nothing is written.
        """
        ...

    async def validate(self, grant: Grant) -> None:
        """Raise `LeaseLost` unless `grant` still holds its lock."""
        ...

    async def abandoned(
        self, host: str, alive: Callable[[Owner], bool]
    ) -> list[LockInfo]:
        """List locks whose lease expired, or whose owner on `host` died."""
        ...

    async def resolve_abandoned(self, lock: LockInfo, reason: str) -> bool:
        """Resolve an abandoned lock as error; False if another did first."""
        ...

    async def locks(self) -> list[LockInfo]: ...

    async def marks(self, *, errors_only: bool = False) -> list[Mark]: ...

    async def history(
        self, record: str, workflow: str | None = None
    ) -> list[HistoryEntry]:
        """Return every resolution of `record`, newest first."""
        ...

    async def counts(self) -> dict[str, dict[str, int]]:
        """Resolutions per agent name and resolution value."""
        ...

    async def retry(self, workflow: str, mnemonic: str, records: list[str]) -> int:
        """Clear the marks of `records` of `workflow` for `mnemonic`; return how many."""
        ...
