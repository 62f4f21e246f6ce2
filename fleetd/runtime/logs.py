"""Syslog levels on structlog loggers, and the keys every run event carries.

structlog's filtering loggers know the levels of the stdlib `logging`
module, which has no `notice`, `alert` or `emergency`. fleetd's own logger
(`fleetd.daemon.logging.FleetdLogger`) has a method for each; on any other
logger, an event at one of those goes out through the nearest stdlib
method and carries the syslog level itself in its `syslog_level` key, so
a journald renderer can set `PRIORITY` exactly.
"""

from __future__ import annotations

from typing import Any

from fleetd.logs import emit_syslog

# syslog level name -> (structlog method, syslog priority number)
SYSLOG_LEVELS: dict[str, tuple[str, int]] = {
    "emergency": ("critical", 0),
    "alert": ("critical", 1),
    "critical": ("critical", 2),
    "error": ("error", 3),
    "warning": ("warning", 4),
    "notice": ("info", 5),
    "info": ("info", 6),
    "debug": ("debug", 7),
}

# The keys bound with structlog.contextvars during a run.
RUN_KEYS = ("agent", "mnemonic", "workflow", "record", "phase", "run_id")


def log_at(log: Any, level: str, event: str, **fields: Any) -> None:
    """Log `event` at the syslog `level` (a lower-case name)."""
    if level not in SYSLOG_LEVELS:
        level = "info"
    if level in ("notice", "alert", "emergency"):
        emit_syslog(log, level, event, fields)
    else:
        getattr(log, level)(event, **fields)
