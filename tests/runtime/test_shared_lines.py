"""Errors of a line that two agents share point at each agent's own file and line."""

from __future__ import annotations

from fleetd.lang import FunctionSpec
from tests.runtime.conftest import Fleet


async def test_function_error_names_each_agent_line(fleet: Fleet, events: list) -> None:
    def boom() -> str:
        raise RuntimeError("disk on fire")

    fleet.registry.add_function(FunctionSpec("boom", 0, 0, boom))
    fleet.record("jo")
    first = fleet.agent(
        """
        NAME     First
        MNEMONIC first
        WORKFLOW requests
        REQUIRE TRUE AND boom() = 1
        """,
        name="first.agent",
    )
    second = fleet.agent(
        """
        NAME     Second
        MNEMONIC second
        WORKFLOW requests

        REQUIRE TRUE
        REQUIRE TRUE AND boom() = 1
        """,
        name="second.agent",
    )
    await fleet.cycle()
    failures = {
        event["agent"]: event for event in events if event["event"] == "command_failed"
    }
    assert failures["First"]["command"] == f"{first}:4: REQUIRE TRUE AND boom() = 1"
    assert failures["First"]["error"] == f"{first}:4:18: boom() failed: disk on fire"
    assert failures["Second"]["command"] == f"{second}:6: REQUIRE TRUE AND boom() = 1"
    assert failures["Second"]["error"] == (
        f"{second}:6:18: boom() failed: disk on fire"
    )
