"""Steps shared by the commands: logging, configuration, agents, tables."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleetd.cli.exits import EXIT_FAILURE, EXIT_OK, EXIT_USAGE

if TYPE_CHECKING:
    from structlog.typing import EventDict, WrappedLogger

    from fleetd.config import Config
    from fleetd.lang import Registry
    from fleetd.locks import StateStore
    from fleetd.runtime import AgentSet

# Events of the agent loader that `load_and_show_agents` replaces with its
# own output, so that each load error and unscheduled agent is shown once.
LOADER_EVENTS = frozenset({"agent_invalid", "agent_unscheduled", "condition_false"})
_dropped_events: ContextVar[frozenset[str]] = ContextVar(
    "dropped_events", default=frozenset()
)
# Whether logs are readable console lines (on a terminal, or with
# `--log-target console`); set by setup_logging.
_console = False
_plugin_problems: ContextVar[tuple[str, ...]] = ContextVar(
    "plugin_problems", default=()
)


class CommandFailed(Exception):
    """Stop the command with `status` after the message was printed."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def error(message: str) -> None:
    """Print one error line on standard error, or drop it when that fails."""
    try:
        print(message, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        # The reader left or the disk is full. The exit status still reports
        # the result.
        from fleetd.streams import silence_descriptor

        silence_descriptor(sys.stderr)


def print_output(text: str) -> int:
    """Write a command's whole output to standard output; return the exit status.

    A full disk or a reader that left ends the command with status 1 and
    one error line, not a traceback.
    """
    from fleetd.streams import LineStream

    if sys.stdout is None:
        return EXIT_OK  # descriptor 1 was closed when Python started
    stream = LineStream(sys.stdout)
    if stream.write(text):
        return EXIT_OK
    reason = getattr(stream.error, "strerror", None) or stream.error
    error(f"fleetd: cannot write to standard output: {reason}")

    return EXIT_FAILURE


def setup_logging(args: argparse.Namespace, level: str) -> None:
    """Configure logging at `level` shifted by `-v` and `-q`."""
    import structlog

    from fleetd.daemon.logging import configure_logging, shift_level

    global _console
    output = configure_logging(
        level=shift_level(level, args.verbosity), target=args.log_target
    )
    _console = output == "console"
    processors = structlog.get_config()["processors"]
    structlog.configure(processors=[_drop_events, *processors])


def _drop_events(
    logger: WrappedLogger, method_name: str, event_dict: EventDict
) -> EventDict:
    import structlog

    if event_dict.get("event") in _dropped_events.get():
        raise structlog.DropEvent
    return event_dict


@contextmanager
def dropping_events(names: frozenset[str]) -> Iterator[None]:
    """Drop the log events called `names` inside the block, in this context."""
    token = _dropped_events.set(names)
    try:
        yield
    finally:
        _dropped_events.reset(token)


def show(message: str, event: str, level: str = "error", **fields: Any) -> None:
    """Show one problem found by a command, once, if `level` is logged.

    On console output, `message` is printed as one plain line, so a
    `file:line:col: text` message reads as a compiler's would. JSON and
    journal logs get `event` with `fields` instead, and no plain line
    breaks their one-event-per-line form.
    """
    from fleetd.daemon.logging import LEVELS
    from fleetd.logs import enabled, get_logger

    if not enabled(LEVELS[level]):
        return
    if _console:
        error(message)
        return
    getattr(get_logger(), level)(event, **fields)


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
            show(line, "config_invalid", error=line)
        raise CommandFailed(EXIT_USAGE) from None
    if base_level is None:
        setup_logging(args, config.daemon.log_level)
    for path, reason in config.ignored:
        message = f"{path}: ignored: {reason}"
        show(message, "file_ignored", "warning", file=str(path), reason=reason)

    return config


def load_registry(config: Config) -> Registry:
    """Load the built-in functions and the plugins that load.

    Each plugin that cannot load is shown and left out, like an invalid
    agent file. The command then exits 2 once it has run what it could
    (`plugin_problems`).
    """
    from fleetd.lang import load_plugins

    problems: list[str] = []
    registry = load_plugins(list(config.daemon.plugin_dirs), problems=problems)
    for line in problems:
        show(f"{line} (plugin not loaded)", "plugin_invalid", error=line)
    _plugin_problems.set(tuple(problems))

    return registry


def plugin_problems() -> tuple[str, ...]:
    """Return the problems of the plugins `load_registry` left out."""
    return _plugin_problems.get()


def unknown_agent(name: str, agent_set: AgentSet, conf_dir: Path) -> str:
    """Return the message for `-a NAME` that names no agent, with the names there are."""
    from fleetd.lang.tree import suggest_name

    names = sorted(agent_set.agents)
    known = ", ".join(repr(known) for known in names) if names else "none"
    return (
        f"fleetd: no agent named {name!r} in {conf_dir}"
        f"{suggest_name(name, names)} (agents there: {known})"
    )


def load_agents(config: Config, registry: Registry) -> tuple[AgentSet, list[str]]:
    """Parse and initialize the agents; return them with every load error."""
    from fleetd.runtime import AgentLoader

    agent_set = AgentLoader(registry).load(config)
    # A rejected conf dir agent named with `once -f` is rejected by both.
    errors = list(dict.fromkeys(config.errors + agent_set.errors))

    return agent_set, errors


def load_and_show_agents(
    config: Config, registry: Registry, *, named: tuple[str, ...] = ()
) -> tuple[AgentSet, list[str]]:
    """Load the agents like `load_agents`, and show each problem once.

    The loader's own events for these problems are dropped, because the
    command shows them itself: every load error at `error`, and every
    agent left unscheduled by its prerequisites at `notice`, or at
    `warning` when its name is in `named`.
    """
    with dropping_events(LOADER_EVENTS):
        agent_set, errors = load_agents(config, registry)
    agent_files = [str(path) for path in config.agent_files]
    for line in errors:
        fields = {"error": line}
        for name in agent_files:
            if line.startswith(f"{name}:"):
                fields["file"] = name
        show(line, "agent_invalid", **fields)
    for loaded in agent_set.agents.values():
        # An agent kept unscheduled by a load error was shown above.
        if loaded.scheduled or loaded.reason in errors:
            continue
        agent = loaded.agent
        level = "warning" if agent.name in named else "notice"
        prefix = "warning" if level == "warning" else "note"
        show(
            f"{prefix}: agent {agent.name} is not scheduled: {loaded.reason}",
            "agent_unscheduled",
            level,
            agent=agent.name,
            mnemonic=agent.mnemonic,
            file=agent.path,
            reason=loaded.reason,
        )

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


async def open_store_to_read(url: str) -> StateStore:
    """Open the state store at `url` for a command that only reads it.

    A user who may read the store but not write it (a state file owned by
    another user, a read-only mount) gets it opened read-only. When that
    fails too, the error of the usual open is raised.
    """
    from fleetd.locks import open_store

    store = open_store(url)
    try:
        await store.open()
    except _store_errors() as failure:
        reader = open_store(url)
        try:
            await reader.open(read_only=True)
        except _store_errors():
            raise failure from None
        return reader

    return store


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
