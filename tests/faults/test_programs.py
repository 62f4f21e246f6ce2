"""Programs that misbehave: each run ends cleanly and leaves no process behind.

Every agent here runs on the Null workflow through `fleetd once --json`,
and every program it starts carries the site's token in its arguments.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from typing import Any

import pytest

from tests.faults.support import Site, rss_kib

AGENTS = {
    "IgnoreTerm": """TIMEOUT 1s
EXEC_COMMAND /bin/sh -c "trap '' TERM; sleep 60 $0; sleep 60 $0" @TOKEN@
""",
    "Grandchildren": """TIMEOUT 1s
EXEC_COMMAND /bin/sh -c "sleep 60 $0 & sleep 60 $0 & wait" @TOKEN@
""",
    "LeavesChildren": """EXEC_COMMAND /bin/sh -c "sleep 60 $0 & sleep 60 $0 & exit 0" @TOKEN@
""",
    "ClosesOutput": """EXEC_COMMAND /bin/sh -c "exec >&- 2>&-; sleep 0.3 $0" @TOKEN@
""",
    "HugeOutput": """EXEC_COMMAND /bin/sh -c "yes @LINE@ | head -c 100000000; echo last-line-$0; exit 3" @TOKEN@
""",
    "HugeLine": """EXEC_COMMAND /bin/sh -c "head -c 50000000 /dev/zero; exit 4" @TOKEN@
""",
    "InvalidUtf8": """EXEC_COMMAND /bin/sh -c "printf 'bad \\\\377\\\\376 bytes\\\\n'; exit 5" @TOKEN@
""",
    "NeverExits": """TIMEOUT 1s
EXEC_COMMAND /bin/sleep 3600 @TOKEN@
""",
}


def write_agent(site: Site, name: str) -> None:
    body = AGENTS[name].replace("@LINE@", "x" * 99)
    site.write(
        f"{name.lower()}.agent",
        f"NAME     {name}\nMNEMONIC {name.lower()}\n{body}"
        "ON_FAILURE\n    ECHO cleanup-ran\nEND\n",
    )


def run_once(site: Site, name: str) -> tuple[dict[str, Any], list[str], int]:
    """Run one agent through `once`; return its report, its log lines and max RSS."""
    with open(site.root / "fleetd.log", "wb") as stderr:
        process = subprocess.Popen(
            site.command("once", "-a", name, "--json", "--log-target", "json"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=site.root,
        )
    peak = [0]

    def sample() -> None:
        while process.poll() is None:
            peak[0] = max(peak[0], rss_kib(process.pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    stdout, _ = process.communicate(timeout=60)
    sampler.join()
    reports = [
        json.loads(line) for line in stdout.splitlines() if line.startswith(b"{")
    ]
    assert len(reports) == 1, stdout
    log = (site.root / "fleetd.log").read_text(errors="replace").splitlines()
    return reports[0], log, peak[0]


def events(log: list[str], name: str) -> list[dict[str, Any]]:
    found = []
    for line in log:
        if f'"{name}"' in line:
            found.append(json.loads(line))
    return found


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("IgnoreTerm", "timed out after 1 s"),
        ("Grandchildren", "timed out after 1 s"),
        ("NeverExits", "timed out after 1 s"),
        ("InvalidUtf8", "exited with status 5"),
    ],
)
def test_program_fails_cleanly(site: Site, name: str, reason: str) -> None:
    write_agent(site, name)
    report, _log, _peak = run_once(site, name)

    assert report["outcome"] == "rolled_back"
    assert report["run"] == "failed"
    assert report["cleanup"] == "succeeded"
    assert reason in report["reason"]
    assert site.leftover_processes() == []
    assert site.locks() == []


def test_invalid_utf8_logged_replaced(site: Site) -> None:
    write_agent(site, "InvalidUtf8")
    _report, log, _peak = run_once(site, "InvalidUtf8")

    lines = [event["line"] for event in events(log, "program_output")]
    assert "bad \ufffd\ufffd bytes" in lines


def test_program_ignoring_sigterm_gets_sigkill(site: Site) -> None:
    write_agent(site, "IgnoreTerm")
    _report, log, _peak = run_once(site, "IgnoreTerm")

    assert len(events(log, "program_killed")) == 1


def test_leftover_children_killed(site: Site) -> None:
    write_agent(site, "LeavesChildren")
    report, log, _peak = run_once(site, "LeavesChildren")

    # The program itself exited 0: the run succeeds, as a service unit
    # whose main process exited 0 does, and what it left is killed.
    assert report["outcome"] == "committed"
    assert len(events(log, "program_left_processes")) == 1
    assert site.leftover_processes() == []


def test_closed_output_succeeds(site: Site) -> None:
    write_agent(site, "ClosesOutput")
    report, _log, _peak = run_once(site, "ClosesOutput")

    assert report["outcome"] == "committed"
    assert report["run"] == "succeeded"
    assert site.leftover_processes() == []


@pytest.mark.timeout(90)
def test_huge_output_bounded(site: Site) -> None:
    write_agent(site, "HugeOutput")
    report, log, peak = run_once(site, "HugeOutput")

    assert report["outcome"] == "rolled_back"
    assert "exited with status 3" in report["reason"]
    # The stdlib loop and the modules of fleetd take about 40 MiB.
    assert peak < 120 * 1024, f"fleetd grew to {peak} KiB"
    cut = events(log, "program_output_cut")
    assert len(cut) == 1
    assert cut[0]["bytes"] > 90_000_000
    assert cut[0]["lines"] > 900_000
    logged = events(log, "program_output")
    assert len(logged) < 20_000
    assert logged[-1]["line"] == f"last-line-{site.token}"
    assert site.leftover_processes() == []


@pytest.mark.timeout(90)
def test_huge_line_bounded(site: Site) -> None:
    write_agent(site, "HugeLine")
    report, log, peak = run_once(site, "HugeLine")

    assert report["outcome"] == "rolled_back"
    assert peak < 120 * 1024, f"fleetd grew to {peak} KiB"
    logged = events(log, "program_output")
    assert len(logged) == 1
    assert logged[0]["cut_bytes"] == 50_000_000 - 8192
