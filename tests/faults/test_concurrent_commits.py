"""Commits of two mnemonics to one spool record, at the same time."""

from __future__ import annotations

import json
import signal
import subprocess
import time

from tests.faults.support import Site

# A large record makes reading, merging and writing it take a fraction of a
# second, so the two commits below overlap in most attempts.
BLOB = ["x" * 100] * 200_000
ATTEMPTS = 3


def test_concurrent_commits_keep_both_fields(site: Site) -> None:
    site.write("a.agent", "NAME A\nMNEMONIC a\nWORKFLOW requests\nSET this.a = 1\n")
    site.write("b.agent", "NAME B\nMNEMONIC b\nWORKFLOW requests\nSET this.b = 1\n")
    assert site.run("db", "upgrade").returncode == 0

    for attempt in range(ATTEMPTS):
        record = f"r{attempt}"
        site.request(record, blob=BLOB)
        first = subprocess.Popen(
            site.command("once", "-a", "A", "--json"),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        second = site.run("once", "-a", "B", "--json")
        first_stdout, _ = first.communicate(timeout=60)

        assert first.returncode == 0
        assert second.returncode == 0
        assert f'"record": "{record}", "outcome": "committed"' in first_stdout
        assert f'"record": "{record}", "outcome": "committed"' in second.stdout
        fields = json.loads((site.spool / f"{record}.json").read_text())
        committed_a = fields.get("a")
        committed_b = fields.get("b")
        assert committed_a == 1, f"attempt {attempt}: the commit of A was lost"
        assert committed_b == 1, f"attempt {attempt}: the commit of B was lost"


def test_outside_flock_lets_sigterm_stop(site: Site) -> None:
    # Any user who may read a request file may flock it. A commit that waits
    # for that lock without limit keeps fleetd from stopping, although
    # SIGTERM ends the process and a second signal skips the grace.
    site.write(
        "10-grace.toml", '[daemon]\nshutdown_grace = "1s"\ncleanup_timeout = "1s"\n'
    )
    site.write(
        "a.agent",
        "NAME A\nMNEMONIC a\nWORKFLOW requests\nSET this.a = 1\n"
        "ON_SUCCESS\n  LOG info ok\nEND\n",
    )
    assert site.run("db", "upgrade").returncode == 0
    request = site.request("r1", status="new")
    holder = subprocess.Popen(
        ["flock", str(request), "sleep", "120", site.token],
        stdin=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        once = site.start("once", "--json")
        deadline = time.monotonic() + 20
        while not any(event.get("event") == "agent_log" for event in site.log_events()):
            assert time.monotonic() < deadline, "the run never reached Cleanup"
            time.sleep(0.05)
        time.sleep(0.5)
        once.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        once.send_signal(signal.SIGTERM)
        try:
            status = once.wait(timeout=15)
        except subprocess.TimeoutExpired:
            once.kill()
            once.wait()
            raise AssertionError("once still ran 15 s after two SIGTERMs") from None
    finally:
        holder.kill()
        holder.wait()

    assert status in (0, 1)
