"""Several `fleetd once` processes over one table: each row runs once per mnemonic."""

from __future__ import annotations

import collections
import subprocess

import pytest

from tests.fleet.conftest import PgSite, json_lines

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ROWS = 2000
PROCESSES = 4


def agent(letter: str) -> str:
    return f"""
        NAME     Mark {letter}
        MNEMONIC mark-{letter}
        WORKFLOW tickets
        CONCURRENCY 8
        ECHO ran {letter} ${{this.id}}
        SET this.mark_{letter} = "${{this.mark_{letter}}}{letter}"
        """


def test_four_processes_run_each_row_once(site: PgSite) -> None:
    site.tickets(
        ROWS, ", mark_a text NOT NULL DEFAULT '', mark_b text NOT NULL DEFAULT ''"
    )
    site.write("a.agent", agent("a"))
    site.write("b.agent", agent("b"))
    upgraded = site.run("db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr

    # Output goes to files: a full pipe would stall a process while the
    # test waits for another.
    outputs = [(site.root / f"out{n}", site.root / f"err{n}") for n in range(PROCESSES)]
    processes = []
    for out, err in outputs:
        with out.open("w") as stdout, err.open("w") as stderr:
            processes.append(
                subprocess.Popen(
                    site.command("-q", "once", "--json"),
                    cwd=site.root,
                    stdout=stdout,
                    stderr=stderr,
                    stdin=subprocess.DEVNULL,
                )
            )
    for process, (_, err) in zip(processes, outputs, strict=True):
        assert process.wait(timeout=120) == 0, err.read_text()[-2000:]
    stdouts = [out.read_text() for out, _ in outputs]

    echoed = collections.Counter(
        line
        for stdout in stdouts
        for line in stdout.splitlines()
        if line.startswith("ran ")
    )
    expected = {f"ran {letter} {n}" for letter in "ab" for n in range(1, ROWS + 1)}
    assert set(echoed) == expected
    assert max(echoed.values()) == 1

    reports = [report for stdout in stdouts for report in json_lines(stdout)]
    committed = collections.Counter(
        (r["mnemonic"], r["record"]) for r in reports if r["outcome"] == "committed"
    )
    assert len(committed) == 2 * ROWS
    assert max(committed.values()) == 1
    outcomes = collections.Counter(r["outcome"] for r in reports)
    assert set(outcomes) <= {"committed", "locked", "done"}
    assert sum(outcomes.values()) == PROCESSES * 2 * ROWS

    marks = site.query("SELECT mark_a, mark_b, count(*) FROM tickets GROUP BY 1, 2")
    assert [tuple(row) for row in marks] == [("a", "b", ROWS)]
    [history] = site.query(
        "SELECT count(*), count(DISTINCT (record, mnemonic)) FROM fleetd_history"
        " WHERE resolution = 'committed'"
    )
    assert tuple(history) == (2 * ROWS, 2 * ROWS)
    assert site.query("SELECT * FROM fleetd_locks") == []
