"""A fleetd killed mid-Run: its lock is recovered by another, then retried."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.fleet.conftest import PgSite, json_lines

pytestmark = pytest.mark.postgres

SLOW = """
    NAME     Slow
    MNEMONIC slow
    WORKFLOW tickets
    WHEN this.status = "slow" DO
        EXEC_COMMAND sleep 30
    END
    SET this.status = "closed"
    """


def children(pid: int) -> list[int]:
    """Return the pids of the direct children of `pid`."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.extend(int(child) for child in (task / "children").read_text().split())
    return found


def wait_for_sleep(site: PgSite, process: subprocess.Popen[bytes]) -> list[int]:
    """Wait until `process` holds only ticket 2's lock and runs `sleep`.

    The engine starts ticket 2 while ticket 1's commit is still being
    written, so the wait also covers that commit.
    """
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, "fleetd once ended before its Run"
        locks = site.query(
            "SELECT record FROM fleetd_locks WHERE owner_pid = $1", process.pid
        )
        sleeping = children(process.pid)
        if [row[0] for row in locks] == ["2"] and sleeping:
            return sleeping
        time.sleep(0.05)
    raise AssertionError("fleetd did not start the Run of ticket 2 within 30 s")


def outcomes(stdout: str) -> dict[str, list[str | None]]:
    """Return each record's outcomes and reasons, in report order."""
    found: dict[str, list[str | None]] = {}
    for report in json_lines(stdout):
        found.setdefault(report["record"], []).append(
            f"{report['outcome']}: {report['reason']}"
        )
    return found


def test_killed_run_is_interrupted_then_retried(site: PgSite) -> None:
    site.settings(daemon='lease = "2s"')
    site.tickets(3)
    site.query("UPDATE tickets SET status = 'slow' WHERE id = 2")
    site.write("slow.agent", SLOW)
    assert site.run("db", "upgrade").returncode == 0

    # A fleetd killed while ticket 2's program runs leaves its lock held.
    with (site.root / "killed.out").open("w") as stdout:
        process = subprocess.Popen(
            site.command("-q", "once", "--json"),
            cwd=site.root,
            stdout=stdout,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
    try:
        sleeping = wait_for_sleep(site, process)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    for pid in sleeping:
        os.kill(pid, signal.SIGKILL)

    status = json.loads(site.run("status", "--json").stdout)
    [lock] = status["locks"]
    assert lock["record"] == "2"
    assert lock["owner"].endswith(f":{process.pid}")

    # Held by a host that stopped renewing: the lock is refused until its
    # lease expires. Another host's pid cannot be checked, so only the
    # lease counts.
    site.query(
        "UPDATE fleetd_locks SET owner_host = 'gone.invalid',"
        " expires = extract(epoch from now()) + 3"
    )
    held = site.run("-q", "once", "--json")
    assert held.returncode == 0, held.stderr
    assert outcomes(held.stdout) == {
        "1": ["done: None"],
        "2": [f"locked: locked by gone.invalid:{process.pid} since {lock['since']}"],
        "3": ["committed: None"],
    }

    while site.query(
        "SELECT 1 FROM fleetd_locks WHERE expires > extract(epoch from now())"
    ):
        time.sleep(0.2)
    recovered = site.run("-q", "once", "--json")
    assert recovered.returncode == 1, recovered.stderr
    assert outcomes(recovered.stdout) == {
        "1": ["done: None"],
        "2": ["error: interrupted"],
        "3": ["done: None"],
    }
    assert site.query("SELECT status FROM tickets WHERE id = 2")[0][0] == "slow"

    status = json.loads(site.run("status", "--json").stdout)
    assert status["locks"] == []
    [error] = status["errors"]
    assert (error["record"], error["reason"]) == ("2", "interrupted")
    history = json_lines(site.run("history", "2", "--json").stdout)
    assert [(e["resolution"], e["reason"]) for e in history] == [
        ("error", "interrupted")
    ]

    # An operator looks, fixes the row and retries the record.
    site.query("UPDATE tickets SET status = 'open' WHERE id = 2")
    retried = site.run("retry", "-a", "Slow", "2")
    assert retried.returncode == 0, retried.stderr
    assert "cleared 1 of 1" in retried.stderr
    again = site.run("-q", "once", "--json")
    assert again.returncode == 0, again.stderr
    assert outcomes(again.stdout)["2"] == ["committed: None"]
    assert site.query("SELECT status FROM tickets WHERE id = 2")[0][0] == "closed"
    history = json_lines(site.run("history", "2", "--json").stdout)
    assert [(e["resolution"], e["reason"]) for e in history] == [
        ("committed", None),
        ("error", "interrupted"),
    ]
    assert json.loads(site.run("status", "--json").stdout)["errors"] == []
