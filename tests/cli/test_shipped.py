"""The shipped conf.d runs as is, in a copy of the checkout, exactly once."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from tests.cli.support import Site

CHECKOUT = Path(__file__).resolve().parents[2]


@pytest.fixture
def shipped(tmp_path: Path) -> Site:
    """Copy conf.d and examples/ as the README's command lays them out."""
    shutil.copytree(CHECKOUT / "conf.d", tmp_path / "conf.d")
    shutil.copytree(CHECKOUT / "examples", tmp_path / "examples")
    (tmp_path / "var/sandbox").mkdir(parents=True)
    shutil.copytree(
        tmp_path / "examples/accounts/spool", tmp_path / "var/sandbox/spool"
    )
    return Site(tmp_path, spool=tmp_path / "var/sandbox/spool")


def outcomes(lines: list[dict], agent: str) -> dict[str | None, str]:
    return {line["record"]: line["outcome"] for line in lines if line["agent"] == agent}


def test_shipped_conf_runs_exactly_once(shipped: Site, reports) -> None:
    check = shipped.run("check")
    assert check.returncode == 0, check.stderr

    first = shipped.run("once", "--json")
    assert first.returncode == 1, first.stderr  # one error, one invalid request
    lines = reports(first.stdout)
    provision = outcomes(lines, "Provision-Account")
    assert len(provision) >= 50
    counts = Counter(provision.values())
    assert counts["committed"] >= 40
    assert provision["req-0004"] == "skipped"  # pending approval
    assert provision["req-0046"] == "rolled_back"  # duplicate user name
    assert provision["req-0047"] == "skipped"  # invalid user name
    assert provision["req-0049"] == "skipped"  # shell characters in the name
    assert provision["req-0051"] == "rolled_back"  # key rejected by ssh-keygen
    assert provision["req-0052"] == "error"  # unknown group, undo refused
    assert provision["req-0055"] == "invalid"  # truncated JSON
    assert outcomes(lines, "Group-Folders") == {None: "committed"}
    assert (
        Counter(outcomes(lines, "Welcome-Letter").values())["committed"]
        == (counts["committed"])
    )

    sandbox = shipped.root / "var/sandbox"
    home = sandbox / "home/amoreau"
    assert (home / ".ssh/authorized_keys").is_file()
    assert (home / "README.txt").is_file()
    assert oct(home.stat().st_mode & 0o777) == oct(0o750)
    assert (sandbox / "outbox/amoreau.txt").is_file()
    request = json.loads((shipped.spool / "req-0001.json").read_text())
    assert request["status"] == "welcomed"
    assert request["home"] == str(home)
    assert not (sandbox / "home/pvance").exists()
    assert (sandbox / "home/gwright").is_dir()  # left for an operator
    assert not Path("/tmp/pwned").exists()

    second = shipped.run("once", "--json")
    again = reports(second.stdout)
    new_commits = [
        line
        for line in again
        if line["outcome"] == "committed" and line["record"] is not None
    ]
    assert new_commits == []
    assert outcomes(again, "Provision-Account")["req-0052"] == "done"
    assert outcomes(again, "Group-Folders") == {None: "skipped"}

    status = json.loads(shipped.run("status", "--json").stdout)
    assert [e["record"] for e in status["errors"]] == ["req-0052"]
    history = shipped.run("history", "req-0052", "--json")
    assert json.loads(history.stdout.splitlines()[0])["resolution"] == "error"

    assert shipped.run("retry", "-a", "Provision-Account", "req-0052").returncode == 0
    third = reports(shipped.run("once", "--json", "-a", "Provision-Account").stdout)
    # The half-populated home is still there, so the Check now fails.
    assert outcomes(third, "Provision-Account")["req-0052"] == "rolled_back"
