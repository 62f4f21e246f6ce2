"""Records that are not UTF-8 text: each is invalid, and the others run.

A lone UTF-16 surrogate (`"\\ud800"` in JSON) decodes to a Python string
that no UTF-8 encoder accepts, SQLite text may hold any bytes, and a spool
file may be UTF-16. None of them may stop the cycle, the report or the
other records.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sqlite3
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import pytest

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


# -- every workflow kind and both state stores --------------------------------

NUL_SCRIPT = """#!/bin/sh
printf '%s\\n' '{"id": "a\\u0000b", "v": "a"}' '{"id": "plain", "v": "b"}'
"""

# The first line contains the byte 0xC3 alone, which is not UTF-8.
RAW_BYTE_SCRIPT = """#!/bin/sh
printf '{"id": "raw", "v": "\\303"}\\n{"id": "plain", "v": "b"}\\n'
"""


def command_site(site: Site, script: str) -> None:
    lister = site.root / "list.sh"
    lister.write_text(script)
    lister.chmod(0o755)
    site.write(
        "10-listed.toml",
        f'[workflows.listed]\nkind = "command"\nlist_command = ["{lister}"]\n',
    )
    site.write("listed.agent", COMMAND_AGENT)


@pytest.fixture
def pg_dsn() -> str:
    dsn = os.environ.get("FLEETD_TEST_PG_DSN")
    if not dsn:
        pytest.skip("FLEETD_TEST_PG_DSN is not set: no PostgreSQL server to test")
    return dsn


@pytest.fixture
def pg_schema(pg_dsn: str) -> Iterator[tuple[str, str]]:
    """A fresh schema on the test server: (its name, a DSN that searches it)."""
    schema = f"fleetd_enc_{os.getpid()}_{secrets.token_hex(4)}"
    asyncio.run(_execute(pg_dsn, f"CREATE SCHEMA {schema}"))
    parts = urlsplit(pg_dsn)
    query = [*parse_qsl(parts.query), ("search_path", schema)]
    try:
        yield schema, urlunsplit(parts._replace(query=urlencode(query)))
    finally:
        asyncio.run(_execute(pg_dsn, f"DROP SCHEMA {schema} CASCADE"))


async def _execute(dsn: str, *statements: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


def use_postgresql_store(site: Site, url: str) -> None:
    conf = site.conf_dir / "00-site.toml"
    text = conf.read_text().replace(f"sqlite:///{site.state}", url)
    conf.write_text(text)


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_nul_record_id_is_invalid(site: Site, store: str, request: Any) -> None:
    if store == "postgresql":
        _, url = request.getfixturevalue("pg_schema")
        use_postgresql_store(site, url)
    command_site(site, NUL_SCRIPT)

    result = site.run("once", "--json")

    by_record = {report["record"]: report for report in reports(result.stdout)}
    assert sorted(by_record) == ["a\\x00b", "plain"]
    assert by_record["plain"]["outcome"] == "committed"
    bad = by_record["a\\x00b"]
    assert bad["outcome"] == "invalid"
    assert bad["reason"] == "record id contains a NUL character"
    assert bad["run_id"]
    assert result.returncode == 1


def test_undecodable_command_output_is_invalid(site: Site) -> None:
    command_site(site, RAW_BYTE_SCRIPT)

    result = site.run("once", "--json")

    by_record = {report["record"]: report for report in reports(result.stdout)}
    assert by_record["plain"]["outcome"] == "committed"
    assert by_record["raw"]["outcome"] == "invalid"
    assert "not valid UTF-8" in by_record["raw"]["reason"]
    assert result.returncode == 1


def test_surrogate_in_nested_fields_is_invalid(site: Site) -> None:
    site.write("rows.agent", ROWS_AGENT.replace("WORKFLOW rows", "WORKFLOW requests"))
    (site.spool / "key.json").write_text('{"a": {"b\\ud800": 1}}')
    (site.spool / "value.json").write_text('{"a": [1, {"c": "\\udc00"}]}')
    site.request("narrow", v="x")

    result = site.run("once", "--json")

    by_record = {report["record"]: report for report in reports(result.stdout)}
    assert by_record["narrow"]["outcome"] == "committed"
    assert by_record["key"]["outcome"] == "invalid"
    assert "field name a.b\\ud800" in by_record["key"]["reason"]
    assert by_record["value"]["outcome"] == "invalid"
    assert "field a[1].c" in by_record["value"]["reason"]
    assert json.loads((site.spool / "key.json").read_text()) == {"a": {"b\ud800": 1}}


def test_nul_in_field_value_stays_data(site: Site) -> None:
    site.write("rows.agent", ROWS_AGENT.replace("WORKFLOW rows", "WORKFLOW requests"))
    (site.spool / "nul.json").write_text('{"v": "a\\u0000b", "w": "a\\u0000b"}')

    result = site.run("once", "--json")

    by_record = {report["record"]: report for report in reports(result.stdout)}
    assert by_record["nul"]["outcome"] == "committed"
    committed = json.loads((site.spool / "nul.json").read_text())
    assert committed == {"v": "seen", "w": "a\x00b"}


def test_utf8_bom_spool_file_is_read(site: Site) -> None:
    site.write("rows.agent", ROWS_AGENT.replace("WORKFLOW rows", "WORKFLOW requests"))
    (site.spool / "marked.json").write_bytes(b'\xef\xbb\xbf{"v": "x", "w": "\xc3\xa9"}')

    result = site.run("once", "--json")

    by_record = {report["record"]: report for report in reports(result.stdout)}
    assert by_record["marked"]["outcome"] == "committed"
    committed = json.loads((site.spool / "marked.json").read_bytes())
    assert committed == {"v": "seen", "w": "é"}


def test_sqlite_nul_and_undecodable_ids(site: Site) -> None:
    database = site.root / "rows.db"
    connection = sqlite3.connect(database)
    connection.execute("CREATE TABLE t (id TEXT, v TEXT)")
    connection.execute("INSERT INTO t VALUES (CAST(X'610062' AS TEXT), 'x')")
    connection.execute("INSERT INTO t VALUES (CAST(X'62ff' AS TEXT), 'x')")
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
    assert by_record["c-good"]["outcome"] == "committed"
    assert by_record["a\\x00b"]["outcome"] == "invalid"
    assert by_record["a\\x00b"]["reason"] == "record id contains a NUL character"
    assert by_record["b\\xff"]["outcome"] == "invalid"
    assert "(byte 0xFF at offset 1)" in by_record["b\\xff"]["reason"]


def test_postgresql_json_surrogate_is_invalid(
    site: Site, pg_schema: tuple[str, str]
) -> None:
    schema, dsn = pg_schema
    asyncio.run(
        _execute(
            dsn,
            f"CREATE TABLE {schema}.t (id text PRIMARY KEY, v text, doc json)",
            f"INSERT INTO {schema}.t VALUES ('a-good', 'x', '{{}}'),"
            f" ('b-bad', 'x', '{{\"k\": \"\\ud800\"}}'),"
            f" ('c-good', 'x', NULL)",
        )
    )
    site.write(
        "10-rows.toml",
        f'[workflows.rows]\nkind = "postgresql"\ndsn = "{dsn}"\ntable = "{schema}.t"\n',
    )
    site.write("rows.agent", ROWS_AGENT)

    result = site.run("once", "--json")

    by_record = {report["record"]: report for report in reports(result.stdout)}
    assert by_record["a-good"]["outcome"] == "committed"
    assert by_record["c-good"]["outcome"] == "committed"
    assert by_record["b-bad"]["outcome"] == "invalid"
    assert "field doc.k" in by_record["b-bad"]["reason"]
