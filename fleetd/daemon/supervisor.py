"""The daemon's supervisor: agent schedules, reloads and graceful stop.

Design. One anyio task group owns everything the daemon does: the signal
receiver, the watchdog, the status reporter, the reloader and, in a nested
task group, one coroutine per agent. Each agent coroutine runs its cycles
one after the other (`Engine.run_cycle`), so cycles of one agent never
overlap; the Engine limits the runs inside them (`max_concurrency` overall,
`CONCURRENCY` per agent). The supervisor keeps only the schedule.

Reload (SIGHUP). Everything is read and validated before anything changes:
the TOML drop-ins first (an error keeps the whole old configuration), then
the agents, where the loader keeps the previous version of an agent whose
file became invalid. Only then are the new settings given to the Engine and
the new agent versions put into the slots. Runs in flight finish on the
version they started with and keep their locks; every run that starts later,
in the cycle in progress or the next one, takes the new version. A removed
agent's cycle starts no further run, and its coroutine ends once its runs in
flight end. SIGHUPs that arrive during a
reload set one flag, so they add up to a single reload after it.

Stop (SIGTERM, SIGINT). No cycle starts and the Engine starts no run
(`stop_starting`). In-flight runs get `shutdown_grace`; then
`Engine.cancel_runs` cancels their Check and Run, which fail, while their
Cleanup and the resolution of their locks still run. A second signal skips
what is left of the grace. The task group exits once every agent coroutine
has returned, that is once every in-flight run is resolved.

The alternative of one task per run, spawned by a central scheduler, was
not taken: it would need its own bookkeeping to keep cycles of one agent
apart, which one coroutine per agent gives for free.
"""

from __future__ import annotations

import os
import random
import signal
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Protocol

import anyio
from anyio.abc import TaskGroup, TaskStatus

from fleetd.config import ConfigError, redact_url
from fleetd.daemon.notify import Notifier, run_watchdog
from fleetd.daemon.schedule import AgentSlot, agent_interval, is_runnable
from fleetd.daemon.signals import HANDLED_SIGNALS, receive_signals
from fleetd.daemon.status import SupervisorStatistics, format_status
from fleetd.logs import get_logger

if TYPE_CHECKING:
    from fleetd.config.model import Config
    from fleetd.runtime import AgentSet, LoadedAgent, RunReport

__all__ = ["ConfigSource", "EngineLike", "Supervisor"]

log = get_logger()

# Seconds between checks of the STATUS= text; it is sent only when it changed.
STATUS_PERIOD = 2.0
# Settings that an open Engine cannot change; a reload logs that they need a restart.
_RESTART_SETTINGS = ("state", "lease", "loop", "plugin_dirs")


class EngineLike(Protocol):
    """The part of `fleetd.runtime.Engine` the supervisor uses."""

    def reconfigure(self, config: Config) -> None: ...

    async def run_cycle(
        self,
        loaded: LoadedAgent,
        on_report: Callable[[RunReport], None] | None = None,
        *,
        current: Callable[[], LoadedAgent | None] | None = None,
    ) -> list[RunReport]: ...

    def stop_starting(self) -> None: ...

    def cancel_runs(self) -> None: ...

    def statistics(self) -> Any: ...


class ConfigSource(Protocol):
    """Source of the configuration and the agents, read at every reload."""

    def load_config(self) -> Config:
        """Read and validate the drop-ins; raise `ConfigError` when invalid."""
        ...

    def load_agents(self, config: Config, previous: AgentSet | None) -> AgentSet:
        """Parse and initialize the agents of `config`."""
        ...


