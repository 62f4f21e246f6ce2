"""Agent loading: parse cache, Initialize, invalid and duplicate agents."""

from __future__ import annotations

from fleetd.runtime import Outcome
from tests.runtime.conftest import Fleet

GOOD = """
    NAME     Good
    MNEMONIC good
    PREREQUISITE_SET greeting = "hello ${who}"
    ECHO ${greeting}
    """


async def test_prerequisite_set_reaches_every_run(fleet: Fleet) -> None:
    fleet.settings(extra='[globals]\nwho = "world"\n')
    fleet.agent(GOOD)
    agents = fleet.load()
    loaded = agents.agents["Good"]
    assert loaded.scheduled
    assert loaded.variables["greeting"] == "hello world"
    [report] = await fleet.cycle()
    assert report.outcome is Outcome.COMMITTED
    assert fleet.echoed == ["hello world"]


def test_false_prerequisite_unschedules_with_source(fleet: Fleet, events: list) -> None:
    path = fleet.agent(
        """
        NAME         Windows
        MNEMONIC     windows
        PREREQUISITE OS() = "linux"
        PREREQUISITE OS() = "MSWin32"
        PREREQUISITE never_evaluated = 1
        ECHO never
        """
    )
    loaded = fleet.load().agents["Windows"]
    assert not loaded.scheduled
    assert loaded.reason == f'{path}:4: PREREQUISITE OS() = "MSWin32"'
    [notice] = [e for e in events if e["event"] == "agent_unscheduled"]
    assert notice["syslog_level"] == "notice"
    assert notice["reason"] == loaded.reason
    assert [e["command"] for e in events if e["event"] == "condition_false"] == [
        loaded.reason
    ]


def test_unchanged_files_not_parsed_again(fleet: Fleet) -> None:
    fleet.agent(GOOD, name="a.agent")
    fleet.agent(GOOD.replace("Good", "Other").replace("good", "other"), "b.agent")
    first = fleet.load()
    misses = fleet.loader.cache.misses
    assert misses == 2
    second = fleet.load()
    assert fleet.loader.cache.misses == misses
    assert second.agents["Good"] is first.agents["Good"]

    fleet.agent(GOOD.replace("hello", "hi"), name="a.agent")
    third = fleet.load()
    assert fleet.loader.cache.misses == misses + 1
    assert third.agents["Other"] is first.agents["Other"]
    assert third.agents["Good"].variables["greeting"] == "hi "


def test_globals_change_reruns_initialize(fleet: Fleet) -> None:
    fleet.settings(extra='[globals]\nwho = "world"\n')
    fleet.agent(GOOD)
    assert fleet.load().agents["Good"].variables["greeting"] == "hello world"
    fleet.settings(extra='[globals]\nwho = "there"\n')
    assert fleet.load().agents["Good"].variables["greeting"] == "hello there"


def test_invalid_agent_keeps_previous_version(fleet: Fleet) -> None:
    path = fleet.agent(GOOD)
    first = fleet.load()
    fleet.agent(GOOD + "WHEN TRUE DO\n    ECHO never closed\n")
    second = fleet.load()
    assert second.agents["Good"] is first.agents["Good"]
    assert second.errors
    assert all(error.startswith(f"{path}:") for error in second.errors)


def test_invalid_new_agent_stays_unloaded(fleet: Fleet) -> None:
    path = fleet.agent("NAME Broken\nMNEMONIC broken\nNO_SUCH_COMMAND x\n")
    agents = fleet.load()
    assert agents.agents == {}
    [error] = agents.errors
    assert error.startswith(f"{path}:3:")


def test_duplicate_name_reported(fleet: Fleet) -> None:
    fleet.agent(GOOD, name="a.agent")
    second = fleet.agent(GOOD.replace("good", "good2"), name="b.agent")
    agents = fleet.load()
    assert agents.agents["Good"].agent.mnemonic == "good"
    [error] = agents.errors
    assert error.startswith(f"{second}:1:1: duplicate agent name 'Good'")


def test_unknown_workflow_leaves_agent_unscheduled(fleet: Fleet) -> None:
    path = fleet.agent("NAME Lost\nMNEMONIC lost\nWORKFLOW nowhere\nECHO x\n")
    agents = fleet.load()
    loaded = agents.agents["Lost"]
    assert not loaded.scheduled
    [error] = agents.errors
    assert error.startswith(f"{path}:3:1: unknown workflow 'nowhere' (configured: ")
    # The message explains how to define a workflow.
    assert "[workflows.NAME]" in error


def test_unknown_workflow_suggests_a_close_name(fleet: Fleet) -> None:
    # The fixture's conf dir defines the workflow `requests`.
    path = fleet.agent("NAME Typo\nMNEMONIC typo\nWORKFLOW Requests\nECHO x\n")
    [error] = fleet.load().errors
    assert error == (
        f"{path}:3:1: unknown workflow 'Requests'; did you mean 'requests'?"
        " (configured: requests, and Null; a [workflows.NAME] table in a TOML"
        " drop-in defines one)"
    )
