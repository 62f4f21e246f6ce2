from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from fleetd.locks import open_store
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


class Child:
    """A child process running tests/locks/child.py."""

    def __init__(self, url: str, mode: str, argument: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(CHILD), url, mode, argument],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(CHILD.parents[2])},
        )

    def wait_line(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        if not line:
            self.process.wait(10)
            assert self.process.stderr is not None
            raise AssertionError(f"child ended: {self.process.stderr.read()}")
        return line

    def release(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def finish(self, timeout: float = 100) -> str:
        out, err = self.process.communicate(timeout=timeout)
        assert self.process.returncode == 0, err
        return out


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
