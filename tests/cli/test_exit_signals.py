"""Signals that arrive while `run` or `once` is on its way out."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli.support import Site, fleetd_command

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


def start_command(site: Site, *args: str) -> subprocess.Popen[bytes]:
    """Start `fleetd` with its output in stdout.txt and stderr.txt under the site."""
    with (
        open(site.root / "stdout.txt", "wb") as out,
        open(site.root / "stderr.txt", "wb") as err,
    ):
        return subprocess.Popen(
            fleetd_command() + ["--conf-dir", str(site.conf_dir), *args],
            cwd=site.root,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )


def wait_for_text(
    process: subprocess.Popen[bytes], path: Path, text: str, timeout: float = 30
) -> None:
    """Poll `path` every millisecond until it contains `text`."""
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        assert process.poll() is None, f"exited with {process.returncode} first"
        assert time.monotonic() < deadline, f"no {text!r} in {path.name}"
        time.sleep(0.001)


def outputs(site: Site) -> str:
    stdout = (site.root / "stdout.txt").read_text()
    stderr = (site.root / "stderr.txt").read_text()
    return f"stdout:\n{stdout}\nstderr:\n{stderr}"


# When the second SIGTERM goes: after which log event, and how many seconds
# later. Interpreter shutdown, where that signal used to kill the daemon,
# began 10 to 30 ms after daemon_stopped on a 2-core VM. The other delays
# cover faster and slower machines.
SECOND_SIGTERM_TIMES = [
    ("daemon_stopping", 0.0),
    ("daemon_stopped", 0.0),
    ("daemon_stopped", 0.01),
    ("daemon_stopped", 0.02),
    ("daemon_stopped", 0.03),
    ("daemon_stopped", 0.04),
    ("daemon_stopped", 0.06),
    ("daemon_stopped", 0.08),
]


@pytest.mark.slow
@pytest.mark.parametrize(("event", "delay"), SECOND_SIGTERM_TIMES)
def test_run_second_sigterm_exits_0(site: Site, event: str, delay: float) -> None:
    site.write("90-splay.toml", '[daemon]\nsplay = "0s"\n')
    site.write("tick.agent", "NAME Tick\nMNEMONIC tick\nSCHEDULE every 1s\nECHO tick\n")
    stderr = site.root / "stderr.txt"
    for _round in range(3):
        process = start_command(site, "run", "--log-target", "json")
        try:
            wait_for_text(process, site.root / "stdout.txt", "tick")
            process.send_signal(signal.SIGTERM)
            wait_for_text(process, stderr, f'"event": "{event}"')
            time.sleep(delay)
            process.send_signal(signal.SIGTERM)
            status = process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()

        assert status == 0, outputs(site)
        assert '"event": "daemon_stopped"' in stderr.read_text()


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.0, 0.01, 0.02, 0.03, 0.05, 0.08])
def test_once_sigterm_after_cycle_exits_0(site: Site, delay: float) -> None:
    site.write("tick.agent", "NAME Tick\nMNEMONIC tick\nECHO tick\n")
    for _round in range(3):
        process = start_command(site, "once", "--json")
        try:
            # The report line is the last output of a finished cycle.
            wait_for_text(process, site.root / "stdout.txt", '"outcome"')
            time.sleep(delay)
            process.send_signal(signal.SIGTERM)
            status = process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()

        assert status == 0, outputs(site)
