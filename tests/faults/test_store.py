"""State store faults: a busy SQLite file, a full or read-only disk, PostgreSQL down.

In each, runs wait and retry (each retry logged) or fail with a clear
error, the daemon stays up, and no run is reported committed unless its
mark is in the store afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.support import Site
from tests.pgserver import PrivateServer

AGENT = """NAME     Store
MNEMONIC store
WORKFLOW requests
SCHEDULE every 1s
CONCURRENCY 4

EXEC_COMMAND /bin/true @TOKEN@
SET this.state = "done"
ON_FAILURE
    ECHO failed
END
"""

HOLD_LOCK = """
import sqlite3, sys, time
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
connection.execute("ROLLBACK")
"""


def committed_reports(site: Site) -> set[str]:
    """Return the records whose run the log reported committed."""
    return {
        event["record"]
        for event in site.log_events()
        if event.get("event") == "run_finished" and event.get("outcome") == "committed"
    }


def sqlite_marks(path: Path, *, read_only_mount: bool = False) -> dict[str, str]:
    # On a read-only mount SQLite cannot create the shared-memory file that
    # WAL mode needs; immutable=1 reads the database file alone.
    if read_only_mount:
        connection = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    else:
        connection = sqlite3.connect(path)
    try:
        rows = connection.execute("SELECT record, resolution FROM marks").fetchall()
    finally:
        connection.close()
    return dict(rows)


def retries(site: Site) -> list[dict[str, Any]]:
    return [e for e in site.log_events() if e.get("event") == "state_store_retry"]


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        # Fail the test without leaving the daemon behind.
        process.kill()
        process.wait()
        raise


def test_busy_sqlite_waits_and_retries(site: Site) -> None:
    site.write("store.agent", AGENT)
    assert site.run("db", "upgrade").returncode == 0
    for index in range(6):
        site.request(f"r{index}", value=index)
    # Longer than the store's 5 s busy timeout, so the writer retries.
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(site.state), "7"],
        stdout=subprocess.PIPE,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline() == b"locked\n"

    with open(site.root / "fleetd.log", "wb") as log:
        done = subprocess.run(
            site.command("once", "--json", "--log-target", "json"),
            stdout=subprocess.PIPE,
            stderr=log,
            timeout=90,
            check=False,
        )
    holder.wait(timeout=30)

    assert done.returncode == 0
    outcomes = [json.loads(line)["outcome"] for line in done.stdout.splitlines()]
    assert outcomes == ["committed"] * 6
    assert len(retries(site)) >= 1
    assert "database is locked" in retries(site)[0]["error"]
    assert sqlite_marks(site.state) == {f"r{i}": "committed" for i in range(6)}


@contextlib.contextmanager
def tmpfs(folder: Path, size: str) -> Iterator[Path]:
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> Path:
    """Write a file into `folder` until its file system is full."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as stream, contextlib.suppress(OSError):
        while True:
            stream.write(b"\0" * 4096)
    return filler


def start_on_tmpfs(site: Site, folder: Path) -> tuple[Path, subprocess.Popen[bytes]]:
    """Start `fleetd run` with its state store in `folder`; wait for a commit."""
    state = folder / "state.db"
    site.write(
        "20-state.toml",
        f'[daemon]\nstate = "sqlite:///{state}"\nshutdown_grace = "1s"\n'
        'cleanup_timeout = "1s"\n',
    )
    site.write("store.agent", AGENT)
    process = site.start("run", "--log-target", "json")
    site.request("first", value=0)
    wait_for(lambda: "first" in committed_reports(site), 20, "a first commit")
    return state, process


# 8 MiB: room for the WAL file, which SQLite checkpoints at 1000 pages (4 MiB).
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_full_disk_daemon_retries(site: Site) -> None:
    new = {f"r{index:02d}" for index in range(20)}
    with tmpfs(site.root / "state", "8m") as folder:
        state, process = start_on_tmpfs(site, folder)
        try:
            filler = fill(folder)
            for record in new:
                site.request(record, value="x" * 2000)
            wait_for(lambda: len(retries(site)) >= 3, 30, "retries on the full disk")
            reported_while_full = committed_reports(site) & new
            filler.unlink()
            wait_for(lambda: committed_reports(site) >= new, 60, "the commits")
            running = process.poll() is None
        finally:
            status = stop(process)
        marks = sqlite_marks(state)

    assert running, "the daemon exited"
    assert status == 0
    assert "full" in retries(site)[0]["error"]
    assert reported_while_full == set(), "reported committed while not durable"
    for record in new | {"first"}:
        assert marks.get(record) == "committed", record
    assert site.leftover_processes() == []


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_full_disk_stop_reports_nothing_undurable(site: Site) -> None:
    new = {f"r{index:02d}" for index in range(8)}
    with tmpfs(site.root / "state", "8m") as folder:
        state, process = start_on_tmpfs(site, folder)
        filler = fill(folder)
        for record in new:
            site.request(record, value="x" * 2000)
        wait_for(lambda: retries(site), 30, "a retry on the full disk")
        status = stop(process)
        filler.unlink()
        marks = sqlite_marks(state)

    assert status == 0
    for record in committed_reports(site):
        assert marks.get(record) == "committed", record
    assert committed_reports(site) & new == set()
    assert site.leftover_processes() == []


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_read_only_store_fails_clearly(site: Site) -> None:
    with tmpfs(site.root / "state", "4m") as folder:
        state = folder / "state.db"
        site.write("20-state.toml", f'[daemon]\nstate = "sqlite:///{state}"\n')
        site.write("store.agent", AGENT)
        assert site.run("db", "upgrade").returncode == 0
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        site.request("r1", value=1)

        done = site.run("once", "--json", "--log-target", "json", timeout=60)
        marks = sqlite_marks(state, read_only_mount=True)

    assert done.returncode == 1
    assert "committed" not in done.stdout
    assert "state store" in done.stderr
    assert marks == {}


