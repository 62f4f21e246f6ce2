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
        error(f"fleetd: no agent named {args.agent!r} in {config.conf_dir}")
        return EXIT_USAGE
    mnemonic = loaded.agent.mnemonic
    cleared = run_async(config, clear_marks, config.daemon.state, mnemonic,
                        args.records)  # fmt: skip
    error(
        f"cleared {cleared} of {len(args.records)} marks for mnemonic {mnemonic} "
        f"(agent {args.agent}); the next cycle runs those records again"
    )

    return EXIT_OK


async def clear_marks(url: str, mnemonic: str, records: list[str]) -> int:
    from fleetd.locks import open_store

    store = open_store(url)
    await store.open()
    try:
        return await store.retry(mnemonic, records)
    finally:
        await store.close()
