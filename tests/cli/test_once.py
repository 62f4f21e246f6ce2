"""`fleetd once`: reports, exit statuses, selection, pretend, signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from fleetd.cli.once import TABLE_ORDER, agent_table
from fleetd.runtime.report import Outcome, RunReport
from tests.cli.support import Site, fleetd_command

FIELDS = {
    "agent", "mnemonic", "workflow", "record", "outcome", "run", "cleanup",
    "reason", "duration_s",
}  # fmt: skip

PROVISION = """\
NAME     Provision
MNEMONIC provision
WORKFLOW requests

REQUIRE this.status = "approved"
REQUIRE this.user MATCHES /^[a-z]+$/
EXEC_COMMAND mkdir -p "@ROOT@/home/${this.user}"
SET this.status = "done"
CLEANUP
    ECHO cleaned ${this.id}
END
"""


def test_json_report_fields(site: Site, reports) -> None:
    site.write("provision.agent", PROVISION)
    site.request("r1", status="approved", user="alice")
    site.request("r2", status="pending", user="bob")
    result = site.run("once", "--json")
    assert result.returncode == 0, result.stderr
    lines = reports(result.stdout)
    assert len(lines) == 2
    by_record = {line["record"]: line for line in lines}
    for line in lines:
        assert set(line) - {"run_id", "would"} == FIELDS
        assert line["agent"] == "Provision"
        assert line["mnemonic"] == "provision"
        assert line["workflow"] == "requests"
        assert isinstance(line["duration_s"], float)
    assert by_record["r1"]["outcome"] == "committed"
    assert by_record["r1"]["run"] == "succeeded"
    assert by_record["r1"]["cleanup"] == "succeeded"
    assert by_record["r1"]["reason"] is None
    assert by_record["r2"]["outcome"] == "skipped"
    assert by_record["r2"]["run"] == "not_run"
    assert by_record["r2"]["cleanup"] == "not_run"
    assert (
        'provision.agent:5: REQUIRE this.status = "approved"'
        in (by_record["r2"]["reason"])
    )
    assert "cleaned r1" in result.stdout
    assert json.loads((site.spool / "r1.json").read_text())["status"] == "done"
    assert (site.root / "home/alice").is_dir()


def test_stdout_has_only_echo_and_reports(site: Site) -> None:
    site.write("provision.agent", PROVISION)
    site.request("r1", status="approved", user="alice")
    result = site.run("once", "--json", "-vv")
    lines = result.stdout.splitlines()
    assert lines == ["cleaned r1", lines[1]]
    assert json.loads(lines[1])["outcome"] == "committed"
    assert "run_finished" in result.stderr


def test_null_record_is_json_null(site: Site, reports) -> None:
    site.write("host.agent", "NAME Host\nMNEMONIC host\nEXEC_COMMAND true\n")
    [line] = reports(site.run("once", "--json").stdout)
    assert line["record"] is None
    assert line["workflow"] == "Null"


def test_exit_0_when_all_runs_fine(site: Site) -> None:
    site.write("host.agent", "NAME Host\nMNEMONIC host\nEXEC_COMMAND true\n")
    assert site.run("once").returncode == 0


def test_exit_1_on_error_outcome(site: Site, reports) -> None:
    site.write("host.agent", "NAME Host\nMNEMONIC host\nEXEC_COMMAND false\n")
    result = site.run("once", "--json")
    assert result.returncode == 1
    assert reports(result.stdout)[0]["outcome"] == "error"


def test_exit_1_on_invalid_record(site: Site, reports) -> None:
    site.write("provision.agent", PROVISION)
    (site.spool / "broken.json").write_text("{")
    result = site.run("once", "--json")
    assert result.returncode == 1
    [line] = reports(result.stdout)
    assert line["outcome"] == "invalid"
    assert line["record"] == "broken"
    assert line["reason"].startswith("invalid JSON")


def test_exit_2_on_config_error(site: Site) -> None:
    path = site.write("10-bad.toml", "[daemon]\nmax_concurrency = -1\n")
    result = site.run("once")
    assert result.returncode == 2
    expected = f"{path}:2:1: daemon.max_concurrency: expected a whole number"
    assert expected in result.stderr
    assert result.stdout == ""


def test_exit_2_on_bad_usage(site: Site) -> None:
    assert site.run("once", "--no-such-option").returncode == 2
    assert site.run().returncode == 2
    assert site.run("frobnicate").returncode == 2


def test_invalid_agent_file_others_still_run(site: Site, reports) -> None:
    path = site.write("bad.agent", "NAME Bad\nMNEMONIC bad\nWHEN 1 DO\n")
    site.write("host.agent", "NAME Host\nMNEMONIC host\nEXEC_COMMAND true\n")
    result = site.run("once", "--json")
    assert result.returncode == 2
    assert f"{path}:" in result.stderr
    assert [line["agent"] for line in reports(result.stdout)] == ["Host"]


def test_select_by_name_and_file(site: Site, reports) -> None:
    site.write("a.agent", "NAME A\nMNEMONIC a\nECHO ran-a\n")
    site.write("b.agent", "NAME B\nMNEMONIC b\nECHO ran-b\n")
    result = site.run("once", "-a", "B")
    assert result.returncode == 0
    assert "ran-b" in result.stdout
    assert "ran-a" not in result.stdout

    outside = site.root / "extra.agent"
    outside.write_text("NAME Extra\nMNEMONIC extra\nECHO ran-extra\n")
    result = site.run("once", "-f", str(outside))
    assert result.returncode == 0
    assert "ran-extra" in result.stdout
    assert "ran-a" not in result.stdout


def test_unknown_agent_name_exits_2(site: Site) -> None:
    site.write("a.agent", "NAME A\nMNEMONIC a\nECHO ran-a\n")
    result = site.run("once", "-a", "Nope")
    assert result.returncode == 2
    assert "no agent named 'Nope'" in result.stderr
    assert "(agents there: 'A')" in result.stderr


def test_unknown_agent_name_suggests_case(site: Site) -> None:
    site.write("f.agent", "NAME File-Content\nMNEMONIC fc\nECHO ran\n")
    result = site.run("once", "-a", "file-content")
    assert result.returncode == 2
    assert "did you mean 'File-Content'?" in result.stderr


def test_manual_agent_runs_only_when_named(site: Site) -> None:
    site.write("m.agent", "NAME M\nMNEMONIC m\nSCHEDULE manual\nECHO ran-m\n")
    assert "ran-m" not in site.run("once").stdout
    assert "ran-m" in site.run("once", "-a", "M").stdout


def test_pretend_takes_no_lock_and_writes_nothing(site: Site, reports) -> None:
    site.write("provision.agent", PROVISION)
    site.request("r1", status="approved", user="alice")
    result = site.run("once", "--pretend", "--json")
    assert result.returncode == 0
    [line] = reports(result.stdout)
    assert line["outcome"] == "pretend"
    assert not (site.root / "home").exists()
    assert json.loads((site.spool / "r1.json").read_text())["status"] == "approved"
    history = site.run("history", "r1", "--json")
    assert history.stdout == ""


def test_table_output_without_json(site: Site) -> None:
    site.write("provision.agent", PROVISION)
    site.request("r1", status="approved", user="alice")
    site.request("r2", status="pending", user="bob")
    (site.spool / "r3.json").write_text("[]")
    result = site.run("once")
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("Provision"))
    assert "mnemonic provision, workflow requests): 3 records" in header
    assert ["committed", "1", "r1"] in [line.split() for line in lines]
    assert ["skipped", "1", "r2"] in [line.split() for line in lines]
    assert ["invalid", "1", "r3"] in [line.split() for line in lines]
    assert "  r3 (invalid): expected a JSON object, got a JSON array" in lines


def test_table_names_done_records_in_error(site: Site) -> None:
    site.write(
        "failing.agent",
        "NAME Failing\nMNEMONIC failing\nWORKFLOW requests\nEXEC_COMMAND false\n",
    )
    site.request("r1", status="approved")
    first = site.run("once")
    assert first.returncode == 1
    assert "Failing (mnemonic failing, workflow requests): 1 record in" in first.stdout
    second = site.run("once")
    assert second.returncode == 0, second.stderr
    assert "  r1 (done): in error" in second.stdout.splitlines()


def test_table_names_unlistable_workflow(site: Site) -> None:
    site.write("provision.agent", PROVISION)
    site.spool.rmdir()
    result = site.run("once")
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Provision (mnemonic provision, workflow requests)")
    assert lines[1].startswith("  cycle failed: spool requests: cannot list ")
    assert lines[1].endswith("No such file or directory")


def test_verbosity_before_and_after_command(site: Site) -> None:
    site.write("host.agent", "NAME Host\nMNEMONIC host\nEXEC_COMMAND echo hi\n")
    quiet = site.run("-q", "-q", "once", "-q")
    assert quiet.returncode == 0
    assert quiet.stderr == ""
    loud = site.run("-v", "once", "-v")
    assert "debug" in loud.stderr


def test_sigterm_cancels_run_and_cleanup_runs(site: Site, reports) -> None:
    site.write("90-grace.toml", '[daemon]\nshutdown_grace = "200ms"\n')
    site.write(
        "slow.agent",
        "NAME Slow\nMNEMONIC slow\nEXEC_COMMAND touch @ROOT@/started\n"
        "EXEC_COMMAND sleep 30.25\nON_FAILURE\n  ECHO cleanup-ran\nEND\n",
    )
    process = subprocess.Popen(
        fleetd_command() + ["--conf-dir", str(site.conf_dir), "once", "--json"],
        cwd=site.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not (site.root / "started").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    [line] = reports(stdout)
    assert line["outcome"] == "rolled_back"
    assert line["run"] == "failed"
    assert line["cleanup"] == "succeeded"
    assert "cleanup-ran" in stdout


def start_once(site: Site) -> subprocess.Popen[str]:
    return subprocess.Popen(
        fleetd_command() + ["--conf-dir", str(site.conf_dir), "once", "--json"],
        cwd=site.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def wait_for(path, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.exists(), f"{path} never appeared"


def test_sigterm_lets_run_finish_within_grace(site: Site, reports) -> None:
    site.write("90-grace.toml", '[daemon]\nshutdown_grace = "60s"\n')
    site.write(
        "a.agent",
        "NAME First\nMNEMONIC first\nEXEC_COMMAND touch @ROOT@/started\n"
        "EXEC_COMMAND sleep 1\n",
    )
    site.write("b.agent", "NAME Second\nMNEMONIC second\nECHO second-ran\n")
    process = start_once(site)
    wait_for(site.root / "started")
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    [line] = reports(stdout)
    assert line["agent"] == "First"
    assert line["outcome"] == "committed"
    assert "second-ran" not in stdout  # no new run starts after the signal


def test_second_signal_skips_grace(site: Site, reports) -> None:
    site.write("90-grace.toml", '[daemon]\nshutdown_grace = "10m"\n')
    site.write(
        "slow.agent",
        "NAME Slow\nMNEMONIC slow\nEXEC_COMMAND touch @ROOT@/started\n"
        "EXEC_COMMAND sleep 30.75\nON_FAILURE\n  ECHO cleanup-ran\nEND\n",
    )
    process = start_once(site)
    wait_for(site.root / "started")
    time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=25)
    assert process.returncode == 0, stderr
    [line] = reports(stdout)
    assert line["outcome"] == "rolled_back"
    assert line["run"] == "failed"
    assert "cleanup-ran" in stdout


def test_named_unscheduled_agent_says_why(site: Site, reports) -> None:
    site.write(
        "w.agent", 'NAME Win\nMNEMONIC win\nPREREQUISITE OS() = "MSWin32"\nECHO x\n'
    )
    result = site.run("once", "--json", "-a", "Win", "--log-target", "console")
    assert result.returncode == 0
    assert reports(result.stdout) == []
    assert "agent Win is not scheduled: " in result.stderr
    assert 'PREREQUISITE OS() = "MSWin32"' in result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_root_rejects_writable_agent_file(site: Site, reports) -> None:
    bad = site.write("bad.agent", "NAME Bad\nMNEMONIC bad\nECHO bad-ran\n")
    bad.chmod(0o666)
    site.write("good.agent", "NAME Good\nMNEMONIC good\nECHO good-ran\n")
    result = site.run("once", "--json")
    assert result.returncode == 2
    assert f"{bad}: group- or world-writable (mode 0666)" in result.stderr
    assert "good-ran" in result.stdout
    assert "bad-ran" not in result.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_root_rejects_file_in_writable_folder(site: Site) -> None:
    shared = site.root / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    agent = shared / "loose.agent"
    agent.write_text("NAME Loose\nMNEMONIC loose\nECHO loose-ran\n")
    agent.chmod(0o644)
    result = site.run("once", "-f", str(agent))
    assert result.returncode == 2
    assert f"{shared}: folder is group- or world-writable (mode 0777)" in result.stderr
    assert f"run chmod go-w {shared}" in result.stderr
    assert "loose-ran" not in result.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_root_rejects_foreign_toml_file(site: Site) -> None:
    path = site.write("50-x.toml", "[globals]\nx = 1\n")
    os.chown(path, 4242, 4242)
    result = site.run("once")
    assert result.returncode == 2
    assert f"{path}: owned by uid 4242, expected root" in result.stderr


ECHOING = """\
NAME     Echoing
MNEMONIC echoing
WORKFLOW requests