@contextlib.contextmanager
def pg_schema(dsn: str) -> Iterator[tuple[str, str]]:
    """Yield a fresh schema and `dsn` with its search_path set to it."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    schema = f"fleetd_faults_{os.getpid()}_{time.monotonic_ns()}"

    def execute(statement: str) -> None:
        subprocess.run(["psql", dsn, "-c", statement], check=True, capture_output=True)

    execute(f"CREATE SCHEMA {schema}")
    parts = urlsplit(dsn)
    query = [*parse_qsl(parts.query), ("search_path", schema)]
    try:
        yield schema, urlunsplit(parts._replace(query=urlencode(query)))
    finally:
        execute(f"DROP SCHEMA {schema} CASCADE")


def pg_marks(dsn: str, schema: str) -> dict[str, str]:
    query = f"SELECT record, resolution FROM {schema}.fleetd_marks"
    done = subprocess.run(
        ["psql", dsn, "-At", "-F", "\t", "-c", query],
        check=True,
        capture_output=True,
        text=True,
    )
    return dict(line.split("\t") for line in done.stdout.splitlines())


@pytest.mark.postgres
def test_postgresql_restart_daemon_retries(
    site: Site, private_server: PrivateServer
) -> None:
    # A server of the test's own: stopping the shared one would fail the
    # PostgreSQL tests that run beside this one.
    dsn = private_server.url
    new = {f"r{index:02d}" for index in range(10)}
    with pg_schema(dsn) as (schema, url):
        site.write("20-state.toml", f'[daemon]\nstate = "{url}"\n')
        site.write("store.agent", AGENT)
        process = site.start("run", "--log-target", "json")
        try:
            site.request("first", value=0)
            wait_for(lambda: "first" in committed_reports(site), 20, "a first commit")
            try:
                private_server.pause()
                for record in new:
                    site.request(record, value=1)
                wait_for(lambda: len(retries(site)) >= 2, 30, "retries")
                reported_while_down = committed_reports(site) & new
            finally:
                private_server.resume()
            wait_for(lambda: committed_reports(site) >= new, 60, "the commits")
            running = process.poll() is None
        finally:
            status = stop(process)
        marks = pg_marks(dsn, schema)

    assert running, "the daemon exited"
    assert status == 0
    assert reported_while_down == set(), "reported committed while not durable"
    for record in new | {"first"}:
        assert marks.get(record) == "committed", record
    assert site.leftover_processes() == []


@pytest.mark.postgres
def test_postgresql_down_stop_exits(site: Site, private_server: PrivateServer) -> None:
    # A server of the test's own: stopping the shared one would fail the
    # PostgreSQL tests that run beside this one.
    dsn = private_server.url
    new = {f"r{index:02d}" for index in range(6)}
    with pg_schema(dsn) as (schema, url):
        site.write(
            "20-state.toml",
            f'[daemon]\nstate = "{url}"\nshutdown_grace = "1s"\n'
            'cleanup_timeout = "1s"\n',
        )
        site.write("store.agent", AGENT)
        process = site.start("run", "--log-target", "json")
        try:
            site.request("first", value=0)
            wait_for(lambda: "first" in committed_reports(site), 20, "a first commit")
            try:
                private_server.pause()
                for record in new:
                    site.request(record, value=1)
                wait_for(lambda: len(retries(site)) >= 2, 30, "retries")
                process.send_signal(signal.SIGTERM)
                status = process.wait(timeout=40)
            finally:
                private_server.resume()
        finally:
            if process.poll() is None:
                process.kill()
        marks = pg_marks(dsn, schema)

    assert status == 0
    for record in committed_reports(site):
        assert marks.get(record) == "committed", record
    assert committed_reports(site) & new == set()
    assert site.leftover_processes() == []
