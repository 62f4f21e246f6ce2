"""A real PostgreSQL restart in the middle of a race of four processes.

Runs a private server (initdb into a temporary directory, on a free
loopback port) so that restarting it disturbs nothing else. It needs
PostgreSQL's programs: set FLEETD_TEST_PG_BINDIR to their directory (for
example /usr/lib/postgresql/15/bin). Run as root, the server runs as the
`postgres` user through runuser.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetd.locks import Resolution, open_store

Spawn = Callable[[str, str, str], Any]


class PrivateServer:
    """A PostgreSQL server of its own, in a temporary directory."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.folder = Path(tempfile.mkdtemp(prefix="fleetd-pg-"))
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres")
            self.prefix = ["runuser", "-u", "postgres", "--"]

    def _run(self, *arguments: str) -> None:
        subprocess.run(
            [*self.prefix, *arguments],
            check=True,
            cwd=self.folder,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def _pg_ctl(self, *arguments: str) -> None:
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.folder / "data"),
            "-o",
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1",
            "-l",
            str(self.folder / "log"),
            "-w",
            *arguments,
        )

    def start(self) -> None:
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.folder / "data"),
            "-A",
            "trust",
            "-U",
            "postgres",
        )
        self._pg_ctl("start")

    def restart(self) -> None:
        self._pg_ctl("-m", "fast", "restart")

    def stop(self) -> None:
        try:
            self._pg_ctl("-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def private_server() -> Iterator[PrivateServer]:
    bindir = os.environ.get("FLEETD_TEST_PG_BINDIR")
    if not bindir:
        pytest.skip(
            "FLEETD_TEST_PG_BINDIR is not set: no PostgreSQL programs to run a"
            " private server to restart"
        )
    server = PrivateServer(Path(bindir))
    server.start()
    yield server
    server.stop()


@pytest.mark.slow
async def test_restart_during_race(private_server: PrivateServer, spawn: Spawn) -> None:
    count = 2000
    store = open_store(private_server.url)
    await store.open()
    try:
        started = [spawn(private_server.url, "race", str(count)) for _ in range(4)]
        for child in started:
            assert child.wait_line() == "ready"
        for child in started:
            child.release()
        for _ in range(2):
            await asyncio.sleep(1.0)
            await asyncio.to_thread(private_server.restart)
        results = await asyncio.gather(
            *(asyncio.to_thread(child.finish, 200) for child in started)
        )
        committed = [int(out) for out, _ in results]
        assert sum(committed) == count, committed
        assert any("state_store_retry" in err for _, err in results)
        marks = await store.marks()
        assert len({mark.key for mark in marks}) == count
        assert {mark.resolution for mark in marks} == {Resolution.COMMIT}
        assert await store.counts() == {"a": {"committed": count}}
        assert await store.locks() == []
    finally:
        await store.close()
