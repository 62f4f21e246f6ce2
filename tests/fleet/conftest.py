"""A conf dir whose state store and `postgresql` workflow share one database.

Each test gets its own PostgreSQL schema: the state store finds its tables
through the URL's `search_path`, and the workflow names its table with the
schema, so tests running at once on one server do not meet.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.cli.support import fleetd_command


class PgSite:
    """Files and database schema of one test."""

    def __init__(self, root: Path, dsn: str, schema: str) -> None:
        self.root = root
        self.dsn = dsn
        self.schema = schema
        self.state = f"{dsn}?search_path={schema}"
        self.conf_dir = root / "conf.d"
        self.conf_dir.mkdir()
        self.settings()

    def settings(self, daemon: str = "", dsn: str | None = None) -> None:
        """Write the TOML drop-in; `daemon` adds keys to [daemon]."""
        text = f"""
            [daemon]
            state = "{self.state}"
            safe_path = ["/usr/bin", "/bin"]
            {daemon}

            [workflows.tickets]
            kind = "postgresql"
            dsn = "{dsn or self.dsn}"
            table = "{self.schema}.tickets"
            """
        self.write("00-site.toml", textwrap.dedent(text))

    def write(self, name: str, text: str) -> Path:
        path = self.conf_dir / name
        path.write_text(textwrap.dedent(text).lstrip())
        path.chmod(0o644)
        return path

    def query(self, statement: str, *args: Any) -> list[asyncpg.Record]:
        """Run one statement with the test's schema first on the search_path."""
        return asyncio.run(_fetch(self.dsn, self.schema, statement, *args))

    def tickets(self, count: int, columns: str = "") -> None:
        """Create the tickets table with ids 1..count."""
        self.query(
            "CREATE TABLE tickets (id integer PRIMARY KEY, status text NOT NULL"
            f" DEFAULT 'open'{columns})"
        )
        self.query("INSERT INTO tickets (id) SELECT generate_series(1, $1)", count)

    def command(self, *args: str) -> list[str]:
        return [*fleetd_command(), "--conf-dir", str(self.conf_dir), *args]

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*args),
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )


def json_lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


async def _fetch(dsn: str, schema: str, statement: str, *args: Any) -> list[Any]:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(f"SET search_path = {schema}")
        return await connection.fetch(statement, *args)
    finally:
        await connection.close()


@pytest.fixture
def pg_dsn() -> str:
    dsn = os.environ.get("FLEETD_TEST_PG_DSN")
    if not dsn:
        pytest.skip("FLEETD_TEST_PG_DSN is not set: no PostgreSQL server to test")
    return dsn


@pytest.fixture
def site(tmp_path: Path, pg_dsn: str) -> Iterator[PgSite]:
    schema = f"fleetd_fleet_{os.getpid()}_{secrets.token_hex(4)}"
    asyncio.run(_fetch(pg_dsn, "public", f"CREATE SCHEMA {schema}"))
    try:
        yield PgSite(tmp_path, pg_dsn, schema)
    finally:
        asyncio.run(_fetch(pg_dsn, "public", f"DROP SCHEMA {schema} CASCADE"))
