"""`fleetd run`: load the configuration, open the Engine, serve until stopped."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import anyio

from fleetd.config import Config, ConfigError, load_config
from fleetd.daemon.logging import configure_logging, shift_level
from fleetd.daemon.notify import Notifier, take_notify_environment, watchdog_period
from fleetd.daemon.signals import receive_signals
from fleetd.daemon.supervisor import Supervisor
from fleetd.lang import Registry, load_plugins
from fleetd.logs import get_logger
from fleetd.runtime import AgentLoader, AgentSet, Engine

__all__ = ["DropInSource", "run_daemon"]

log = get_logger()

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


class DropInSource:
    """Reads the drop-in directory and its agents, for startup and reloads.

    The plugin registry is built once, at startup: the Engine resolves
    commands through it, so new plugin files need a restart.
    """

    def __init__(self, conf_dir: Path, registry: Registry) -> None:
        self.conf_dir = conf_dir
        self.registry = registry
        self._loader = AgentLoader(registry)

    def load_config(self) -> Config:
        return load_config(self.conf_dir)

    def load_agents(self, config: Config, previous: AgentSet | None) -> AgentSet:
        return self._loader.load(config, previous)


def run_daemon(conf_dir: Path, *, log_target: str = "auto", verbosity: int = 0) -> int:
    """Run the daemon in the foreground until SIGTERM or SIGINT; return the exit status.

    Exit status 0 after a graceful stop, 2 when the configuration cannot be
    loaded at startup, 1 when the daemon fails otherwise. A plugin that
    cannot load is logged and left out.

    Args:
        conf_dir: the drop-in directory.

        log_target: `auto`, `console`, `json` or `journal`.

        verbosity: steps more verbose than the configured `log_level`
            (each `-v` adds one, each `-q` takes one away).
    """
    # Read the configuration before the event loop starts, because it
    # chooses the loop and the log level. Until then, log at info.
    configure_logging(level=shift_level("info", verbosity), target=log_target)
    try:
        config = load_config(conf_dir)
    except ConfigError as exc:
        for error in exc.errors:
            log.error("config_invalid", conf_dir=str(conf_dir), error=error)
        return EXIT_CONFIG
    configure_logging(
        level=shift_level(config.daemon.log_level, verbosity), target=log_target
    )

    # Take the sd_notify variables so the programs agents run do not inherit them.
    notify_environment = take_notify_environment()
    notifier = Notifier(notify_environment.get("NOTIFY_SOCKET"))
    period = watchdog_period(notify_environment)

    # uvloop only when `daemon.loop` asks for it: in the soak benchmark
    # (scripts/soak.py, BENCHMARKS.md) the daemon used about 40% more CPU
    # time per run on uvloop 0.23 than on the stdlib loop.
    backend_options: dict[str, Any] = {}
    if config.daemon.loop == "uvloop":
        backend_options["use_uvloop"] = True
    try:
        return anyio.run(
            _serve,
            conf_dir,
            config,
            notifier,
            period,
            backend="asyncio",
            backend_options=backend_options,
        )
    except Exception as exc:  # report, then exit non-zero for Restart=
        log.critical("daemon_failed", error=repr(exc), exc_info=True)
        notifier.notify(status=f"failed: {exc}", errno=1)
        return EXIT_FAILURE
    finally:
        notifier.close()
        sys.stdout.flush()


async def _serve(
    conf_dir: Path, config: Config, notifier: Notifier, period: float | None
) -> int:
    # Receive signals from here on: a SIGTERM while plugins, agents and the
    # state store load waits in the queue and then stops the daemon gracefully.
    with receive_signals() as signals:
        # Plugins and agents. A plugin that cannot load is left out and
        # logged, like an invalid agent file: the agents that do not use it
        # run, and those that do are invalid ("unknown function").
        problems: list[str] = []
        registry = await anyio.to_thread.run_sync(
            functools.partial(
                load_plugins, list(config.daemon.plugin_dirs), problems=problems
            )
        )
        for problem in problems:
            log.error("plugin_invalid", error=problem)
        source = DropInSource(conf_dir, registry)
        agents = await anyio.to_thread.run_sync(source.load_agents, config, None)
        log.notice(
            "agents_loaded",
            agents=len(agents.agents),
            scheduled=sum(1 for loaded in agents.agents.values() if loaded.scheduled),
            errors=len(agents.errors),
        )

        # Open the state store and the lock manager, then serve.
        async with Engine(config, registry=registry) as engine:
            supervisor = Supervisor(
                engine, source, config, agents, notifier, watchdog_period=period
            )
            return await supervisor.serve(signals)
