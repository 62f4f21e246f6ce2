from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

from fleetd.locks import StateStore, open_store
from fleetd.locks.sqlite import SQLiteStore

CHILD = Path(__file__).with_name("child.py")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/state.db"


@pytest.fixture
async def sqlite_store(sqlite_url: str) -> AsyncIterator[SQLiteStore]:
    store = open_store(sqlite_url)
    assert isinstance(store, SQLiteStore)
    await store.open()
    yield store
    await store.close()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A URL of the test PostgreSQL server whose search_path is a fresh schema.

    Each test gets its own schema, so tests and concurrent test runs on one
    server do not see each other's locks.
    """
    dsn = os.environ.get("FLEETD_TEST_PG_DSN")
    if not dsn:
        pytest.skip("FLEETD_TEST_PG_DSN is not set: no PostgreSQL server to test")
    schema = f"fleetd_test_{os.getpid()}_{secrets.token_hex(4)}"
    asyncio.run(_execute(dsn, f"CREATE SCHEMA {schema}"))
    parts = urlsplit(dsn)
    query = [*parse_qsl(parts.query), ("search_path", schema)]
    try:
        yield urlunsplit(parts._replace(query=urlencode(query)))
    finally:
        asyncio.run(_execute(dsn, f"DROP SCHEMA {schema} CASCADE"))


async def _execute(dsn: str, statement: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty state store of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/state.db"
    return request.getfixturevalue("pg_url")


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[StateStore]:
    """An open state store of each kind."""
    opened = open_store(store_url)
    await opened.open()
    yield opened
    await opened.close()


class Child:
    """A child process running tests/locks/child.py."""

    def __init__(self, url: str, mode: str, argument: str) -> None:
        self.log = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed with the child
        self.process = subprocess.Popen(
            [sys.executable, str(CHILD), url, mode, argument],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            # A file, not a pipe: a child whose pipe is full would stall
            # while the test waits for another child.
            stderr=self.log,
            text=True,
            env={**os.environ, "PYTHONPATH": str(CHILD.parents[2])},
        )

    def wait_line(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        if not line:
            self.process.wait(10)
            raise AssertionError(f"child ended: {self.errors()}")
        return line

    def release(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def finish(self, timeout: float = 100) -> tuple[str, str]:
        """Wait for the exit; return standard output and standard error."""
        out, _ = self.process.communicate(timeout=timeout)
        err = self.errors()
        assert self.process.returncode == 0, err
        return out, err

    def errors(self) -> str:
        """Return what the child wrote to standard error so far."""
        self.log.seek(0)
        return self.log.read()


@pytest.fixture
def spawn() -> Iterator[Callable[[str, str, str], Child]]:
    """Start child processes; any still running at teardown are killed."""
    started: list[Child] = []

    def start(url: str, mode: str, argument: str) -> Child:
        child = Child(url, mode, argument)
        started.append(child)
        return child

    yield start
    for child in started:
        if child.process.poll() is None:
            child.kill()
