"""`fleetd status`: agents, held locks, counts by outcome, records in error."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from fleetd.cli.common import (
    CommandFailed,
    format_table,
    load,
    load_agents,
    load_registry,
    open_store_to_read,
    print_output,
    run_async,
    timestamp,
)

if TYPE_CHECKING:
    from fleetd.config import Config
    from fleetd.runtime import AgentSet


def main(args: argparse.Namespace) -> int:
    try:
        config = load(args, base_level="warning")
        registry = load_registry(config)
    except CommandFailed as stop:
        return stop.status
    agent_set, errors = load_agents(config, registry)
    status = run_async(config, collect_status, config, agent_set, errors)
    if args.json:
        return print_output(json.dumps(status, ensure_ascii=False) + "\n")

    return print_output(render_status(status))


async def collect_status(
    config: Config, agent_set: AgentSet, load_errors: list[str]
) -> dict[str, Any]:
    """Read the state store and build the object `status --json` prints."""
    from fleetd.config import redact_url

    store = await open_store_to_read(config.daemon.state)
    try:
        locks = await store.locks()
        marks = await store.marks(errors_only=True)
        counts = await store.counts()
    finally:
        await store.close()

    agents = [
        {
            "name": loaded.agent.name,
            "mnemonic": loaded.agent.mnemonic,
            "workflow": loaded.agent.workflow,
            "file": loaded.agent.path,
            "scheduled": loaded.scheduled,
            "reason": loaded.reason,
        }
        for loaded in sorted(agent_set.agents.values(), key=lambda a: a.agent.path)
    ]
    return {
        "state": redact_url(config.daemon.state),
        "agents": agents,
        "load_errors": load_errors,
        "locks": [
            {
                "agent": lock.agent,
                "mnemonic": lock.key.mnemonic,
                "workflow": lock.key.workflow,
                "record": lock.key.record or None,
                "owner": str(lock.owner),
                "since": timestamp(lock.since),
                "expires": timestamp(lock.expires),
            }
            for lock in locks
        ],
        "counts": counts,
        "errors": [
            {
                "agent": mark.agent,
                "mnemonic": mark.key.mnemonic,
                "workflow": mark.key.workflow,
                "record": mark.key.record or None,
                "reason": mark.reason,
                "at": timestamp(mark.at),
            }
            for mark in marks
        ],
    }


def render_status(status: dict[str, Any]) -> str:
    """Format the status object as sections of tables."""
    parts = [f"State store: {status['state']}", "", "Agents"]
    agent_rows = [
        [
            agent["name"],
            agent["mnemonic"],
            agent["workflow"],
            "yes" if agent["scheduled"] else f"no: {agent['reason']}",
        ]
        for agent in status["agents"]
    ]
    parts.append(
        format_table(["NAME", "MNEMONIC", "WORKFLOW", "SCHEDULED"], agent_rows)
        if agent_rows
        else "  (none)"
    )
    for line in status["load_errors"]:
        parts.append(f"  invalid: {line}")

    parts += ["", "Locks held"]
    lock_rows = [
        [lock["agent"], lock["workflow"], lock["record"], lock["owner"],
         lock["since"], lock["expires"]]
        for lock in status["locks"]
    ]  # fmt: skip
    parts.append(
        format_table(
            ["AGENT", "WORKFLOW", "RECORD", "OWNER", "SINCE", "EXPIRES"], lock_rows
        )
        if lock_rows
        else "  (none)"
    )

    parts += ["", "Resolutions by agent"]
    outcomes = ["committed", "rolled_back", "error"]
    count_rows = [
        [agent] + [counts.get(outcome, 0) for outcome in outcomes]
        for agent, counts in sorted(status["counts"].items())
    ]
    parts.append(
        format_table(["AGENT"] + [o.upper() for o in outcomes], count_rows)
        if count_rows
        else "  (none)"
    )

    parts += ["", "Records in error"]
    error_rows = [
        [item["agent"], item["workflow"], item["record"], item["at"], item["reason"]]
        for item in status["errors"]
    ]
    parts.append(
        format_table(["AGENT", "WORKFLOW", "RECORD", "AT", "REASON"], error_rows)
        if error_rows
        else "  (none)"
    )

    return "\n".join(parts) + "\n"
