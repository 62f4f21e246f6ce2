"""Records that are not UTF-8 text: each is invalid, and the others run.

A lone UTF-16 surrogate (`"\\ud800"` in JSON) decodes to a Python string
that no UTF-8 encoder accepts, SQLite text may hold any bytes, and a spool
file may be UTF-16. None of them may stop the cycle, the report or the
other records.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from tests.faults.support import Site

LIST_SCRIPT = """#!/bin/sh
printf '%s\\n' '{"id": "\\ud800", "v": "a"}' '{"id": "plain", "v": "b"}'
"""

COMMAND_AGENT = """NAME     Listed
MNEMONIC listed
WORKFLOW listed
LOG notice saw ${this.id}
CLEANUP
    LOG info done
END
"""

ROWS_AGENT = """NAME     Rows
MNEMONIC rows
WORKFLOW rows
SET this.v = "seen"
CLEANUP
    LOG info done
END
"""


def reports(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_surrogate_record_id_is_invalid(site: Site) -> None:
    lister = site.root / "list.sh"
    lister.write_text(LIST_SCRIPT)
    lister.chmod(0o755)
    site.write(
        "10-listed.toml",
        f'[workflows.listed]\nkind = "command"\nlist_command = ["{lister}"]\n',
    )
    site.write("listed.agent", COMMAND_AGENT)

    result = site.run("once", "--json")

    by_record = {report["record"]: report for report in reports(result.stdout)}
    outcomes = sorted(report["outcome"] for report in by_record.values())
    assert outcomes == ["committed", "invalid"]
    assert by_record["plain"]["outcome"] == "committed"
    assert result.returncode == 1
    assert "UnicodeEncodeError" not in result.stderr


def test_undecodable_sqlite_row_is_invalid(site: Site) -> None:
    database = site.root / "rows.db"
    connection = sqlite3.connect(database)
    connection.execute("CREATE TABLE t (id TEXT, v TEXT)")
    connection.execute("INSERT INTO t VALUES ('a-good', 'x')")
    connection.execute("INSERT INTO t VALUES ('b-bad', CAST(X'c3' AS TEXT))")
    connection.execute("INSERT INTO t VALUES ('c-good', 'x')")
    connection.commit()
    connection.close()
    site.write(
        "10-rows.toml",
        f'[workflows.rows]\nkind = "sqlite"\npath = "{database}"\ntable = "t"\n',
    )
    site.write("rows.agent", ROWS_AGENT)

    result = site.run("once", "--json")

    by_record = {report["record"]: report for report in reports(result.stdout)}
    assert by_record.get("a-good", {}).get("outcome") == "committed"
    assert by_record.get("c-good", {}).get("outcome") == "committed"
    assert by_record.get("b-bad", {}).get("outcome") == "invalid"
    assert result.returncode == 1


def test_utf16_spool_file_is_invalid(site: Site) -> None:
    site.write("rows.agent", ROWS_AGENT.replace("WORKFLOW rows", "WORKFLOW requests"))
    (site.spool / "wide.json").write_bytes('{"v": "x"}'.encode("utf-16"))
    site.request("narrow", v="x")

    result = site.run("once", "--json")

    by_record = {report["record"]: report for report in reports(result.stdout)}
    assert by_record["narrow"]["outcome"] == "committed"
    assert by_record["wide"]["outcome"] == "invalid"
    assert result.returncode == 1
