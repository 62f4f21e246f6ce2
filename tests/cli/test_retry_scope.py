"""`fleetd retry` clears the marks of the named agent's workflow only."""

from __future__ import annotations

import json

from tests.cli.support import Site

FIRST = """\
NAME     First
MNEMONIC shared
WORKFLOW requests

ECHO first ran ${this.id}
"""

SECOND = """\
NAME     Second
MNEMONIC shared
WORKFLOW archive

ECHO second ran ${this.id}
"""


def test_retry_keeps_other_workflow_mark(site: Site) -> None:
    # Two agents share a mnemonic on two workflows that both have "r1".
    archive = site.root / "archive"
    archive.mkdir()
    site.write(
        "10-archive.toml",
        '[workflows.archive]\nkind = "spool"\npath = "../archive"\n',
    )
    site.write("first.agent", FIRST)
    site.write("second.agent", SECOND)
    site.request("r1")
    (archive / "r1.json").write_text("{}")
    first = site.run("once")
    assert first.returncode == 0, first.stderr
    assert "second ran r1" in first.stdout

    retry = site.run("retry", "-a", "First", "r1")
    assert retry.returncode == 0, retry.stderr

    again = site.run("once", "--json")
    reports = {
        report["agent"]: report
        for report in (
            json.loads(line)
            for line in again.stdout.splitlines()
            if line.startswith("{")
        )
    }
    assert "first ran r1" in again.stdout
    assert "second ran r1" not in again.stdout
    assert reports["Second"]["outcome"] == "done"
    assert "cleared 1 of 1 marks" in retry.stderr
