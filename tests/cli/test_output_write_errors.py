"""Commands whose standard output or error fails on write.

A full disk or a pipe whose reader left is a fault of the place the output
goes, not of the agent or the record. `fleetd once` drops the ECHO lines it
cannot write and still commits. The daemon must do the same. Otherwise a
failed ECHO fails Run, so the record is rolled back every cycle, or ends in
`error` until an operator retries it when the agent has no Cleanup. The
reporting commands must fail with a message, not a Python traceback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from tests.cli.support import Site, fleetd_command

# Runs ECHO for every record and has a Cleanup that succeeds.
ECHOING = """\
NAME     Echoing
MNEMONIC echoing
WORKFLOW requests
CONCURRENCY 4

ECHO done with ${this.id}
SET this.status = "done"
CLEANUP
    EXEC_COMMAND true
END
"""

RECORDS = ["r1", "r2", "r3"]


def make_site(site: Site) -> None:
    site.write("90-fast.toml", '[daemon]\nsplay = "0s"\ninterval = "1s"\n')
    site.write("agent.agent", ECHOING)
    for record in RECORDS:
        site.request(record, status="new")


def status_json(site: Site) -> dict:
    status = site.run("status", "--json")
    assert status.returncode == 0, status.stderr
    return json.loads(status.stdout)


def run_daemon_until_resolved(site: Site, stdout: int) -> None:
    """Run `fleetd run` with `stdout` until every record has a resolution."""
    process = subprocess.Popen(
        fleetd_command() + ["--conf-dir", str(site.conf_dir), "run"],
        cwd=site.root,
        stdout=stdout,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            time.sleep(0.5)
            counts = status_json(site)["counts"].get("Echoing", {})
            if sum(counts.values()) >= len(RECORDS):
                break
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=90)


def test_daemon_full_stdout_commits(site: Site) -> None:
    make_site(site)
    with open("/dev/full", "wb") as full:
        run_daemon_until_resolved(site, full.fileno())
    status = status_json(site)
    assert status["locks"] == []
    assert status["errors"] == []
    assert status["counts"]["Echoing"] == {"committed": len(RECORDS)}


def test_daemon_stdout_reader_gone_commits(site: Site) -> None:
    make_site(site)
    reader, writer = os.pipe()
    os.close(reader)
    try:
        run_daemon_until_resolved(site, writer)
    finally:
        os.close(writer)
    status = status_json(site)
    assert status["locks"] == []
    assert status["errors"] == []
    assert status["counts"]["Echoing"] == {"committed": len(RECORDS)}


@pytest.mark.parametrize(
    "arguments",
    [
        ["status"],
        ["status", "--json"],
        ["history", "r1"],
        ["history", "r1", "--json"],
    ],
)
def test_report_full_stdout_no_traceback(site: Site, arguments: list[str]) -> None:
    make_site(site)
    assert site.run("once").returncode == 0
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            fleetd_command() + ["--conf-dir", str(site.conf_dir), *arguments],
            cwd=site.root,
            stdout=full,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            timeout=60,
            check=False,
        )
    assert "Traceback" not in result.stderr
    assert result.returncode == 1


def test_missing_command_full_stderr_exits_2(site: Site) -> None:
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            fleetd_command() + ["--conf-dir", str(site.conf_dir)],
            cwd=site.root,
            stdout=subprocess.DEVNULL,
            stderr=full,
            stdin=subprocess.DEVNULL,
            timeout=60,
            check=False,
        )
    assert result.returncode == 2
