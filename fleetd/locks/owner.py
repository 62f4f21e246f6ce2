"""Identity of this process as a lock owner, and liveness of other owners.

A pid alone does not name a process: the kernel reuses pids. The owner
therefore also records the process start time (field 22 of
/proc/PID/stat, in clock ticks since boot), and a pid whose start time
differs from the recorded one belongs to another process.
"""

from __future__ import annotations

import os
import secrets
import socket

from fleetd.locks.base import Owner

_cached: Owner | None = None


def process_start_time(pid: int) -> int | None:
    """Return the start time of `pid` in clock ticks, or None when it is gone.

    A zombie (exited, not yet reaped) counts as gone. Without /proc the
    start time is unknown and 0 is returned for a process that exists.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read().decode("ascii", "replace")
    except FileNotFoundError:
        return None
    except OSError:
        return _exists_without_proc(pid)

    # The command name (field 2) may contain spaces and parentheses, so the
    # fields are counted from the last ")".
    fields = text[text.rfind(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None

    return int(fields[19])


def _exists_without_proc(pid: int) -> int | None:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return 0

    return 0


def owner_alive(owner: Owner) -> bool:
    """Tell whether the process `owner` names still runs on this host."""
    started = process_start_time(owner.pid)
    if started is None:
        return False
    return not (owner.started and started and started != owner.started)


def current_owner() -> Owner:
    """Return the owner for this process: host, pid, start time, instance.

    The instance id is random and made once per process; a forked child
    gets its own.
    """
    global _cached
    pid = os.getpid()
    if _cached is None or _cached.pid != pid:
        _cached = Owner(
            host=socket.gethostname(),
            pid=pid,
            instance=secrets.token_hex(8),
            started=process_start_time(pid) or 0,
        )

    return _cached
