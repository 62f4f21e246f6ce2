"""Run one cycle of every agent of a conf dir; print each report as JSON."""

from __future__ import annotations

import json
import logging
import sys

import anyio
import structlog

from fleetd.config import load_config
from fleetd.lang import Registry
from fleetd.runtime import AgentLoader, Engine


async def main(conf_dir: str) -> None:
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )
    config = load_config(conf_dir)
    registry = Registry.default()
    agents = AgentLoader(registry).load(config)
    async with Engine(config, registry=registry) as engine:
        for loaded in agents.agents.values():
            for report in await engine.run_cycle(loaded):
                print(json.dumps(report.to_json()), flush=True)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1])
