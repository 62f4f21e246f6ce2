"""SIGHUP against `fleetd once`, as when its terminal or SSH connection closes.

Its default action kills the process between a lock and its resolution,
so the next cycle finds the records `interrupted` and an operator has to
retry them. A hangup must leave no lock behind, as SIGTERM does, and a
stopped `once` names the agents whose cycle it did not start.
"""

from __future__ import annotations

import signal

from tests.faults.support import Site

AGENT = """NAME     Slow
MNEMONIC slow
WORKFLOW requests
CONCURRENCY 2

EXEC_COMMAND @ROOT@/work.sh @TOKEN@ @ROOT@/markers ${this.id} 2
SET this.state = "done"
CLEANUP
    LOG info cleanup
END
"""


def test_once_hangup_leaves_no_lock(site: Site) -> None:
    site.write("slow.agent", AGENT)
    for index in range(4):
        site.request(f"r{index}")
    process = site.start("once")
    site.wait_for_marker("start")

    process.send_signal(signal.SIGHUP)
    status = process.wait(timeout=60)

    assert status == 0
    assert site.locks() == []
    assert site.leftover_processes() == []


def test_once_stop_names_agents_not_run(site: Site) -> None:
    site.write("10-slow.agent", AGENT)
    site.write(
        "20-later.agent",
        AGENT.replace("NAME     Slow", "NAME     Later").replace(
            "MNEMONIC slow", "MNEMONIC later"
        ),
    )
    for index in range(4):
        site.request(f"r{index}")
    process = site.start("once")
    site.wait_for_marker("start")

    process.send_signal(signal.SIGTERM)
    status = process.wait(timeout=60)

    stopped = [e for e in site.log_events() if e["event"] == "once_stopped"]
    assert status == 0
    assert [event["agents_not_run"] for event in stopped] == [["Later"]]
    assert site.locks() == []