class Supervisor:
    """Run every scheduled agent until a stop signal; reload on SIGHUP.

    Args:
        engine: an open Engine.

        source: reads the configuration again on reload.

        config: the configuration the Engine was opened with.

        agents: the agents loaded from `config`.

        notifier: sd_notify sender (disabled outside systemd).

        watchdog_period: seconds between `WATCHDOG=1`, None without watchdog.

        rng: source of the splay offsets.

    Example::

        async with Engine(config, registry=registry) as engine:
            supervisor = Supervisor(engine, source, config, agents, notifier)
            status = await supervisor.serve()  # returns after SIGTERM
    """

    def __init__(
        self,
        engine: EngineLike,
        source: ConfigSource,
        config: Config,
        agents: AgentSet,
        notifier: Notifier,
        *,
        watchdog_period: float | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._engine = engine
        self._source = source
        self._config = config
        self._agents = agents
        self._notifier = notifier
        self._watchdog_period = watchdog_period
        self._rng = rng if rng is not None else random.Random()
        self._slots: dict[str, AgentSlot] = {}
        self._agents_group: TaskGroup | None = None
        self._stopping = anyio.Event()
        self._force_stop = anyio.Event()
        self._reload_requested = anyio.Event()
        self._outcomes: Counter[str] = Counter()
        self._runs_done = 0
        self._cycles = 0
        self._overruns = 0
        self._reloads = 0
        self._reload_failures = 0
        self._last_error: str | None = None
        self._reload_error = False  # whether _last_error is from a failed reload
        self._cancelled_runs = 0

    # -- public -------------------------------------------------------------

    async def serve(self, signals: AsyncIterator[signal.Signals] | None = None) -> int:
        """Run until SIGTERM or SIGINT and the end of every in-flight run; return 0.

        On return every run has been resolved (committed, rolled back or
        in error) and the previous signal handlers are back in place.

        Args:
            signals: a receiver opened by the caller with `receive_signals`,
                so that signals which arrive while the caller starts up are
                queued for the supervisor. None: open one here.
        """
        async with anyio.create_task_group() as daemon_group:
            # Signals first, so a SIGTERM while the agents start is a graceful stop.
            await daemon_group.start(self._receive_signals, signals)
            if self._watchdog_period is not None:
                daemon_group.start_soon(
                    run_watchdog, self._notifier, self._watchdog_period
                )

            async with anyio.create_task_group() as agents_group:
                self._agents_group = agents_group
                # Start the agents.
                self._log_ignored_files()
                self._apply_agents(self._agents)
                daemon_group.start_soon(self._reload_on_request)
                daemon_group.start_soon(self._report_status)
                self._notifier.ready(self.status_text())
                log.notice(
                    "daemon_started",
                    pid=os.getpid(),
                    conf_dir=str(self._config.conf_dir),
                    agents=len(self._slots),
                )

                # Wait for SIGTERM or SIGINT, then start the graceful stop.
                await self._stopping.wait()
                self._begin_stop(daemon_group)

            # Every agent coroutine has returned, so no run is in flight.
            daemon_group.cancel_scope.cancel()

        stats = self.statistics()
        log.notice(
            "daemon_stopped",
            runs_done=stats.runs_done,
            runs_cancelled=self._cancelled_runs,
            cycles=stats.cycles,
        )

        return 0

    def request_stop(self, reason: str = "request") -> None:
        """Start a graceful stop; a second request skips the grace."""
        if not self._stopping.is_set():
            log.notice(
                "stop_requested",
                reason=reason,
                grace_s=self._config.daemon.shutdown_grace,
            )
            self._stopping.set()
        elif not self._force_stop.is_set():
            log.warning("stop_forced", reason=reason)
            self._force_stop.set()

    def request_reload(self) -> None:
        """Reload after the reload in progress, if any; requests coalesce."""
        if self._stopping.is_set():
            log.notice("reload_ignored", reason="stopping")
            return
        self._reload_requested.set()

    def statistics(self) -> SupervisorStatistics:
        """Return the daemon's counters."""
        running = sum(1 for slot in self._slots.values() if slot.active)
        engine_stats = self._engine.statistics()

        return SupervisorStatistics(
            agents_running=running,
            agents_not_running=len(self._agents.agents) - running,
            agent_errors=len(self._agents.errors),
            runs_in_flight=engine_stats.runs_in_flight,
            runs_done=self._runs_done,
            outcomes=dict(self._outcomes),
            cycles=self._cycles,
            overruns=self._overruns,
            reloads=self._reloads,
            reload_failures=self._reload_failures,
            last_error=self._last_error or engine_stats.last_error,
            stopping=self._stopping.is_set(),
        )

    def status_text(self) -> str:
        """Return the one-line STATUS= text: agents, runs in progress, last error."""
        return format_status(self.statistics())

    # -- signals ------------------------------------------------------------

    async def _receive_signals(
        self,
        signals: AsyncIterator[signal.Signals] | None,
        *,
        task_status: TaskStatus[None],
    ) -> None:
        if signals is None:
            with receive_signals(HANDLED_SIGNALS) as own_signals:
                await self._handle_signals(own_signals, task_status)
        else:
            await self._handle_signals(signals, task_status)

    async def _handle_signals(
        self, signals: AsyncIterator[signal.Signals], task_status: TaskStatus[None]
    ) -> None:
        task_status.started()
        async for signum in signals:
            if signum == signal.SIGHUP:
                log.notice("reload_requested", signal="SIGHUP")
                self.request_reload()
            else:
                self.request_stop(signal.Signals(signum).name)

    # -- stop ---------------------------------------------------------------

    def _begin_stop(self, daemon_group: TaskGroup) -> None:
        # Start no new cycle and no new run.
        self._engine.stop_starting()
        for slot in self._slots.values():
            slot.wake()
        self._notifier.stopping(self.status_text())
        log.notice(
            "daemon_stopping",
            runs_in_flight=self.statistics().runs_in_flight,
            grace_s=self._config.daemon.shutdown_grace,
        )
        # Give in-flight runs the grace, then cancel them.
        daemon_group.start_soon(self._cancel_after_grace)

    async def _cancel_after_grace(self) -> None:
        grace = self._config.daemon.shutdown_grace
        with anyio.move_on_after(grace):
            await self._force_stop.wait()
        reason = (
            "second signal" if self._force_stop.is_set() else "shutdown grace expired"
        )
        # Runs already in Cleanup finish as they would have; only the others
        # are cancelled.
        cancelled = self._engine.cancel_runs()
        self._cancelled_runs = cancelled
        if cancelled:
            log.warning("runs_cancelled", reason=reason, runs_cancelled=cancelled)

    # -- reload -------------------------------------------------------------

    async def _reload_on_request(self) -> None:
        while True:
            await self._reload_requested.wait()
            # Requests that arrive from here on make one more reload.
            self._reload_requested = anyio.Event()
            if self._stopping.is_set():
                return
            await self.reload()

    async def reload(self) -> bool:
        """Read, validate and apply the configuration; return whether it was applied."""
        self._reloads += 1
        self._notifier.reloading("reloading")
        log.info("reload_started", reload=self._reloads)

        # Read and validate everything before changing anything.
        try:
            config = await anyio.to_thread.run_sync(self._source.load_config)
            agents = await anyio.to_thread.run_sync(
                self._source.load_agents, config, self._agents
            )
        except ConfigError as exc:
            self._reload_failed(exc.errors)
            return False
        except Exception as exc:  # a bad reload must not stop the daemon
            log.exception("reload_failed", error=str(exc))
            self._reload_failed([f"{type(exc).__name__}: {exc}"], logged=True)
            return False
        if self._stopping.is_set():
            log.notice("reload_discarded", reason="stopping")
            return False

        # Apply: settings first, so runs of new agent versions see them.
        self._warn_restart_settings(config)
        self._engine.reconfigure(config)
        self._config = config
        changes = self._apply_agents(agents)
        self._agents = agents
        if self._reload_error:
            self._last_error = None
            self._reload_error = False
        self._log_ignored_files()
        log.notice("reload_finished", reload=self._reloads, **changes)
        self._notifier.ready(self.status_text())

        return True

    def _reload_failed(self, errors: list[str], *, logged: bool = False) -> None:
        self._reload_failures += 1
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        self._last_error = f"reload failed, old configuration kept: {errors[0]}{more}"
        self._reload_error = True
        if not logged:
            for error in errors:
                log.error("reload_failed", error=error)
        log.warning("configuration_kept", reason="reload failed", errors=len(errors))
        self._notifier.ready(self.status_text())

    def _warn_restart_settings(self, config: Config) -> None:
        for key in _RESTART_SETTINGS:
            old = getattr(self._config.daemon, key)
            new = getattr(config.daemon, key)
            if old != new:
                # The state URL may carry a password.
                running = redact_url(old) if key == "state" else str(old)
                log.warning(
                    "setting_needs_restart", key=f"daemon.{key}", running=running
                )

    # -- agents -------------------------------------------------------------

    def _apply_agents(self, agents: AgentSet) -> dict[str, list[str]]:
        """Put the agent versions of `agents` into the slots; start new slots."""
        daemon = self._config.daemon
        added: list[str] = []
        changed: list[str] = []
        stopped: list[str] = []
        removed: list[str] = []
        for name, loaded in agents.agents.items():
            runnable = is_runnable(loaded)
            interval = agent_interval(loaded, daemon.interval)
            slot = self._slots.get(name)
            if slot is None:
                if runnable:
                    self._start_slot(name, loaded, interval)
                    added.append(name)
                continue
            if loaded is not slot.loaded and loaded != slot.loaded:
                slot.loaded = loaded
                changed.append(name)
            if slot.active and not runnable:
                stopped.append(name)
            slot.active = runnable
            slot.reschedule(interval, daemon.splay)
            slot.wake()
        for name, slot in self._slots.items():
            if name not in agents.agents and slot.active:
                slot.active = False
                slot.wake()
                removed.append(name)

        return {
            "added": added,
            "changed": changed,
            "stopped": stopped,
            "removed": removed,
        }

    def _start_slot(self, name: str, loaded: LoadedAgent, interval: float) -> None:
        assert self._agents_group is not None
        slot = AgentSlot(
            name=name,
            loaded=loaded,
            interval=interval,
            splay=self._config.daemon.splay,
            base=anyio.current_time(),
            rng=self._rng,
        )
        self._slots[name] = slot
        self._agents_group.start_soon(self._run_agent, slot, name=f"agent {name}")

    def _log_ignored_files(self) -> None:
        for path, reason in self._config.ignored:
            log.warning("file_ignored", file=str(path), reason=reason)
        # Agent files rejected by the ownership and mode checks made as root.
        for message in self._config.errors:
            log.error("file_rejected", error=message)

    async def _run_agent(self, slot: AgentSlot) -> None:
        """Run the cycles of one agent until it is removed or the daemon stops."""
        agent_log = log.bind(agent=slot.name)
        agent_log.debug(
            "agent_started",
            interval_s=slot.interval,
            due_in_s=slot.due - anyio.current_time(),
        )
        while True:
            await slot.wait_until_due(self._stopping)
            if self._stopping.is_set() or not slot.active:
                break

            # One cycle. Each run starts on the version loaded at its start,
            # so a reload during a long cycle changes the runs after it;
            # runs in flight finish on their own version.
            loaded = slot.loaded
            slot.start_cycle()
            started = anyio.current_time()
            try:
                await self._engine.run_cycle(
                    loaded,
                    on_report=self._on_report,
                    current=lambda: slot.loaded if slot.active else None,
                )
            except Exception as exc:  # noqa: BLE001 - one agent failing must not stop others
                self._last_error = f"{slot.name}: cycle failed: {exc}"
                agent_log.exception("cycle_failed", error=str(exc))
            finished = anyio.current_time()
            self._cycles += 1
            missed = slot.finish_cycle(started, finished)
            if missed:
                self._overruns += 1
                agent_log.warning(
                    "cycle_overrun",
                    duration_s=round(finished - started, 3),
                    interval_s=slot.interval,
                    missed_cycles=missed,
                )

        # No await between the check above and this: a reload either
        # revived the slot before the check or finds it gone.
        if self._slots.get(slot.name) is slot:
            del self._slots[slot.name]
        if self._stopping.is_set():
            agent_log.debug("agent_stopped", reason="stopping")
        elif slot.name in self._agents.agents:
            agent_log.info("agent_stopped", reason="not scheduled")
        else:
            agent_log.info("agent_stopped", reason="removed")

    def _on_report(self, report: RunReport) -> None:
        # The Engine logs each run as it ends; the supervisor only counts.
        self._runs_done += 1
        outcome = report.outcome.value
        self._outcomes[outcome] += 1
        if report.outcome.is_failure:
            record = report.record if report.record is not None else "-"
            self._last_error = (
                f"{report.agent} record {record}: {outcome}: {report.reason}"
            )

    # -- status ---------------------------------------------------------------

    async def _report_status(self) -> None:
        sent = ""
        while True:
            await anyio.sleep(STATUS_PERIOD)
            text = self.status_text()
            if text != sent:
                self._notifier.status(text)
                sent = text
