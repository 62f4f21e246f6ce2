"""Commits of two mnemonics to one spool record, at the same time."""

from __future__ import annotations

import json
import subprocess

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
