"""Steps shared by the commands: logging, configuration, agents, tables."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleetd.cli.exits import EXIT_FAILURE, EXIT_USAGE

if TYPE_CHECKING:
    from fleetd.config import Config
    from fleetd.lang import Registry
    from fleetd.runtime import AgentSet


class CommandFailed(Exception):
    """Stop the command with `status` after the message was printed."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def error(message: str) -> None:
    """Print one error line on standard error."""
    print(message, file=sys.stderr, flush=True)


def setup_logging(args: argparse.Namespace, level: str) -> None:
    """Configure logging at `level` shifted by `-v` and `-q`."""
    from fleetd.daemon.logging import configure_logging, shift_level

    configure_logging(level=shift_level(level, args.verbosity), target=args.log_target)


def load(args: argparse.Namespace, *, base_level: str | None = None) -> Config:
    """Configure logging and load the conf dir; exit 2 on a configuration error.

    Logging starts at `base_level`, or at the configured `log_level` when
    None, shifted by `-v` and `-q`.
    """
    from fleetd.config import ConfigError, load_config

    setup_logging(args, base_level or "info")
    try:
        config = load_config(Path(args.conf_dir))
    except ConfigError as failure:
        for line in failure.errors:
            error(line)
        raise CommandFailed(EXIT_USAGE) from None
    if base_level is None:
        setup_logging(args, config.daemon.log_level)
    for path, reason in config.ignored:
        error(f"{path}: ignored: {reason}")

    return config


def load_registry(config: Config) -> Registry:
    """Load the built-in functions and the plugins; exit 2 when one fails."""
    from fleetd.lang import load_plugins

    try:
        return load_plugins(list(config.daemon.plugin_dirs))
    except Exception as failure:  # noqa: BLE001 - a plugin may raise anything
        error(f"fleetd: cannot load plugins: {failure}")
        raise CommandFailed(EXIT_USAGE) from None


def load_agents(config: Config, registry: Registry) -> tuple[AgentSet, list[str]]:
    """Parse and initialize the agents; return them with every load error."""
    from fleetd.runtime import AgentLoader

    agent_set = AgentLoader(registry).load(config)
    errors = list(config.errors) + list(agent_set.errors)

    return agent_set, errors


def timestamp(seconds: float | None) -> str | None:
    """Format a Unix time as ISO 8601 in UTC, to the second."""
    if seconds is None:
        return None
    moment = datetime.fromtimestamp(seconds, tz=UTC)

    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def format_table(header: list[str], rows: list[list[Any]], indent: str = "  ") -> str:
    """Format rows as left-aligned columns under `header`."""
    cells = [header] + [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = []
    for row in cells:
        padded = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append(indent + "  ".join(padded).rstrip())

    return "\n".join(lines)


def run_async(config: Config, function: Any, *args: Any) -> Any:
    """Run `function(*args)` on the event loop the configuration names.

    A state store that cannot be opened or read ends the command with
    status 1 and a one-line error instead of a traceback.
    """
    import anyio

    from fleetd.config import redact_url

    use_uvloop = config.daemon.loop == "uvloop"
    try:
        return anyio.run(
            function,
            *args,
            backend="asyncio",
            backend_options={"use_uvloop": use_uvloop},
        )
    except _store_errors() as failure:
        state = config.daemon.state
        if state.startswith(("postgresql:", "postgres:")):
            advice = "check the daemon.state setting and that the server is up"
        else:
            advice = "check the daemon.state setting and the folder's permissions"
        error(f"fleetd: state store {redact_url(state)} failed: {failure}; {advice}")
        raise CommandFailed(EXIT_FAILURE) from None


def _store_errors() -> tuple[type[BaseException], ...]:
    """Return the exception types of a state store that cannot be used.

    asyncpg's types count only once a PostgreSQL store imported it, so a
    command on SQLite never pays for importing asyncpg.
    """
    import sqlite3

    from fleetd.locks import SchemaError

    errors: tuple[type[BaseException], ...] = (OSError, sqlite3.Error, SchemaError)
    asyncpg = sys.modules.get("asyncpg")
    if asyncpg is not None:
        errors += (asyncpg.PostgresError, asyncpg.InterfaceError)

    return errors
