"""`fleetd once` and `fleetd run` with standard output or error unusable.

A log line that cannot be written (to a full disk, to a pipe whose reader
left, or to a closed descriptor) must not end a run before its resolution.
Each run still commits, and no lock stays in the state store.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time

from tests.cli.support import Site, fleetd_command

# Logs a program's output line at info and runs ECHO, for every record.
TALKING = """\
NAME     Talking
MNEMONIC talking
WORKFLOW requests
CONCURRENCY 4

EXEC_COMMAND sh -c "echo working on ${this.id}"
ECHO done with ${this.id}
SET this.status = "done"
CLEANUP
    EXEC_COMMAND true
END
"""

# Logs a program's output line at info, and has no ECHO and no Cleanup.
WORKING = """\
NAME     Working
MNEMONIC working
WORKFLOW requests
CONCURRENCY 4

EXEC_COMMAND sh -c "echo working on ${this.id}"
SET this.status = "done"
"""

# Prints one line, then another a second later, while its lock is held.
PAUSING = """\
NAME     Pausing
MNEMONIC pausing
WORKFLOW requests
CONCURRENCY 4
SCHEDULE every 1s

EXEC_COMMAND sh -c "echo starting ${this.id}; sleep 1; echo finishing ${this.id}"
SET this.status = "done"
"""

RECORDS = ["r1", "r2", "r3"]


def make_site(site: Site, agent: str = WORKING) -> None:
    site.write("90-verbose.toml", '[daemon]\nlog_level = "info"\n')
    site.write("agent.agent", agent)
    # Create the state store first, so the run's own log lines are the
    # first ones written to the unusable stream.
    assert site.run("status").returncode == 0
    for record in RECORDS:
        site.request(record, status="new")


def held_locks(site: Site) -> list[dict]:
    status = site.run("status", "--json")
    assert status.returncode == 0, status.stderr
    return json.loads(status.stdout)["locks"]


def spool_status(site: Site, record: str) -> str | None:
    return json.loads((site.spool / f"{record}.json").read_text()).get("status")


def run_with_shell_redirect(site: Site, redirect: str, *args: str):
    """Run fleetd through `sh`, which applies `redirect` (`2>&-`, say) first."""
    command = fleetd_command() + ["--conf-dir", str(site.conf_dir), *args]
    return subprocess.run(
        ["sh", "-c", f'exec "$@" {redirect}', "sh", *command],
        cwd=site.root,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def test_once_full_stderr_leaves_no_lock(site: Site) -> None:
    make_site(site)
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            fleetd_command() + ["--conf-dir", str(site.conf_dir), "once", "--json"],
            cwd=site.root,
            stdout=subprocess.PIPE,
            stderr=full,
            stdin=subprocess.DEVNULL,
            text=True,
            timeout=60,
            check=False,
        )
    outcomes = [
        json.loads(line)["outcome"]
        for line in result.stdout.splitlines()
        if line.startswith("{")
    ]
    assert held_locks(site) == []
    assert outcomes == ["committed"] * len(RECORDS)
    assert result.returncode == 0
    for record in RECORDS:
        assert spool_status(site, record) == "done", record


def test_once_stderr_reader_gone(site: Site) -> None:
    make_site(site)
    process = subprocess.Popen(
        fleetd_command() + ["--conf-dir", str(site.conf_dir), "once", "--json"],
        cwd=site.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    # The log reader leaves before fleetd logs anything, as
    # `fleetd once 2>&1 | head -0` would.
    assert process.stderr is not None
    process.stderr.close()
    stdout, _ = process.communicate(timeout=60)
    assert held_locks(site) == []
    assert stdout.count('"outcome": "committed"') == len(RECORDS)
    for record in RECORDS:
        assert spool_status(site, record) == "done", record


def test_daemon_stderr_reader_gone(site: Site) -> None:
    make_site(site, PAUSING)
    site.write("91-fast.toml", '[daemon]\nsplay = "0s"\n')
    process = subprocess.Popen(
        fleetd_command() + ["--conf-dir", str(site.conf_dir), "run"],
        cwd=site.root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    assert process.stderr is not None
    # Leave once the programs have started, while their runs hold locks.
    for line in process.stderr:
        if b"program_output" in line:
            break
    process.stderr.close()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and process.poll() is None:
            if all(spool_status(site, record) == "done" for record in RECORDS):
                break
            time.sleep(0.2)
        alive = process.poll() is None
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        process.wait(timeout=90)
    assert held_locks(site) == []
    for record in RECORDS:
        assert spool_status(site, record) == "done", record
    assert alive


def test_once_closed_stdout_commits(site: Site) -> None:
    make_site(site, TALKING)
    result = run_with_shell_redirect(site, ">&-", "once")
    assert "AttributeError" not in result.stderr
    assert held_locks(site) == []
    assert result.returncode == 0, result.stderr[-2000:]
    for record in RECORDS:
        assert spool_status(site, record) == "done", record


def test_once_closed_stderr_keeps_stdout_clean(site: Site) -> None:
    make_site(site, TALKING)
    result = run_with_shell_redirect(site, "2>&-", "once", "--json")
    lines = result.stdout.splitlines()
    echoes = [line for line in lines if line.startswith("done with ")]
    reports = [json.loads(line) for line in lines if line.startswith("{")]
    assert len(echoes) == len(RECORDS)
    # Only report lines may be JSON, so no log event may reach standard output.
    assert [report for report in reports if "event" in report] == []
    assert len(reports) == len(RECORDS)
