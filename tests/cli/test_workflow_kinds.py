"""Each workflow kind driven end to end by `fleetd once`."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from pathlib import Path

import pytest

from tests.cli.support import Site

AGENT = """\
NAME     Activate
MNEMONIC activate
WORKFLOW {workflow}

REQUIRE this.status = "approved"
EXEC_COMMAND true
SET this.status = "active"
"""


def test_sqlite_workflow_updates_rows(site: Site, reports) -> None:
    database = site.root / "requests.db"
    connection = sqlite3.connect(database)
    with connection:
        connection.execute("CREATE TABLE requests (id INTEGER PRIMARY KEY, status)")
        connection.executemany(
            "INSERT INTO requests VALUES (?, ?)",
            [(1, "approved"), (2, "pending"), (3, "approved")],
        )
    connection.close()
    site.write(
        "10-db.toml",
        '[workflows.db]\nkind = "sqlite"\npath = "../requests.db"\n'
        'table = "requests"\nwhere = "id <> 3"\n',
    )
    site.write("activate.agent", AGENT.format(workflow="db"))
    result = site.run("once", "--json")
    assert result.returncode == 0, result.stderr
    outcomes = {line["record"]: line["outcome"] for line in reports(result.stdout)}
    assert outcomes == {"1": "committed", "2": "skipped"}
    connection = sqlite3.connect(database)
    rows = connection.execute("SELECT id, status FROM requests ORDER BY id").fetchall()
    connection.close()
    assert rows == [(1, "active"), (2, "pending"), (3, "approved")]


def shared_database(site: Site) -> Path:
    """Create a workflow table in the SQLite file of the state store."""
    database = site.root / "shared.db"
    connection = sqlite3.connect(database)
    with connection:
        connection.execute("CREATE TABLE requests (id INTEGER PRIMARY KEY, status)")
        connection.execute("INSERT INTO requests VALUES (1, 'approved')")
    connection.close()
    site.write(
        "10-db.toml",
        '[daemon]\nstate = "../shared.db"\n'
        '[workflows.db]\nkind = "sqlite"\npath = "../shared.db"\n'
        'table = "requests"\n',
    )
    return database


def test_sqlite_shared_store_commits_atomically(site: Site, reports) -> None:
    # The workflow's table lives in the state store's own SQLite file, so the
    # UPDATE and the resolution must commit together or not at all.
    database = shared_database(site)
    site.write("activate.agent", AGENT.format(workflow="db"))
    assert site.run("db", "upgrade").returncode == 0
    # Every resolution now fails when it writes its history row.
    connection = sqlite3.connect(database)
    with connection:
        connection.execute(
            "CREATE TRIGGER reject BEFORE INSERT ON history"
            " BEGIN SELECT RAISE(ABORT, 'history is read-only'); END"
        )
    connection.close()

    result = site.run("once", "--json")

    assert result.returncode == 1, result.stderr
    assert [line["outcome"] for line in reports(result.stdout)] == ["error"]
    connection = sqlite3.connect(database)
    rows = connection.execute("SELECT id, status FROM requests").fetchall()
    marks = connection.execute("SELECT * FROM marks").fetchall()
    connection.close()
    assert marks == []
    assert rows == [(1, "approved")]


def test_sqlite_shared_store_commits_row_and_mark(site: Site, reports) -> None:
    database = shared_database(site)
    site.write("activate.agent", AGENT.format(workflow="db"))
    result = site.run("once", "--json")
    assert result.returncode == 0, result.stderr
    assert [line["outcome"] for line in reports(result.stdout)] == ["committed"]
    connection = sqlite3.connect(database)
    rows = connection.execute("SELECT id, status FROM requests").fetchall()
    marks = connection.execute("SELECT record, resolution FROM marks").fetchall()
    connection.close()
    assert rows == [(1, "active")]
    assert marks == [("1", "committed")]


def test_sqlite_shared_store_failed_update_marks_error_only(
    site: Site, reports
) -> None:
    # An UPDATE that fails rolls back with the resolution; the record is
    # then marked in error without its changes.
    database = shared_database(site)
    site.write(
        "activate.agent",
        AGENT.format(workflow="db").replace(
            'SET this.status = "active"', "SET this.nosuch = 1"
        ),
    )
    result = site.run("once", "--json")
    assert result.returncode == 1, result.stderr
    [line] = reports(result.stdout)
    assert line["outcome"] == "error"
    assert "no such column: nosuch" in line["reason"]
    connection = sqlite3.connect(database)
    rows = connection.execute("SELECT id, status FROM requests").fetchall()
    marks = connection.execute("SELECT record, resolution FROM marks").fetchall()
    connection.close()
    assert rows == [(1, "approved")]
    assert marks == [("1", "error")]


def test_sqlite_shared_store_trigger_rollback_isolated(site: Site, reports) -> None:
    # RAISE(ROLLBACK) in a trigger ends the whole transaction, which the
    # store shares with the claims and resolutions of other records. Only
    # the records whose UPDATE the trigger rejects may end in error.
    database = shared_database(site)
    connection = sqlite3.connect(database)
    with connection:
        connection.execute("ALTER TABLE requests ADD COLUMN target")
        connection.execute("UPDATE requests SET target = 'active'")
        connection.executemany(
            "INSERT INTO requests VALUES (?, 'approved', ?)",
            [(id, "held" if id % 10 == 0 else "active") for id in range(2, 41)],
        )
        connection.execute(
            "CREATE TRIGGER guard BEFORE UPDATE ON requests"
            " WHEN NEW.status = 'held'"
            " BEGIN SELECT RAISE(ROLLBACK, 'held is not allowed'); END"
        )
    connection.close()
    site.write(
        "activate.agent",
        AGENT.format(workflow="db")
        .replace('SET this.status = "active"', "SET this.status = this.target")
        .replace("WORKFLOW db", "WORKFLOW db\nCONCURRENCY 16"),
    )

    result = site.run("once", "--json")

    outcomes = {line["record"]: line["outcome"] for line in reports(result.stdout)}
    rejected = {str(id) for id in range(10, 41, 10)}
    assert {id for id, outcome in outcomes.items() if outcome == "error"} == rejected
    committed = {id for id, outcome in outcomes.items() if outcome == "committed"}
    assert committed == {str(id) for id in range(1, 41)} - rejected
    connection = sqlite3.connect(database)
    statuses = dict(
        connection.execute("SELECT status, count(*) FROM requests GROUP BY 1")
    )
    locks = connection.execute("SELECT count(*) FROM locks").fetchone()[0]
    connection.close()
    assert statuses == {"active": 36, "approved": 4}
    assert locks == 0


def test_command_workflow_lists_and_updates(site: Site, reports) -> None:
    updates = site.root / "updates.jsonl"
    lister = site.root / "list.py"
    lister.write_text(
        "import json\n"
        'print(json.dumps({"id": "a1", "status": "approved"}))\n'
        'print(json.dumps({"id": "b2", "status": "pending"}))\n'
    )
    updater = site.root / "update.py"
    updater.write_text(
        "import sys\n"
        f"with open({str(updates)!r}, 'a') as out:\n"
        "    out.write(sys.stdin.read())\n"
    )
    site.write(
        "10-cmd.toml",
        f'[workflows.tickets]\nkind = "command"\n'
        f'list_command = ["{sys.executable}", "{lister}"]\n'
        f'update_command = ["{sys.executable}", "{updater}"]\n'
        'timeout = "20s"\n',
    )
    site.write("activate.agent", AGENT.format(workflow="tickets"))
    result = site.run("once", "--json")
    assert result.returncode == 0, result.stderr
    outcomes = {line["record"]: line["outcome"] for line in reports(result.stdout)}
    assert outcomes == {"a1": "committed", "b2": "skipped"}
    assert [json.loads(line) for line in updates.read_text().splitlines()] == [
        {"id": "a1", "status": "active"}
    ]


def test_spool_workflow_writes_file(site: Site, reports) -> None:
    site.request("r1", status="approved", note="keep me")
    site.write("activate.agent", AGENT.format(workflow="requests"))
    result = site.run("once", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads((site.spool / "r1.json").read_text()) == {
        "status": "active",
        "note": "keep me",
    }
    assert sorted(path.name for path in site.spool.iterdir()) == ["r1.json"]


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_spool_commit_keeps_file_owner(site: Site, reports) -> None:
    # The program that files requests often owns them and reads them back,
    # so the file that replaces a request keeps its owner and group.
    path = site.request("r1", status="approved")
    os.chown(path, 65534, 65534)
    path.chmod(0o660)
    site.write("activate.agent", AGENT.format(workflow="requests"))

    result = site.run("once", "--json")

    assert result.returncode == 0, result.stderr
    assert [line["outcome"] for line in reports(result.stdout)] == ["committed"]
    info = path.stat()
    assert info.st_uid == 65534
    assert info.st_gid == 65534
    assert info.st_mode & 0o7777 == 0o660
    assert json.loads(path.read_text())["status"] == "active"


def test_missing_spool_folder_fails_cycle(site: Site) -> None:
    site.write("activate.agent", AGENT.format(workflow="requests"))
    site.spool.rmdir()
    result = site.run("once", "--json")
    assert result.returncode == 1
    assert "cycle_failed" in result.stderr
    assert str(Path(site.spool)) in result.stderr


def test_command_json_line_unreadable_is_invalid(site: Site, reports) -> None:
    # In JSON lines each line is one record, so a truncated line is one
    # record that cannot be read, and the records around it still run.
    updates = site.root / "updates.jsonl"
    lister = site.root / "list.py"
    lister.write_text(
        'print(\'{"id": "a1", "status": "approved"}\')\n'
        'print(\'{"id": "b2", "status": "appro\')\n'
        'print(\'{"id": "c3", "status": "approved"}\')\n'
    )
    updater = site.root / "update.py"
    updater.write_text(
        "import sys\n"
        f"with open({str(updates)!r}, 'a') as out:\n"
        "    out.write(sys.stdin.read())\n"
    )
    site.write(
        "10-cmd.toml",
        f'[workflows.tickets]\nkind = "command"\n'
        f'list_command = ["{sys.executable}", "{lister}"]\n'
        f'update_command = ["{sys.executable}", "{updater}"]\n',
    )
    site.write("activate.agent", AGENT.format(workflow="tickets"))

    result = site.run("once", "--json")

    assert result.returncode == 1, result.stderr
    lines = reports(result.stdout)
    outcomes = sorted(line["outcome"] for line in lines)
    assert outcomes == ["committed", "committed", "invalid"]
    [invalid] = [line for line in lines if line["outcome"] == "invalid"]
    assert invalid["reason"]
    committed = [json.loads(line)["id"] for line in updates.read_text().splitlines()]
    assert sorted(committed) == ["a1", "c3"]