ECHO starting ${this.id}
SET this.status = "done"
CLEANUP
    ECHO cleaned ${this.id}
END
"""


def assert_all_committed(site: Site, records: list[str]) -> None:
    status = site.run("status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["locks"] == []
    for record in records:
        fields = json.loads((site.spool / f"{record}.json").read_text())
        assert fields["status"] == "done", record
    rerun = site.run("once", "--json")
    outcomes = {json.loads(line)["outcome"] for line in rerun.stdout.splitlines()}
    assert outcomes == {"done"}


def test_closed_stdout_leaves_no_lock(site: Site) -> None:
    site.write("echoing.agent", ECHOING)
    records = [f"r{number:02d}" for number in range(20)]
    for record in records:
        site.request(record, status="new")
    process = subprocess.Popen(
        fleetd_command() + ["--conf-dir", str(site.conf_dir), "once"],
        cwd=site.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    # The reader leaves before fleetd writes anything, as `| head -0` would.
    assert process.stdout is not None
    process.stdout.close()
    stderr = process.stderr.read() if process.stderr else ""
    process.wait(timeout=60)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert "stdout_failed" in stderr
    assert_all_committed(site, records)


def test_full_stdout_leaves_no_lock(site: Site) -> None:
    site.write("echoing.agent", ECHOING)
    records = ["r1", "r2", "r3"]
    for record in records:
        site.request(record, status="new")
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            fleetd_command() + ["--conf-dir", str(site.conf_dir), "once", "--json"],
            cwd=site.root,
            stdout=full,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "No space left on device" in result.stderr
    assert_all_committed(site, records)


def test_daemon_echo_to_full_disk_is_dropped(site: Site) -> None:
    # Standard output is not part of the run: the daemon logs that it
    # failed, drops the line, and the record commits as `once` does.
    site.write("90-fast.toml", '[daemon]\nsplay = "0s"\n')
    site.write(
        "echoing.agent",
        "NAME Echoing\nMNEMONIC echoing\nWORKFLOW requests\nSCHEDULE every 1s\n"
        "ECHO starting ${this.id}\nCLEANUP\n  EXEC_COMMAND true\nEND\n",
    )
    site.request("r1", status="new")
    with open("/dev/full", "w") as full:
        process = subprocess.Popen(
            fleetd_command() + ["--conf-dir", str(site.conf_dir), "run"],
            cwd=site.root,
            stdout=full,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
    try:
        deadline = time.monotonic() + 30
        entries: list[dict] = []
        while not entries and time.monotonic() < deadline:
            time.sleep(0.2)
            history = site.run("history", "r1", "--json")
            entries = [json.loads(line) for line in history.stdout.splitlines()]
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert entries, stderr
    assert entries[0]["resolution"] == "committed"
    assert entries[0]["reason"] is None
    assert stderr.count('"stdout_failed"') == 1
    assert "No space left on device" in stderr
    status = site.run("status", "--json")
    assert json.loads(status.stdout)["locks"] == []


def test_table_rows_in_fixed_order() -> None:
    assert set(TABLE_ORDER) == {outcome.value for outcome in Outcome}
    reports = [
        RunReport("A", "a", "w", f"r{number}", outcome)
        for number, outcome in enumerate(reversed(list(Outcome)))
    ]
    table = agent_table("A", "a", "w", reports, 0.1)
    # A title line, the header, then one row per outcome.
    rows = table.splitlines()[2 : 2 + len(TABLE_ORDER)]
    assert [row.split()[0] for row in rows] == list(TABLE_ORDER)
