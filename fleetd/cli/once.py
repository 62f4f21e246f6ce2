"""`fleetd once`: one cycle of each selected agent, then exit.

Agents run one after another, in the lexical order of their files, so that
one invocation is deterministic: each agent lists its records after the
commits of the agents before it. Inside an agent's cycle the Engine runs records concurrently
(the agent's CONCURRENCY, `max_concurrency` overall).

SIGTERM and SIGINT are handled as the daemon handles them, and so is
SIGHUP, which a closed terminal or SSH session sends. No new run starts,
and runs in flight get `shutdown_grace` to finish. After that their Run is
cancelled, while Cleanup and the resolution still happen. A second signal
skips the grace. The agents that did not get their cycle are named in a
`once_stopped` warning. The exit status then follows the outcomes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import msgspec.structs

from fleetd.cli.common import (
    CommandFailed,
    error,
    format_table,
    load,
    load_and_show_agents,
    load_registry,
    plugin_problems,
    run_async,
    unknown_agent,
)
from fleetd.cli.exits import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from fleetd.streams import write_stdout

if TYPE_CHECKING:
    import anyio

    from fleetd.config import Config
    from fleetd.lang import Registry
    from fleetd.runtime import AgentSet, Engine, LoadedAgent, RunReport

# Records listed per outcome in the table; the rest are counted.
TABLE_RECORDS = 6
# Rows of the table, in this order whatever order the runs ended in.
TABLE_ORDER = (
    "committed",
    "skipped",
    "rolled_back",
    "error",
    "invalid",
    "locked",
    "done",
    "pretend",
)
# Outcomes whose records get a line with their reason under the table.
EXPLAINED_OUTCOMES = ("error", "invalid", "rolled_back", "locked", "pretend")
PROGRESS_AFTER_S = 1.0
PROGRESS_EVERY_S = 0.2


def main(args: argparse.Namespace) -> int:
    terminal = None
    if not args.json and sys.stderr.isatty():
        # Logs written while a progress line shows must clear it first, so
        # standard error is wrapped before logging is configured.
        terminal = ProgressTerminal(sys.stderr)
        sys.stderr = terminal  # type: ignore[assignment]
    try:
        config = load(args)
        registry = load_registry(config)
    except CommandFailed as stop:
        return stop.status
    if args.files:
        # A file named twice (`-f a.agent -f ./a.agent`) runs once.
        files = tuple(dict.fromkeys(Path(os.path.abspath(name)) for name in args.files))
        missing = [str(path) for path in files if not path.is_file()]
        if missing:
            for name in missing:
                error(f"{name}: agent file not found")
            return EXIT_USAGE
        extra = tuple(path for path in files if path not in config.agent_files)
        agent_files = files if not args.agents else config.agent_files + extra
        config = msgspec.structs.replace(config, agent_files=agent_files)

    agent_set, errors = load_and_show_agents(config, registry, named=tuple(args.agents))
    selected, unknown = select_agents(agent_set, args.agents, args.files)
    for name in unknown:
        error(unknown_agent(name, agent_set, config.conf_dir))

    output = ReportOutput(as_json=args.json, terminal=terminal)
    run_async(config, run_cycles, config, registry, selected, output, args.pretend)
    output.finish()
    if errors or unknown or plugin_problems():
        return EXIT_USAGE
    if output.failed:
        return EXIT_FAILURE

    return EXIT_OK


def select_agents(
    agent_set: AgentSet, names: list[str], files: list[str]
) -> tuple[list[LoadedAgent], list[str]]:
    """Return the scheduled agents to run, and the names given that match none.

    Without `-a` and `-f`, every scheduled agent runs except those with
    `SCHEDULE manual`, which run only when named.
    """
    loaded = sorted(agent_set.agents.values(), key=lambda item: item.agent.path)
    unknown = [name for name in names if name not in agent_set.agents]
    if names or files:
        paths = {os.path.abspath(name) for name in files}
        chosen = [
            item
            for item in loaded
            if item.agent.name in names or str(Path(item.agent.path)) in paths
        ]
    else:
        chosen = [
            item
            for item in loaded
            if not (item.agent.schedule is not None and item.agent.schedule.manual)
        ]

    return [item for item in chosen if item.scheduled], unknown


async def run_cycles(
    config: Config,
    registry: Registry,
    selected: list[LoadedAgent],
    output: ReportOutput,
    pretend: bool,
) -> None:
    """Run one cycle of each agent in `selected`, stopping on a signal."""
    import anyio

    from fleetd.daemon.signals import receive_signals
    from fleetd.runtime import Engine

    # Receive signals before the state store opens: one that arrives while
    # it opens waits in the queue and then stops the cycles gracefully.
    stop_signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    with receive_signals(stop_signals) as signals:
        async with Engine(
            config, pretend=pretend, echo=output.echo, registry=registry
        ) as engine:
            stopping = anyio.Event()
            async with anyio.create_task_group() as group:
                group.start_soon(
                    watch_signals,
                    signals,
                    engine,
                    stopping,
                    config.daemon.shutdown_grace,
                )
                for index, loaded in enumerate(selected):
                    if stopping.is_set():
                        log_not_run(selected[index:])
                        break
                    output.start_agent(loaded)
                    error_before = engine.statistics().last_error
                    reports = await engine.run_cycle(loaded, on_report=output.report)
                    # The engine logs a cycle whose workflow could not be
                    # listed and records it as its last error; that fails
                    # `once` too.
                    error_after = engine.statistics().last_error
                    if error_after is not error_before:
                        output.failed = True
                        reasons = {f"{r.agent}: {r.reason}" for r in reports}
                        if error_after not in reasons:
                            output.cycle_error = error_after
                    output.end_agent()
                group.cancel_scope.cancel()


def log_not_run(agents: list[LoadedAgent]) -> None:
    """Warn that a stop came before these agents' cycles."""
    import structlog

    structlog.get_logger().warning(
        "once_stopped",
        agents_not_run=[loaded.agent.name for loaded in agents],
    )


