"""`fleetd check`: validate the conf dir without running anything."""

from __future__ import annotations

import argparse

from fleetd.cli.common import (
    CommandFailed,
    error,
    load,
    load_and_show_agents,
    load_registry,
    plugin_problems,
    show,
)
from fleetd.cli.exits import EXIT_OK, EXIT_USAGE


def main(args: argparse.Namespace) -> int:
    if args.log_target == "auto":
        # Problems are what check prints, so they read as a compiler's
        # file:line:col lines on a pipe too (CI jobs, `2>&1 | grep`).
        # `--log-target json` or `journal` still gives events.
        args.log_target = "console"
    try:
        # Notice is the level of the note on an agent left unscheduled.
        config = load(args, base_level="notice")
        registry = load_registry(config)
    except CommandFailed as stop:
        return stop.status
    agent_set, errors = load_and_show_agents(config, registry)

    # Agents sharing a mnemonic exclude each other record by record; that is
    # allowed but often a copy-paste slip, so it is worth a warning.
    by_mnemonic: dict[str, list[str]] = {}
    for loaded in agent_set.agents.values():
        by_mnemonic.setdefault(loaded.agent.mnemonic, []).append(loaded.agent.name)
    for mnemonic, names in sorted(by_mnemonic.items()):
        if len(names) > 1:
            show(
                f"warning: agents {', '.join(sorted(names))} share mnemonic "
                f"{mnemonic}: they exclude each other record by record",
                "mnemonic_shared",
                "warning",
                mnemonic=mnemonic,
                agents=sorted(names),
            )

    if errors or plugin_problems():
        return EXIT_USAGE
    agents = len(agent_set.agents)
    workflows = len(config.workflows)
    error(
        f"{config.conf_dir}: {agents} agent{'' if agents == 1 else 's'}, "
        f"{workflows} workflow{'' if workflows == 1 else 's'}, no errors"
    )

    return EXIT_OK
