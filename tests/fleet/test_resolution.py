"""Resolutions of postgresql workflow records, with the state store beside them."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from fleetd.config import load_config
from fleetd.lang import Registry
from fleetd.runtime import AgentLoader, Engine, Outcome, RunReport
from tests.fleet.conftest import PgSite

pytestmark = pytest.mark.postgres

CRASH_CHILD = Path(__file__).with_name("crash_child.py")


async def cycle(site: PgSite) -> list[RunReport]:
    """Run one cycle of every agent of the site in this process."""
    config = load_config(site.conf_dir)
    registry = Registry.default()
    agents = AgentLoader(registry).load(config)
    assert not agents.errors
    reports: list[RunReport] = []
    async with Engine(config, echo=lambda text: None, registry=registry) as engine:
        for loaded in agents.agents.values():
            reports.extend(await engine.run_cycle(loaded))

    return reports


def run_cycles(site: PgSite) -> list[RunReport]:
    return asyncio.run(cycle(site))


def status(site: PgSite, ticket: int) -> str:
    [row] = site.query("SELECT status FROM tickets WHERE id = $1", ticket)
    return row["status"]


def marks(site: PgSite) -> list[tuple[str, str, str | None]]:
    rows = site.query("SELECT record, resolution, reason FROM fleetd_marks ORDER BY 1")
    return [tuple(row) for row in rows]


def reject_history(site: PgSite) -> None:
    """Make every resolution fail when it writes its history row."""
    site.query(
        "CREATE FUNCTION reject() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN RAISE EXCEPTION 'history is read-only'; END $$"
    )
    site.query(
        "CREATE TRIGGER reject BEFORE INSERT ON fleetd_history"
        " FOR EACH ROW EXECUTE FUNCTION reject()"
    )


CLOSE = """
    NAME     Close
    MNEMONIC close
    WORKFLOW tickets
    SET this.status = "closed"
    """


def test_commit_updates_row_and_marks(site: PgSite) -> None:
    site.tickets(2)
    site.write("close.agent", CLOSE)
    reports = run_cycles(site)
    assert [r.outcome for r in reports] == [Outcome.COMMITTED] * 2
    assert status(site, 1) == "closed"
    assert status(site, 2) == "closed"
    assert marks(site) == [("1", "committed", None), ("2", "committed", None)]

    again = run_cycles(site)
    assert [r.outcome for r in again] == [Outcome.DONE] * 2


def test_rollback_writes_nothing(site: PgSite) -> None:
    site.tickets(1)
    site.write(
        "close.agent",
        CLOSE
        + """
        EXEC_COMMAND false
        ON_FAILURE
            LOG info rolled back
        END
        """,
    )
    [report] = run_cycles(site)
    assert report.outcome is Outcome.ROLLED_BACK
    assert status(site, 1) == "open"
    assert marks(site) == []


def test_commit_with_error_writes_staged(site: PgSite) -> None:
    site.tickets(1)
    site.write("close.agent", CLOSE + "EXEC_COMMAND false\n")
    [report] = run_cycles(site)
    assert report.outcome is Outcome.ERROR
    assert status(site, 1) == "closed"
    [(record, resolution, reason)] = marks(site)
    assert (record, resolution) == ("1", "error")
    assert reason is not None
    assert "EXEC_COMMAND false" in reason


def test_failed_update_marks_error_only(site: PgSite) -> None:
    site.tickets(2)
    site.write(
        "close.agent",
        CLOSE
        + """
        WHEN this.id = 2 DO
            SET this.no_such_column = 1
            EXEC_COMMAND false
        END
        WHEN this.id = 1 DO
            SET this.no_such_column = 1
        END
        """,
    )
    reports = run_cycles(site)
    assert [r.outcome for r in reports] == [Outcome.ERROR, Outcome.ERROR]
    for report in reports:
        assert report.reason is not None
        assert "applying staged changes failed" in report.reason
        assert "no column no_such_column" in report.reason
    assert status(site, 1) == "open"
    assert status(site, 2) == "open"
    assert [m[:2] for m in marks(site)] == [("1", "error"), ("2", "error")]


def test_update_rolls_back_with_failed_resolution(site: PgSite) -> None:
    site.tickets(1)
    site.write("close.agent", CLOSE)
    run_cycles(site)  # creates the state store's tables
    site.query("DELETE FROM fleetd_marks")
    site.query("UPDATE tickets SET status = 'open'")
    # The resolution fails after the UPDATE, in the same transaction.
    reject_history(site)
    [report] = run_cycles(site)
    assert report.outcome is Outcome.ERROR
    assert report.reason is not None
    assert "history is read-only" in report.reason
    assert status(site, 1) == "open"
    assert marks(site) == []


def test_other_database_updates_before_resolution(site: PgSite) -> None:
    # "localhost" names the server by another host than the state URL's
    # 127.0.0.1, so the workflow does not share the store's transaction.
    site.settings(dsn=site.dsn.replace("127.0.0.1", "localhost"))
    assert "localhost" in (site.conf_dir / "00-site.toml").read_text()
    site.tickets(1)
    site.write("close.agent", CLOSE)
    run_cycles(site)
    site.query("DELETE FROM fleetd_marks")
    site.query("UPDATE tickets SET status = 'open'")
    reject_history(site)
    [report] = run_cycles(site)
    assert report.outcome is Outcome.ERROR
    # Written on its own, the UPDATE stays when the resolution fails.
    assert status(site, 1) == "closed"
    assert marks(site) == []


def test_crash_after_update_leaves_neither(site: PgSite) -> None:
    site.tickets(1)
    site.write("close.agent", CLOSE)
    crashed = subprocess.run(
        [sys.executable, str(CRASH_CHILD), str(site.conf_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PYTHONPATH": str(CRASH_CHILD.parents[2]), "PATH": "/usr/bin:/bin"},
    )
    assert crashed.returncode == -9, crashed.stderr
    assert status(site, 1) == "open"
    assert marks(site) == []
    [lock] = site.query("SELECT record, owner_pid FROM fleetd_locks")
    assert lock["record"] == "1"

    # The dead owner's lock is recovered as interrupted, and the record is
    # not run again: the row stays open.
    [recovered] = run_cycles(site)
    assert recovered.outcome is Outcome.ERROR
    assert recovered.reason == "interrupted"
    [again] = run_cycles(site)
    assert again.outcome is Outcome.DONE
    assert again.reason == "in error"
    assert status(site, 1) == "open"
    assert marks(site) == [("1", "error", "interrupted")]


def test_engine_closes_workflow_connections(site: PgSite) -> None:
    name = f"fleetd_fleet_{secrets.token_hex(4)}"
    site.settings(dsn=f"{site.dsn}?application_name={name}")
    site.tickets(1)
    site.write("close.agent", CLOSE)
    [report] = run_cycles(site)
    assert report.outcome is Outcome.COMMITTED
    assert connections_gone(site, name)


def connections_gone(site: PgSite, name: str) -> bool:
    """Wait up to 5 s for the server to drop the connections named `name`."""
    for _ in range(50):
        [left] = site.query(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            name,
        )
        if left[0] == 0:
            return True
        time.sleep(0.1)

    return False


def test_engine_closes_replaced_workflows(site: PgSite) -> None:
    name = f"fleetd_fleet_{secrets.token_hex(4)}"
    site.settings(dsn=f"{site.dsn}?application_name={name}")
    site.tickets(2)
    site.write("close.agent", CLOSE)

    async def reload_between_cycles() -> int:
        config = load_config(site.conf_dir)
        registry = Registry.default()
        [loaded] = AgentLoader(registry).load(config).agents.values()
        async with Engine(config, echo=lambda text: None, registry=registry) as engine:
            await engine.run_cycle(loaded)
            engine.reconfigure(config)
            await engine.run_cycle(loaded)
            # Both the replaced workflow and the new one hold a connection.
            open_connections = await count_connections()
        return open_connections

    async def count_connections() -> int:
        connection = await asyncpg.connect(site.dsn)
        try:
            return await connection.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                name,
            )
        finally:
            await connection.close()

    assert asyncio.run(reload_between_cycles()) == 2
    assert connections_gone(site, name)


def test_lost_lease_writes_neither_row_nor_mark(site: PgSite) -> None:
    site.tickets(1)
    site.write("close.agent", CLOSE + "EXEC_COMMAND sleep 1\n")
    assert site.run("db", "upgrade").returncode == 0

    async def cycle_while_taken_over() -> list[RunReport]:
        running = asyncio.ensure_future(cycle(site))
        # Another grant of the same lock, as after a lease expired and
        # another host took the record, while the Run sleeps.
        connection = await asyncpg.connect(site.dsn)
        try:
            await connection.execute(f"SET search_path = {site.schema}")
            for _ in range(100):
                updated = await connection.execute(
                    "UPDATE fleetd_locks SET token = token + 1000"
                )
                if updated == "UPDATE 1":
                    break
                await asyncio.sleep(0.05)
        finally:
            await connection.close()
        return await running

    [report] = asyncio.run(cycle_while_taken_over())
    assert report.outcome is Outcome.ERROR
    assert report.reason == "lease lost"
    assert status(site, 1) == "open"
    assert marks(site) == []
    assert site.query("SELECT count(*) FROM fleetd_history")[0][0] == 0


def test_nul_in_stderr_still_rolls_back(site: PgSite) -> None:
    # The failure reason ends with the program's last stderr line, and a
    # PostgreSQL text column cannot hold a NUL character. The run failed
    # and its ON_FAILURE block succeeded, so the record rolls back.
    site.tickets(1)
    site.write(
        "close.agent",
        CLOSE
        + """
        EXEC_COMMAND sh -c 'printf "bad\\0byte\\n" >&2; exit 3'
        ON_FAILURE
            LOG info rolled back
        END
        """,
    )

    [report] = run_cycles(site)

    assert report.outcome is Outcome.ROLLED_BACK, report.reason
    assert "exited with status 3" in (report.reason or "")
    assert status(site, 1) == "open"
    assert marks(site) == []
    assert site.query("SELECT record FROM fleetd_locks") == []
