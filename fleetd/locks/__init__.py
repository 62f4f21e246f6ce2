"""Lock manager and state stores: locks, leases, marks and history."""

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
    StateStore,
)
from fleetd.locks.common import SchemaError
from fleetd.locks.manager import LockManager, LockManagerStatistics, Transaction
from fleetd.locks.owner import current_owner, owner_alive
from fleetd.locks.stores import open_store, upgrade

__all__ = [
    "Done",
    "Grant",
    "HistoryEntry",
    "InTransaction",
    "LeaseLost",
    "LockInfo",
    "LockKey",
    "LockManager",
    "LockManagerStatistics",
    "LockRefused",
    "Locked",
    "Mark",
    "Owner",
    "Resolution",
    "SchemaError",
    "StateStore",
    "Transaction",
    "current_owner",
    "open_store",
    "owner_alive",
    "upgrade",
]
