"""A private PostgreSQL server for tests that stop or restart their server.

Restarting the shared test server would break the PostgreSQL tests that
run beside them, so these tests start a server of their own: initdb into
a temporary directory, on a free loopback port. PostgreSQL's programs are
taken from FLEETD_TEST_PG_BINDIR, else from Debian's
/usr/lib/postgresql/<version>/bin. Run as root, the server runs as the
`postgres` user through runuser, since PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def find_bindir() -> Path | None:
    """Return the directory of initdb and pg_ctl, or None when absent."""
    configured = os.environ.get("FLEETD_TEST_PG_BINDIR")
    if configured:
        return Path(configured)
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not candidates:
        return None

    return candidates[-1].parent


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
        """Create the cluster and start the server."""
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

    def pause(self) -> None:
        """Stop the server, keeping its data for `resume`."""
        self._pg_ctl("-m", "fast", "stop")

    def resume(self) -> None:
        self._pg_ctl("start")

    def stop(self) -> None:
        """Stop the server and delete its data."""
        try:
            self._pg_ctl("-m", "immediate", "stop")
        except subprocess.CalledProcessError:
            pass  # already stopped by pause()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def private_server() -> Iterator[PrivateServer]:
    bindir = find_bindir()
    if bindir is None:
        pytest.skip(
            "no PostgreSQL programs (initdb, pg_ctl) to run a private server:"
            " set FLEETD_TEST_PG_BINDIR to their directory"
        )
    server = PrivateServer(bindir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
