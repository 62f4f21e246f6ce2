"""Process checks shared by the runtime tests."""

from __future__ import annotations

import time
from pathlib import Path


def process_gone(pid: int) -> bool:
    """Tell whether `pid` is gone or a zombie (exited, not yet reaped by init)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    state = stat.rsplit(")", 1)[1].split()[0]
    return state in ("Z", "X")


def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    """Wait up to `timeout` seconds for `pid` to be gone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process_gone(pid):
            return True
        time.sleep(0.02)
    return process_gone(pid)


def wait_for_file(path: Path, timeout: float = 5.0) -> str:
    """Wait for `path` to exist with content and return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text()
        time.sleep(0.02)
    raise AssertionError(f"{path} did not appear within {timeout} s")
