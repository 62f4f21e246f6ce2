"""SIGTERM, SIGINT (once or twice) and SIGHUP storms against real fleetd processes.

After each stop: the exit status is 0, every resolved lock had its Cleanup
run, no lock is left, and no program that fleetd started is still alive.
"""

from __future__ import annotations

import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.faults.support import Site

AGENT = """NAME     Slow
MNEMONIC slow
WORKFLOW requests
SCHEDULE every 1s
CONCURRENCY 3

EXEC_COMMAND @ROOT@/work.sh @TOKEN@ @ROOT@/markers ${this.id} ${this.delay}
SET this.state = "done"
CLEANUP
    EXEC_COMMAND touch @ROOT@/markers/${this.id}.cleanup
END
"""


def prepare(site: Site, records: int, seed: int) -> None:
    rng = random.Random(seed)
    site.write("20-grace.toml", '[daemon]\nshutdown_grace = "1s"\n')
    site.write("slow.agent", AGENT)
    for index in range(records):
        site.request(f"r{index:02d}", delay=f"{rng.uniform(0.1, 3.0):.2f}")


def check_stopped(site: Site, process: subprocess.Popen[bytes]) -> None:
    status = process.wait(timeout=30)
    log = (site.root / "fleetd.log").read_text(errors="replace")

    assert status == 0, log[-3000:]
    assert site.leftover_processes() == []
    resolved = {record for record, _resolution, _reason in site.history()}
    assert resolved <= site.markers_with("cleanup"), "a lock resolved without Cleanup"
    assert site.locks() == []


def wait_started(site: Site) -> None:
    """Wait until the first program of the agent started."""
    site.wait_for_marker("start")


@pytest.mark.parametrize(
    ("signum", "seed"),
    [(signal.SIGTERM, 1), (signal.SIGINT, 3)],
)
def test_run_stops_at_random_moment(site: Site, signum: int, seed: int) -> None:
    prepare(site, records=12, seed=seed)
    process = site.start("run", "--log-target", "json")
    wait_started(site)
    time.sleep(random.Random(seed).uniform(0.0, 2.5))
    process.send_signal(signum)

    check_stopped(site, process)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_run_second_signal_skips_grace(site: Site, signum: int) -> None:
    prepare(site, records=6, seed=5)
    site.write("30-grace.toml", '[daemon]\nshutdown_grace = "30s"\n')
    process = site.start("run", "--log-target", "json")
    wait_started(site)
    started = time.monotonic()
    process.send_signal(signum)
    time.sleep(0.05)
    process.send_signal(signum)

    check_stopped(site, process)
    # Well inside the 30 s grace: the second signal cancelled the runs.
    assert time.monotonic() - started < 20


@pytest.mark.parametrize(
    ("signum", "twice", "seed"),
    [(signal.SIGTERM, False, 6), (signal.SIGINT, False, 7), (signal.SIGTERM, True, 8)],
)
def test_once_stops_at_random_moment(
    site: Site, signum: int, twice: bool, seed: int
) -> None:
    prepare(site, records=9, seed=seed)
    process = site.start("once")
    wait_started(site)
    time.sleep(random.Random(seed).uniform(0.0, 1.5))
    process.send_signal(signum)
    if twice:
        time.sleep(0.05)
        process.send_signal(signum)

    check_stopped(site, process)


def test_run_survives_sighup_storm(site: Site) -> None:
    prepare(site, records=12, seed=9)
    process = site.start("run", "--log-target", "json")
    wait_started(site)
    for _ in range(200):
        process.send_signal(signal.SIGHUP)
        time.sleep(0.005)
    assert process.poll() is None, "fleetd exited during the SIGHUP storm"
    # Runs go on after the storm: more records get committed.
    site.wait_for_marker("end", count=4)
    process.send_signal(signal.SIGTERM)

    check_stopped(site, process)
    names = [event.get("event") for event in site.log_events()]
    assert "reload_finished" in names
    assert "reload_failed" not in names


def wait_sigterm_caught(pid: int, timeout: float = 10) -> None:
    """Wait until `pid` catches SIGTERM: its Python code started running.

    Before that, the interpreter itself is starting and the default action
    applies, as it does for any program.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = Path(f"/proc/{pid}/status").read_text()
        caught = next(line for line in status.splitlines() if line.startswith("SigCgt"))
        if int(caught.split()[1], 16) & (1 << (signal.SIGTERM - 1)):
            return
        time.sleep(0.002)
    raise AssertionError("fleetd never caught SIGTERM")


@pytest.mark.parametrize(
    ("command", "delay"), [("run", 0.0), ("run", 0.2), ("once", 0.0)]
)
def test_stop_during_startup_is_graceful(
    site: Site, command: str, delay: float
) -> None:
    prepare(site, records=3, seed=10)
    process = site.start(command, "--log-target", "json")
    wait_sigterm_caught(process.pid)
    time.sleep(delay)
    process.send_signal(signal.SIGTERM)

    check_stopped(site, process)


def test_sighup_storm_during_startup(site: Site) -> None:
    prepare(site, records=6, seed=11)
    process = site.start("run", "--log-target", "json")
    wait_sigterm_caught(process.pid)
    for _ in range(50):
        process.send_signal(signal.SIGHUP)
        time.sleep(0.005)
    site.wait_for_marker("start")
    assert process.poll() is None, "fleetd exited on SIGHUP during startup"
    process.send_signal(signal.SIGTERM)

    check_stopped(site, process)
