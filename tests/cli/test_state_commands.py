"""`status`, `history`, `retry`, `check`, `db upgrade`, `--help`, `--version`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

import fleetd
from tests.cli.support import Site, fleetd_command

BROKEN = """\
NAME     Broken
MNEMONIC broken
WORKFLOW requests

SET this.status = "attempted"
EXEC_COMMAND false
"""


def test_status_json_shape(site: Site) -> None:
    site.write("broken.agent", BROKEN)
    site.write(
        "never.agent", 'NAME Never\nMNEMONIC never\nPREREQUISITE OS() = "plan9"\n'
    )
    site.request("dave", status="approved")
    assert site.run("once").returncode == 1
    result = site.run("status", "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert set(status) >= {"agents", "locks", "counts", "errors"}
    agents = {agent["name"]: agent for agent in status["agents"]}
    assert agents["Broken"] == {
        "name": "Broken",
        "mnemonic": "broken",
        "workflow": "requests",
        "file": str(site.conf_dir / "broken.agent"),
        "scheduled": True,
        "reason": None,
    }
    assert agents["Never"]["scheduled"] is False
    assert 'PREREQUISITE OS() = "plan9"' in agents["Never"]["reason"]
    assert status["locks"] == []
    assert status["counts"] == {"Broken": {"error": 1}}
    [error] = status["errors"]
    assert error["agent"] == "Broken"
    assert error["record"] == "dave"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", error["at"])
    assert "reason" in error


def test_status_text_sections(site: Site) -> None:
    site.write("broken.agent", BROKEN)
    site.request("dave", status="approved")
    site.run("once")
    result = site.run("status")
    assert result.returncode == 0
    for heading in ["Agents", "Locks held", "Resolutions by agent", "Records in error"]:
        assert heading in result.stdout.splitlines()
    assert "dave" in result.stdout


def test_history_newest_first(site: Site) -> None:
    site.write("broken.agent", BROKEN)
    site.request("dave", status="approved")
    site.run("once")
    assert site.run("retry", "-a", "Broken", "dave").returncode == 0
    site.run("once")
    result = site.run("history", "dave", "--json")
    assert result.returncode == 0
    entries = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(entries) == 2
    assert entries[0]["at"] >= entries[1]["at"]
    for entry in entries:
        assert entry["agent"] == "Broken"
        assert entry["mnemonic"] == "broken"
        assert entry["workflow"] == "requests"
        assert entry["record"] == "dave"
        assert entry["resolution"] == "error"
        assert entry["run_id"]
        assert entry["owner"]
    text = site.run("history", "dave")
    assert text.stdout.count("error") >= 2


def test_history_of_unknown_record(site: Site) -> None:
    result = site.run("history", "nobody")
    assert result.returncode == 0
    assert result.stdout == ""
    assert "no resolution of record 'nobody'" in result.stderr


def test_retry_brings_error_back(site: Site, reports) -> None:
    site.write("broken.agent", BROKEN)
    site.request("dave", status="approved")
    assert site.run("once").returncode == 1
    second = site.run("once", "--json")
    assert reports(second.stdout)[0]["outcome"] == "done"
    assert reports(second.stdout)[0]["reason"] == "in error"
    retry = site.run("retry", "-a", "Broken", "dave")
    assert retry.returncode == 0
    assert "cleared 1 of 1 marks for mnemonic broken" in retry.stderr
    third = site.run("once", "--json")
    assert reports(third.stdout)[0]["outcome"] == "error"


def test_retry_names_records_without_mark(site: Site) -> None:
    site.write("broken.agent", BROKEN)
    site.request("dave", status="approved")
    assert site.run("once").returncode == 1
    retry = site.run("retry", "-a", "Broken", "dave", "nobody", "dave")
    assert retry.returncode == 0
    assert (
        "record 'nobody' of workflow requests has no mark for mnemonic broken"
        in retry.stderr
    )
    assert "record 'dave'" not in retry.stderr
    assert "cleared 1 of 2 marks for mnemonic broken" in retry.stderr
    again = site.run("retry", "-a", "Broken", "dave")
    assert (
        "record 'dave' of workflow requests has no mark for mnemonic broken"
        in again.stderr
    )
    assert "cleared 0 of 1 marks" in again.stderr
    assert "the next cycle runs" not in again.stderr


def test_retry_unknown_agent_exits_2(site: Site) -> None:
    result = site.run("retry", "-a", "Nobody", "dave")
    assert result.returncode == 2
    assert "no agent named 'Nobody'" in result.stderr


def test_check_reports_unknown_workflow_once(site: Site) -> None:
    path = site.write("lost.agent", "NAME Lost\nMNEMONIC lost\nWORKFLOW nosuch\n")
    site.write("late.agent", "NAME Late\nMNEMONIC late\nPREREQUISITE FALSE\n")
    result = site.run("check", "--log-target", "console")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    # The position is that of the WORKFLOW line.
    prefix = f"{path}:3:1: unknown workflow 'nosuch' (configured: "
    assert len([line for line in lines if line.startswith(prefix)]) == 1
    assert not any(line.startswith("note: agent Lost ") for line in lines)
    assert any(line.startswith("note: agent Late is not scheduled: ") for line in lines)


def test_check_points_at_duplicate_name(site: Site) -> None:
    site.write("a.agent", "NAME Twin\nMNEMONIC first\nECHO a\n")
    path = site.write("b.agent", "# copy of a.agent\n\nNAME Twin\nMNEMONIC second\n")
    result = site.run("check")
    assert result.returncode == 2
    expected = f"{path}:3:1: duplicate agent name 'Twin', already defined in "
    assert expected in result.stderr


def test_check_reports_errors_with_position(site: Site) -> None:
    site.write("good.agent", "NAME Good\nMNEMONIC good\nECHO hi\n")
    path = site.write("bad.agent", "NAME Bad\nMNEMONIC bad\nNOSUCH thing\n")
    result = site.run("check")
    assert result.returncode == 2
    assert re.search(rf"{re.escape(str(path))}:3:\d+: ", result.stderr)
    assert result.stdout == ""


def test_check_passes_and_warns_shared_mnemonic(site: Site) -> None:
    site.write("a.agent", "NAME A\nMNEMONIC same\nECHO a\n")
    site.write("b.agent", "NAME B\nMNEMONIC same\nECHO b\n")
    result = site.run("check", "--log-target", "console")
    assert result.returncode == 0
    assert "agents A, B share mnemonic same" in result.stderr
    assert "2 agents, 1 workflow, no errors" in result.stderr
    logs = site.run("check", "--log-target", "json")
    assert logs.returncode == 0
    event = json.loads(logs.stderr.splitlines()[0])
    assert event["event"] == "mnemonic_shared"
    assert event["agents"] == ["A", "B"]
    assert "2 agents, 1 workflow, no errors" in logs.stderr


def test_check_config_error_exits_2(site: Site) -> None:
    path = site.write("10-x.toml", "[daemon]\nnope = 1\n")
    result = site.run("check")
    assert result.returncode == 2
    assert f"{path}:2:1: daemon.nope: unknown key" in result.stderr


def test_db_upgrade_creates_state(site: Site) -> None:
    result = site.run("db", "upgrade")
    assert result.returncode == 0, result.stderr
    assert (site.root / "state.db").exists()
    assert "schema version" in result.stderr


def test_version(site: Site) -> None:
    result = site.run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"fleetd {fleetd.__version__}"


@pytest.mark.parametrize(
    ("command", "words"),
    [
        ([], ["--conf-dir", "FLEETD_CONF_DIR", "--log-target", "--verbose"]),
        (["once"], ["--agent", "--file", "--pretend", "--json", "--quiet"]),
        (["status"], ["--json"]),
        (["retry"], ["--agent", "RECORD"]),
        (["history"], ["--workflow", "--json"]),
        (["db"], ["upgrade"]),
        (["run"], ["--conf-dir"]),
        (["check"], ["--conf-dir"]),
    ],
)
def test_help_describes_options(site: Site, command: list[str], words) -> None:
    result = site.run(*command, "--help")
    assert result.returncode == 0
    for word in words:
        assert word in result.stdout


def test_conf_dir_from_environment(site: Site, tmp_path) -> None:
    site.write("a.agent", "NAME A\nMNEMONIC a\nECHO from-env\n")
    result = subprocess.run(
        fleetd_command() + ["once"],
        env={**os.environ, "FLEETD_CONF_DIR": str(site.conf_dir)},
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "from-env" in result.stdout


def test_status_lists_held_lock(site: Site) -> None:
    site.write(
        "slow.agent",
        "NAME Slow\nMNEMONIC slow\nWORKFLOW requests\n"
        "EXEC_COMMAND touch @ROOT@/started\nEXEC_COMMAND sleep 29.5\n"
        "CLEANUP\n  ECHO done\nEND\n",
    )
    site.request("held", status="approved")
    process = subprocess.Popen(
        fleetd_command() + ["--conf-dir", str(site.conf_dir), "once"],
        cwd=site.root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not (site.root / "started").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        result = site.run("status", "--json")
    finally:
        # The second signal skips the shutdown grace. Sent at once, the two
        # could merge into one pending signal in the kernel.
        process.send_signal(signal.SIGINT)
        time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
    assert result.returncode == 0, result.stderr
    [lock] = json.loads(result.stdout)["locks"]
    assert lock["agent"] == "Slow"
    assert lock["mnemonic"] == "slow"
    assert lock["workflow"] == "requests"
    assert lock["record"] == "held"
    assert lock["owner"].endswith(f":{process.pid}")
    assert lock["since"] <= lock["expires"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", lock["since"])


def test_missing_postgresql_database_exits_1(site: Site) -> None:
    dsn = os.environ.get("FLEETD_TEST_PG_DSN")
    if not dsn:
        pytest.skip("FLEETD_TEST_PG_DSN is not set: no PostgreSQL server to test")
    server = dsn.rsplit("/", 1)[0]
    site.write("50-state.toml", f'[daemon]\nstate = "{server}/no_such_fleetd_db"\n')
    site.write("host.agent", "NAME Host\nMNEMONIC host\nECHO hi\n")
    for command in (["status"], ["once"], ["history", "r1"]):
        result = site.run(*command)
        assert result.returncode == 1, command
        assert "Traceback" not in result.stderr, command
        assert 'database "no_such_fleetd_db" does not exist' in result.stderr
        assert "that the server is up" in result.stderr


def test_history_of_null_records(site: Site) -> None:
    site.write("host.agent", "NAME Host\nMNEMONIC host\nEXEC_COMMAND false\n")
    assert site.run("once").returncode == 1
    table = site.run("history", "")
    assert table.returncode == 0, table.stderr
    assert table.stdout.startswith("Null workflow runs (no record id)\n")
    assert "Host" in table.stdout
    lines = site.run("history", "", "--json").stdout.splitlines()
    [entry] = [json.loads(line) for line in lines]
    assert entry["workflow"] == "Null"
    assert entry["record"] is None
    assert entry["resolution"] == "error"


def test_status_reads_store_on_immutable_folder(site: Site, tmp_path: Path) -> None:
    # As on a read-only mount, or for a user who may not write the state:
    # status and history still read it.
    folder = tmp_path / "state"
    folder.mkdir()
    site.write("90-state.toml", f'[daemon]\nstate = "sqlite:///{folder}/state.db"\n')
    site.write("broken.agent", BROKEN)
    site.request("dave", status="approved")
    assert site.run("once").returncode == 1
    attribute = subprocess.run(
        ["chattr", "+i", str(folder)], check=False, capture_output=True
    )
    if attribute.returncode != 0:
        pytest.skip("cannot make a folder immutable on this file system")
    try:
        status = site.run("status", "--json")
        history = site.run("history", "--json", "dave")
        retry = site.run("retry", "-a", "Broken", "dave")
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)

    assert status.returncode == 0, status.stderr
    [mark] = json.loads(status.stdout)["errors"]
    assert mark["record"] == "dave"
    assert history.returncode == 0, history.stderr
    entries = [json.loads(line) for line in history.stdout.splitlines()]
    assert [entry["resolution"] for entry in entries] == ["error"]
    assert retry.returncode == 1
    assert "failed" in retry.stderr
