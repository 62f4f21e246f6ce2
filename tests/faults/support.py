"""A conf dir with a spool and a state store, and the real `fleetd` to run on it.

Every program the agents of these tests run carries the site's `token` in
its arguments, so `leftover_processes` finds any that outlived fleetd.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# The token is a tiny number, so `sleep` takes it as an extra argument and
# the grandchild carries it too.
WORK_SCRIPT = """#!/bin/sh
# $1: token, $2: marker folder, $3: record id, $4: seconds to sleep
touch "$2/$3.start"
sleep "$4" "$1"
touch "$2/$3.end"
"""


def fleetd_command() -> list[str]:
    script = Path(sys.executable).parent / "fleetd"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "fleetd"]


class Site:
    """A conf dir, spool, state store and marker folder under `root`."""

    def __init__(self, root: Path, *, daemon: str = "") -> None:
        self.root = root
        self.token = f"0.0000{secrets.randbelow(10**12):012d}"
        self.conf_dir = root / "conf.d"
        self.spool = root / "spool"
        self.markers = root / "markers"
        self.state = root / "state.db"
        for folder in (self.conf_dir, self.spool, self.markers):
            folder.mkdir()
        work = root / "work.sh"
        work.write_text(WORK_SCRIPT)
        work.chmod(0o755)
        self.write(
            "00-site.toml",
            f'[daemon]\nstate = "sqlite:///{self.state}"\n'
            'safe_path = ["/usr/bin", "/bin"]\n'
            'splay = "0s"\ninterval = "1s"\n'
            f"{daemon}\n"
            '[workflows.requests]\nkind = "spool"\npath = "../spool"\n',
        )

    def write(self, name: str, text: str) -> Path:
        """Write a conf file, replacing @ROOT@ and @TOKEN@."""
        path = self.conf_dir / name
        text = text.replace("@ROOT@", str(self.root)).replace("@TOKEN@", self.token)
        path.write_text(text)
        path.chmod(0o644)
        return path

    def request(self, record: str, **fields: Any) -> Path:
        path = self.spool / f"{record}.json"
        path.write_text(json.dumps(fields))
        return path

    def command(self, *args: str) -> list[str]:
        return fleetd_command() + ["--conf-dir", str(self.conf_dir), *args]

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

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        """Start fleetd in the background, its log in `root/fleetd.log`."""
        with open(self.root / "fleetd.log", "ab") as log:
            return subprocess.Popen(
                self.command(*args),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                cwd=self.root,
            )

    def log_events(self) -> list[dict[str, Any]]:
        """Return the JSON log lines fleetd wrote so far."""
        events = []
        path = self.root / "fleetd.log"
        if not path.exists():
            return []
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    events.append(json.loads(line))
                except ValueError:
                    continue
        return events

    def wait_for_marker(self, suffix: str, count: int = 1, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.markers_with(suffix)) >= count:
                return
            time.sleep(0.02)
        raise AssertionError(f"fewer than {count} {suffix} markers after {timeout} s")

    def markers_with(self, suffix: str) -> set[str]:
        return {
            name.rsplit(".", 1)[0]
            for name in os.listdir(self.markers)
            if name.endswith("." + suffix)
        }

    def history(self) -> list[tuple[str, str, str | None]]:
        """Return (record, resolution, reason) of every resolution in the store."""
        if not self.state.exists():
            return []
        connection = sqlite3.connect(self.state)
        try:
            return connection.execute(
                "SELECT record, resolution, reason FROM history ORDER BY id"
            ).fetchall()
        finally:
            connection.close()

    def locks(self) -> list[dict[str, Any]]:
        done = self.run("status", "--json")
        assert done.returncode == 0, done.stderr
        return list(json.loads(done.stdout)["locks"])

    def leftover_processes(self, wait: float = 2.0) -> list[str]:
        """Return the command lines of live processes that carry the token.

        Waits up to `wait` seconds for them to go first, because a group
        that was just sent SIGKILL needs a moment to be reaped.
        """
        deadline = time.monotonic() + wait
        while True:
            found = subprocess.run(
                ["pgrep", "-a", "-f", self.token],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.splitlines()
            if not found or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def kill_leftovers(self) -> None:
        """SIGKILL every process that carries the token (test teardown)."""
        for line in self.leftover_processes(wait=0):
            pid = int(line.split()[0])
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def rss_kib(pid: int) -> int:
    """Return the resident set size of `pid`, in KiB (0 when it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0
