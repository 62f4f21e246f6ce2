"""A PostgreSQL restart while four `fleetd once` processes share a table.

Runs a private server (tests/pgserver.py), so that restarting it disturbs
nothing else.
"""

from __future__ import annotations

import collections
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fleet.conftest import PgSite, json_lines
from tests.pgserver import PrivateServer

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ROWS = 1000
PROCESSES = 4

MARK = """
    NAME     Mark
    MNEMONIC mark
    WORKFLOW tickets
    CONCURRENCY 4
    ECHO ran ${this.id}
    SET this.status = "${this.status}+"
    """


@pytest.fixture
def private_site(
    tmp_path: Path, private_server: PrivateServer
) -> Iterator[tuple[PgSite, PrivateServer]]:
    site = PgSite(tmp_path, private_server.url, "fleet")
    site.query("CREATE SCHEMA fleet")
    yield site, private_server


def test_restart_loses_nothing_runs_nothing_twice(
    private_site: tuple[PgSite, PrivateServer],
) -> None:
    site, server = private_site
    site.tickets(ROWS)
    site.query("UPDATE tickets SET status = ''")
    site.write("mark.agent", MARK)
    assert site.run("db", "upgrade").returncode == 0

    outputs = [(site.root / f"out{n}", site.root / f"err{n}") for n in range(PROCESSES)]
    processes = []
    for out, err in outputs:
        with out.open("w") as stdout, err.open("w") as stderr:
            processes.append(
                subprocess.Popen(
                    site.command("once", "--json"),
                    cwd=site.root,
                    stdout=stdout,
                    stderr=stderr,
                    stdin=subprocess.DEVNULL,
                )
            )
    try:
        # Restart once some records are committed, and once more later.
        deadline = time.monotonic() + 60
        while not site.query("SELECT 1 FROM fleetd_marks LIMIT 1"):
            assert time.monotonic() < deadline, "no record committed within 60 s"
            time.sleep(0.1)
        server.restart()
        time.sleep(1.0)
        server.restart()
        for process, (_, err) in zip(processes, outputs, strict=True):
            assert process.wait(timeout=120) == 0, err.read_text()[-3000:]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    stdouts = [out.read_text() for out, _ in outputs]
    stderrs = [err.read_text() for _, err in outputs]
    assert any(
        "state_store_retry" in text or "workflow_retry" in text for text in stderrs
    )

    echoed = collections.Counter(
        line
        for stdout in stdouts
        for line in stdout.splitlines()
        if line.startswith("ran ")
    )
    assert set(echoed) == {f"ran {n}" for n in range(1, ROWS + 1)}
    assert max(echoed.values()) == 1
    reports = [report for stdout in stdouts for report in json_lines(stdout)]
    committed = collections.Counter(
        r["record"] for r in reports if r["outcome"] == "committed"
    )
    assert len(committed) == ROWS
    assert max(committed.values()) == 1

    statuses = site.query("SELECT status, count(*) FROM tickets GROUP BY 1")
    assert [tuple(row) for row in statuses] == [("+", ROWS)]
    [history] = site.query("SELECT count(*) FROM fleetd_history")
    assert history[0] == ROWS
    assert site.query("SELECT * FROM fleetd_locks") == []
