"""Signals that arrive while `run` or `once` is on its way out."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import os, signal
from fleetd import deferred_signals

with deferred_signals.deferred((signal.SIGTERM, signal.SIGHUP), restore={restore}):
    pass
os.kill(os.getpid(), signal.SIGTERM)
os.kill(os.getpid(), signal.SIGHUP)
print("still running")
"""


def run_script(restore: bool) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT.format(restore=restore)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_signal_after_block_ignored_when_exiting() -> None:
    result = run_script(restore=False)

    assert result.returncode == 0, result.stderr
    assert result.stdout == "still running\n"


def test_signal_after_block_acts_when_restored() -> None:
    result = run_script(restore=True)

    assert result.returncode == -15
    assert result.stdout == ""
