"""sd_notify messages and the watchdog period."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable

import anyio
import pytest

from fleetd.daemon.notify import (
    Notifier,
    run_watchdog,
    take_notify_environment,
    watchdog_period,
)


def test_ready_with_status(listener, parse_notify: Callable) -> None:
    notifier = Notifier(str(listener.path))
    assert notifier.ready("agents: 3 scheduled")
    assert parse_notify(listener.receive()) == {
        "READY": "1",
        "STATUS": "agents: 3 scheduled",
    }


def test_reloading_carries_monotonic_usec(listener, parse_notify: Callable) -> None:
    notifier = Notifier(str(listener.path))
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    message = parse_notify(listener.receive())
    assert message["RELOADING"] == "1"
    assert before <= int(message["MONOTONIC_USEC"]) <= after


def test_stopping_and_watchdog(listener, parse_notify: Callable) -> None:
    notifier = Notifier(str(listener.path))
    notifier.stopping("stopping: 2 runs in progress")
    notifier.watchdog()
    assert parse_notify(listener.receive()) == {
        "STOPPING": "1",
        "STATUS": "stopping: 2 runs in progress",
    }
    assert parse_notify(listener.receive()) == {"WATCHDOG": "1"}


def test_status_newlines_flattened(listener, parse_notify: Callable) -> None:
    Notifier(str(listener.path)).status("last error: a\nb")
    assert parse_notify(listener.receive()) == {"STATUS": "last error: a b"}


def test_abstract_namespace_socket(parse_notify: Callable) -> None:
    name = f"fleetd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        Notifier("@" + name).ready()
        assert parse_notify(sock.recv(4096)) == {"READY": "1"}


def test_without_socket_does_nothing() -> None:
    notifier = Notifier(None)
    assert not notifier.enabled
    assert not notifier.ready()


def test_send_failure_counted_not_raised(tmp_path) -> None:
    notifier = Notifier(str(tmp_path / "missing.sock"))
    assert not notifier.ready()
    assert not notifier.watchdog()
    assert notifier.failures == 2


def test_watchdog_period_is_half() -> None:
    assert watchdog_period({"WATCHDOG_USEC": "4000000"}) == 2.0
    assert (
        watchdog_period({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())})
        == 2.0
    )


def test_watchdog_off_for_other_pid() -> None:
    assert watchdog_period({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_period({}) is None
    assert watchdog_period({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_period({"WATCHDOG_USEC": "soon"}) is None


def test_notify_environment_removed() -> None:
    env = {
        "NOTIFY_SOCKET": "/run/x",
        "WATCHDOG_USEC": "1",
        "WATCHDOG_PID": "2",
        "PATH": "/bin",
    }
    taken = take_notify_environment(env)
    assert taken == {
        "NOTIFY_SOCKET": "/run/x",
        "WATCHDOG_USEC": "1",
        "WATCHDOG_PID": "2",
    }
    assert env == {"PATH": "/bin"}


@pytest.mark.anyio
async def test_watchdog_pings_from_loop(listener, parse_notify: Callable) -> None:
    notifier = Notifier(str(listener.path))
    with anyio.move_on_after(0.35):
        await run_watchdog(notifier, 0.1)
    pings = 0
    listener.socket.setblocking(False)
    while True:
        try:
            data = listener.socket.recv(4096)
        except BlockingIOError:
            break
        assert parse_notify(data) == {"WATCHDOG": "1"}
        pings += 1
    assert pings >= 3
