"""sd_notify(3): tell systemd that the daemon is ready, reloading or stopping.

The protocol is one datagram of `KEY=VALUE` lines sent to the unix socket
named by `NOTIFY_SOCKET`; a name starting with `@` is in the abstract
namespace. It is written here by hand because no maintained package on PyPI
covers it: `sdnotify` (last release 2017) hides every error behind a bare
`except`, `systemd-watchdog` exposes only READY, STATUS and WATCHDOG and
not RELOADING with MONOTONIC_USEC or STOPPING, and `systemd-python` or
`cysystemd` need the libsystemd headers and a C compiler to install.

The watchdog pings come from a task of the event loop (`run_watchdog`), not
from a thread, so a loop that is stuck stops pinging and systemd restarts
the service.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping, MutableMapping

import anyio
import structlog

__all__ = ["Notifier", "run_watchdog", "take_notify_environment", "watchdog_period"]

log = structlog.get_logger()

# The variables the service manager sets for the main process only. They are
# removed from the environment once read, so the programs that agents run
# cannot notify systemd in fleetd's name.
_NOTIFY_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notifier:
    """Sender of sd_notify messages to the socket systemd named.

    Without a socket every method does nothing, so the daemon runs the same
    outside systemd. A failed send is logged (the first one at warning,
    later ones counted) and never raised: the daemon keeps running.

    Args:
        address: the socket path, `@name` for the abstract namespace, or
            None when not run by systemd.
    """

    def __init__(self, address: str | None) -> None:
        self._address: str | None = None
        self._socket: socket.socket | None = None
        self.failures = 0
        self.sent = 0
        if not address:
            return
        if address.startswith("@"):
            self._address = "\0" + address[1:]
        elif address.startswith("/"):
            self._address = address
        else:
            log.warning("notify_socket_unsupported", address=address)
            return
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        # A full socket queue must not stall the event loop for long.
        self._socket.settimeout(1.0)

    @classmethod
    def from_environment(
        cls, environ: MutableMapping[str, str] | None = None
    ) -> Notifier:
        """Return a notifier for `NOTIFY_SOCKET` (default: `os.environ`)."""
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        """Whether a socket was given."""
        return self._socket is not None

    def notify(self, **fields: str | int) -> bool:
        """Send one message of `KEY=value` lines; return whether it went out.

        Keys are given in lower case (`ready=1`) and sent in upper case.
        Newlines in a value are replaced by spaces, since each line of the
        message is one assignment.
        """
        if self._socket is None or self._address is None:
            return False
        lines = [
            f"{key.upper()}={str(value).replace(chr(10), ' ')}"
            for key, value in fields.items()
        ]
        data = ("\n".join(lines) + "\n").encode()
        try:
            self._socket.sendto(data, self._address)
        except OSError as exc:
            self.failures += 1
            if self.failures == 1:
                log.warning("notify_failed", error=str(exc), message=lines[0])
            return False
        self.sent += 1

        return True

    def ready(self, status: str | None = None) -> bool:
        """Send `READY=1`, with `STATUS=` when given."""
        if status is None:
            return self.notify(ready=1)
        return self.notify(ready=1, status=status)

    def reloading(self, status: str | None = None) -> bool:
        """Send `RELOADING=1` with `MONOTONIC_USEC`, as Type=notify-reload expects."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        if status is None:
            return self.notify(reloading=1, monotonic_usec=usec)
        return self.notify(reloading=1, monotonic_usec=usec, status=status)

    def stopping(self, status: str | None = None) -> bool:
        """Send `STOPPING=1`, with `STATUS=` when given."""
        if status is None:
            return self.notify(stopping=1)
        return self.notify(stopping=1, status=status)

    def status(self, text: str) -> bool:
        """Send `STATUS=text`."""
        return self.notify(status=text)

    def watchdog(self) -> bool:
        """Send `WATCHDOG=1`."""
        return self.notify(watchdog=1)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def watchdog_period(environ: Mapping[str, str] | None = None) -> float | None:
    """Return the seconds between watchdog pings, or None when it is off.

    That is half of `WATCHDOG_USEC`, as sd_watchdog_enabled(3) advises, when
    `WATCHDOG_PID` is unset or names this process.
    """
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None

    return int(usec) / 1_000_000 / 2


def take_notify_environment(
    environ: MutableMapping[str, str] | None = None,
) -> dict[str, str]:
    """Remove the sd_notify variables from `environ` and return them."""
    env = os.environ if environ is None else environ
    taken = {}
    for name in _NOTIFY_VARIABLES:
        value = env.pop(name, None)
        if value is not None:
            taken[name] = value

    return taken


async def run_watchdog(notifier: Notifier, period: float) -> None:
    """Send `WATCHDOG=1` every `period` seconds until cancelled."""
    log.debug("watchdog_started", period_s=period)
    while True:
        notifier.watchdog()
        await anyio.sleep(period)
