"""Each agent load problem shown once by `check` and `once`, on both outputs.

On a console, a problem is one plain `file:line:col: message` line. In
JSON logs it is one event, and no plain line breaks the one-event-per-line
form.
"""

from __future__ import annotations

import json
import re

import pytest

from tests.cli.support import Site

BROKEN = "NAME Broken\nMNEMONIC broken\nCHECK (\n"
PREREQUISITE = "NAME Prereq\nMNEMONIC prereq\nPREREQUISITE 1 = 2\nECHO prereq-ran\n"
GOOD = "NAME Good\nMNEMONIC good\nECHO good-ran\nCLEANUP\n  ECHO cleaned\nEND\n"


@pytest.fixture
def faulty(site: Site) -> Site:
    site.write("10-broken.agent", BROKEN)
    site.write("20-prereq.agent", PREREQUISITE)
    site.write("30-good.agent", GOOD)
    return site


@pytest.mark.parametrize("command", ["check", "once"])
def test_console_shows_each_problem_once(faulty: Site, command: str) -> None:
    broken = faulty.conf_dir / "10-broken.agent"
    prereq = faulty.conf_dir / "20-prereq.agent"
    result = faulty.run(command, "--log-target", "console")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    broken_lines = [line for line in lines if f"{broken}:" in line]
    assert len(broken_lines) == 1, result.stderr
    assert re.match(rf"{re.escape(str(broken))}:3:\d+: unexpected ", broken_lines[0])
    prereq_lines = [line for line in lines if "PREREQUISITE 1 = 2" in line]
    assert prereq_lines == [
        f"note: agent Prereq is not scheduled: {prereq}:3: PREREQUISITE 1 = 2"
    ]
    assert "agent_invalid" not in result.stderr
    assert "agent_unscheduled" not in result.stderr
    assert "prereq-ran" not in result.stdout


@pytest.mark.parametrize("command", ["check", "once"])
def test_json_logs_show_each_problem_once(faulty: Site, command: str) -> None:
    broken = faulty.conf_dir / "10-broken.agent"
    prereq = faulty.conf_dir / "20-prereq.agent"
    # stderr is a pipe, so once logs JSON lines; check prints plain lines
    # unless asked for JSON.
    options = ("--log-target", "json") if command == "check" else ()
    result = faulty.run(command, *options)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    # Every line is a JSON event. The summary line of `check` comes only
    # when there are no errors.
    events = [json.loads(line) for line in lines]
    about_broken = [event for event in events if str(broken) in json.dumps(event)]
    assert len(about_broken) == 1, result.stderr
    [invalid] = about_broken
    assert invalid["event"] == "agent_invalid"
    assert invalid["level"] == "error"
    assert invalid["file"] == str(broken)
    assert re.match(rf"{re.escape(str(broken))}:3:\d+: unexpected ", invalid["error"])
    about_prereq = [event for event in events if str(prereq) in json.dumps(event)]
    assert len(about_prereq) == 1, result.stderr
    [unscheduled] = about_prereq
    assert unscheduled["event"] == "agent_unscheduled"
    assert unscheduled["level"] == "notice"
    assert unscheduled["agent"] == "Prereq"
    assert unscheduled["reason"] == f"{prereq}:3: PREREQUISITE 1 = 2"


def test_once_still_runs_good_agent(faulty: Site) -> None:
    result = faulty.run("once")
    assert result.returncode == 2
    assert "good-ran" in result.stdout
    assert "prereq-ran" not in result.stdout


def test_named_unscheduled_agent_warns_once(faulty: Site) -> None:
    prereq = faulty.conf_dir / "20-prereq.agent"
    console = faulty.run("once", "-a", "Prereq", "--log-target", "console")
    expected = f"warning: agent Prereq is not scheduled: {prereq}:3: PREREQUISITE 1 = 2"
    assert console.stderr.splitlines().count(expected) == 1
    assert console.stderr.count("PREREQUISITE 1 = 2") == 1
    logs = faulty.run("once", "-a", "Prereq", "-q")
    events = [json.loads(line) for line in logs.stderr.splitlines()]
    about_prereq = [event for event in events if event.get("agent") == "Prereq"]
    assert len(about_prereq) == 1, logs.stderr
    assert about_prereq[0]["event"] == "agent_unscheduled"
    assert about_prereq[0]["level"] == "warning"


def test_config_error_is_one_event(site: Site) -> None:
    path = site.write("10-x.toml", "[daemon]\nnope = 1\n")
    expected = f"{path}:2:1: daemon.nope: unknown key"
    console = site.run("check", "--log-target", "console")
    assert console.returncode == 2
    [line] = console.stderr.splitlines()
    assert line.startswith(expected)
    logs = site.run("check", "--log-target", "json")
    assert logs.returncode == 2
    [event] = [json.loads(line) for line in logs.stderr.splitlines()]
    assert event["event"] == "config_invalid"
    assert event["error"].startswith(expected)
