"""The `fleetd run` daemon: supervisor, signals, sd_notify and logging setup.

`fleetd.daemon.logging` imports nothing from fleetd but
`fleetd.daemon.journal`, so every command can set up logging before
anything slow is imported; the supervisor and `run_daemon` load on first
use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fleetd.daemon.logging import configure_logging

if TYPE_CHECKING:
    from fleetd.daemon.run import run_daemon
    from fleetd.daemon.supervisor import Supervisor

__all__ = ["Supervisor", "configure_logging", "run_daemon"]


def __getattr__(name: str) -> Any:
    if name == "run_daemon":
        from fleetd.daemon.run import run_daemon

        return run_daemon
    if name == "Supervisor":
        from fleetd.daemon.supervisor import Supervisor

        return Supervisor
    raise AttributeError(f"module 'fleetd.daemon' has no attribute {name!r}")