async def watch_signals(
    signals: AsyncIterator[signal.Signals],
    engine: Engine,
    stopping: anyio.Event,
    grace: float,
) -> None:
    """Stop starting runs on the first signal; cancel runs after the grace."""
    import anyio
    import structlog

    log = structlog.get_logger()
    async for number in signals:
        log.warning(
            "shutdown_requested",
            signal=signal.Signals(number).name,
            grace_s=grace,
        )
        stopping.set()
        engine.stop_starting()
        break
    with anyio.move_on_after(grace):
        async for number in signals:
            log.warning("shutdown_grace_skipped", signal=signal.Signals(number).name)
            break
    cancelled = engine.cancel_runs()
    if cancelled:
        log.warning("runs_cancelled", runs_cancelled=cancelled)


class ProgressTerminal:
    """Standard error on a terminal, with one progress line at the bottom.

    Any other write first erases the progress line, so log lines never run
    into it; the next report draws it again.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.visible = False

    def show(self, text: str) -> None:
        self.stream.write("\r\x1b[K" + text)
        self.stream.flush()
        self.visible = True

    def clear(self) -> None:
        if self.visible:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.visible = False

    def write(self, text: str) -> int:
        self.clear()
        return self.stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


class ReportOutput:
    """Writes ECHO lines, reports (JSON lines or tables) and progress."""

    def __init__(self, *, as_json: bool, terminal: ProgressTerminal | None) -> None:
        self.as_json = as_json
        self.terminal = terminal
        self.failed = False
        # Why the current agent's cycle failed before any run, if it did.
        self.cycle_error: str | None = None
        self._reports: list[RunReport] = []
        self._agent: LoadedAgent | None = None
        self._started = 0.0
        self._last_progress = 0.0

    def echo(self, line: str) -> None:
        self._clear_progress()
        self.write(line + "\n")

    def write(self, text: str) -> None:
        """Write `text` to standard output, or drop it when that fails.

        A reader that closes the pipe early (`fleetd once | head`) or a full
        disk must not fail the runs in progress. Their ECHO lines and reports
        are dropped, but each run still ends in its commit or rollback, and
        the exit status still follows the outcomes.
        """
        write_stdout(text)

    def start_agent(self, loaded: LoadedAgent) -> None:
        self._agent = loaded
        self._reports = []
        self._started = time.monotonic()
        self.cycle_error = None

    def report(self, report: RunReport) -> None:
        if report.outcome.is_failure:
            self.failed = True
        self._reports.append(report)
        if self.as_json:
            self.write(json.dumps(report.to_json(), ensure_ascii=False) + "\n")
        elif self.terminal is not None:
            self._show_progress()

    def end_agent(self) -> None:
        self._clear_progress()
        if self.as_json or self._agent is None:
            return
        agent = self._agent.agent
        self.write(
            agent_table(
                agent.name,
                agent.mnemonic,
                agent.workflow,
                self._reports,
                time.monotonic() - self._started,
            )
        )
        if self.cycle_error is not None:
            reason = self.cycle_error.removeprefix(f"{agent.name}: ")
            self.write(f"  cycle failed: {reason}\n")

    def finish(self) -> None:
        self._clear_progress()

    def _show_progress(self) -> None:
        now = time.monotonic()
        if (
            self.terminal is None
            or now - self._started < PROGRESS_AFTER_S
            or now - self._last_progress < PROGRESS_EVERY_S
        ):
            return
        self._last_progress = now
        name = self._agent.agent.name if self._agent else ""
        counts = outcome_counts(self._reports)
        self.terminal.show(
            f"{name}: {len(self._reports)} records, {counts} "
            f"({now - self._started:.0f} s)"
        )

    def _clear_progress(self) -> None:
        if self.terminal is not None:
            self.terminal.clear()


def outcome_counts(reports: list[RunReport]) -> str:
    """Summarize outcomes as "2 committed, 1 skipped", in the order first seen."""
    counts: dict[str, int] = {}
    for report in reports:
        counts[report.outcome.value] = counts.get(report.outcome.value, 0) + 1

    return (
        ", ".join(f"{count} {outcome}" for outcome, count in counts.items()) or "none"
    )


def agent_table(
    name: str, mnemonic: str, workflow: str, reports: list[RunReport], seconds: float
) -> str:
    """Format the short table `once` prints after each agent's cycle.

    One row per outcome with its count and first records, then one line
    for each record that ended in error, invalid, rolled back, locked or
    pretend, or is done but in error, with its reason.
    """
    text = f"{name} (mnemonic {mnemonic}, workflow {workflow}): "
    noun = "record" if len(reports) == 1 else "records"
    text += f"{len(reports)} {noun} in {seconds:.1f} s\n"
    if not reports:
        return text
    by_outcome: dict[str, list[str]] = {}
    for report in reports:
        record = "-" if report.record is None else report.record
        by_outcome.setdefault(report.outcome.value, []).append(record)
    rows = []
    for outcome in sorted(by_outcome, key=TABLE_ORDER.index):
        records = by_outcome[outcome]
        shown = " ".join(sorted(records)[:TABLE_RECORDS])
        if len(records) > TABLE_RECORDS:
            shown += f" ... ({len(records) - TABLE_RECORDS} more)"
        rows.append([outcome, len(records), shown])
    text += format_table(["OUTCOME", "COUNT", "RECORDS"], rows) + "\n"
    for report in sorted(reports, key=lambda r: r.record or ""):
        # A record this mnemonic left in error stays `done` until retried.
        in_error = report.outcome.value == "done" and report.reason == "in error"
        if report.outcome.value not in EXPLAINED_OUTCOMES and not in_error:
            continue
        record = "-" if report.record is None else report.record
        outcome = report.outcome.value
        if report.would:
            outcome += f", would {report.would}"
        reason = (report.reason or "").replace("\n", "; ")
        text += f"  {record} ({outcome}): {reason}\n".replace(": \n", "\n")

    return text
