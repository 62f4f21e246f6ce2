"""`fleetd retry -a NAME RECORD...`: let records run again for an agent."""

from __future__ import annotations

import argparse

from fleetd.cli.common import (
    CommandFailed,
    error,
    load,
    load_agents,
    load_registry,
    run_async,
    unknown_agent,
)
from fleetd.cli.exits import EXIT_OK, EXIT_USAGE


def main(args: argparse.Namespace) -> int:
    try:
        config = load(args, base_level="warning")
        registry = load_registry(config)
    except CommandFailed as stop:
        return stop.status
    agent_set, _errors = load_agents(config, registry)
    loaded = agent_set.agents.get(args.agent)
    if loaded is None:
        error(unknown_agent(args.agent, agent_set, config.conf_dir))
        return EXIT_USAGE
    mnemonic = loaded.agent.mnemonic
    workflow = loaded.agent.workflow
    records = list(dict.fromkeys(args.records))  # a record named twice counts once
    cleared, unmarked = run_async(config, clear_marks, config.daemon.state,
                                  workflow, mnemonic, records)  # fmt: skip
    for record in unmarked:
        error(
            f"fleetd: record {record!r} of workflow {workflow} has no mark for"
            f" mnemonic {mnemonic}: it is neither committed nor in error, so there"
            " was nothing to clear"
        )
    message = (
        f"cleared {cleared} of {len(records)} marks for mnemonic {mnemonic} "
        f"on workflow {workflow} (agent {args.agent})"
    )
    if cleared:
        message += "; the next cycle runs those records again"
    error(message)

    return EXIT_OK


async def clear_marks(
    url: str, workflow: str, mnemonic: str, records: list[str]
) -> tuple[int, list[str]]:
    """Clear the marks of `records`; return how many, and the records without one."""
    from fleetd.locks import open_store

    store = open_store(url)
    await store.open()
    try:
        marked = {
            mark.key.record
            for mark in await store.marks()
            if mark.key.mnemonic == mnemonic and mark.key.workflow == workflow
        }
        unmarked = [record for record in records if record not in marked]
        return await store.retry(workflow, mnemonic, records), unmarked
    finally:
        await store.close()
