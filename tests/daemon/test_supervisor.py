"""Supervisor: schedules, reloads and graceful stop, against a scripted engine.

The engine here is a stand-in whose cycles sleep for a set time, so these
tests check the supervisor's own rules (no overlapping cycles, versions
across reloads, grace then cancellation) with real signals sent to this
process. The subprocess tests in test_daemon_process.py run the real
Engine.
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest
import structlog

from fleetd.config import ConfigError
from fleetd.config.model import Config, DaemonSettings
from fleetd.daemon.logging import configure_logging
from fleetd.daemon.notify import Notifier
from fleetd.daemon.supervisor import Supervisor
from fleetd.lang.ast import Agent, Schedule
from fleetd.runtime import AgentSet, LoadedAgent, Outcome, PhaseResult, RunReport

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging(level="debug", target="json", stream=stream)
    yield stream


def events(stream: io.StringIO, name: str | None = None) -> list[dict]:
    found = [json.loads(line) for line in stream.getvalue().splitlines()]
    if name is None:
        return found
    return [event for event in found if event["event"] == name]


def make_config(tmp_path: Path, **daemon: object) -> Config:
    settings = {"interval": 0.1, "splay": 0.0, "shutdown_grace": 1.0} | daemon
    return Config(
        conf_dir=tmp_path,
        daemon=DaemonSettings(state=f"sqlite:////{tmp_path}/state.db", **settings),
    )


def make_agent(
    name: str,
    *,
    every: float | None = None,
    manual: bool = False,
    version: str = "1",
    scheduled: bool = True,
) -> LoadedAgent:
    schedule = Schedule(every=every, manual=manual) if (every or manual) else None
    agent = Agent(
        path=f"/conf/{name}.agent",
        name=name,
        mnemonic=name.lower(),
        commands=(),
        version=version,
        schedule=schedule,
        digest=f"{name}-{version}",
    )
    return LoadedAgent(agent, {}, scheduled=scheduled)


def agent_set(*agents: LoadedAgent, errors: tuple[str, ...] = ()) -> AgentSet:
    return AgentSet(
        agents={loaded.agent.name: loaded for loaded in agents}, errors=errors
    )


@dataclass
class CycleRecord:
    agent: str
    version: str | None
    started: float
    ended: float | None = None
    cancelled: bool = False
    cleaned_up: bool = False


@dataclass(frozen=True)
class FakeStatistics:
    runs_in_flight: int
    runs_done: int
    last_error: str | None


@dataclass
class FakeEngine:
    """Engine stand-in: a cycle is one run that takes `duration[agent]` seconds.

    A cancelled run fails, then its shielded "cleanup" still takes
    `cleanup` seconds, as the real Engine's Cleanup does.
    """

    duration: dict[str, float] = field(default_factory=dict)
    cleanup: float = 0.05
    cycles: list[CycleRecord] = field(default_factory=list)
    configs: list[Config] = field(default_factory=list)
    stopping: bool = False
    cancel_calls: int = 0
    in_flight: set[str] = field(default_factory=set)
    max_overlap: dict[str, int] = field(default_factory=dict)
    _scopes: set[anyio.CancelScope] = field(default_factory=set)

    def reconfigure(self, config: Config) -> None:
        self.configs.append(config)

    async def run_cycle(
        self,
        loaded: LoadedAgent,
        on_report: Callable[[RunReport], None] | None = None,
        *,
        current: Callable[[], LoadedAgent | None] | None = None,
    ) -> list[RunReport]:
        name = loaded.agent.name
        if self.stopping:
            return []
        assert name not in self.in_flight, f"cycles of {name} overlap"
        self.in_flight.add(name)
        record = CycleRecord(name, loaded.agent.version, anyio.current_time())
        self.cycles.append(record)
        scope = anyio.CancelScope()
        self._scopes.add(scope)
        try:
            with scope:
                await anyio.sleep(self.duration.get(name, 0.0))
            record.cancelled = scope.cancelled_caught
            with anyio.CancelScope(shield=True):
                await anyio.sleep(self.cleanup)
                record.cleaned_up = True
        finally:
            self._scopes.discard(scope)
            self.in_flight.discard(name)
            record.ended = anyio.current_time()
        report = RunReport(
            agent=name,
            mnemonic=loaded.agent.mnemonic,
            workflow="Null",
            record=None,
            outcome=Outcome.ERROR if record.cancelled else Outcome.COMMITTED,
            run=PhaseResult.FAILED if record.cancelled else PhaseResult.SUCCEEDED,
            cleanup=PhaseResult.SUCCEEDED,
            reason="cancelled" if record.cancelled else None,
        )
        if on_report is not None:
            on_report(report)
        return [report]

    def stop_starting(self) -> None:
        self.stopping = True

    def cancel_runs(self) -> int:
        self.stopping = True
        self.cancel_calls += 1
        for scope in list(self._scopes):
            scope.cancel()
        return len(self._scopes)

    def statistics(self) -> FakeStatistics:
        return FakeStatistics(len(self._scopes), len(self.cycles), None)

    def versions(self, name: str) -> list[str | None]:
        return [cycle.version for cycle in self.cycles if cycle.agent == name]


@dataclass
class FakeSource:
    """Configuration source whose next results a test sets."""

    config: Config
    agents: AgentSet
    error: list[str] | None = None
    block: anyio.Event | None = None  # load_config waits for it (from a worker thread)
    loads: int = 0

    def load_config(self) -> Config:
        self.loads += 1
        if self.block is not None:
            anyio.from_thread.run(self.block.wait)
        if self.error is not None:
            raise ConfigError(self.error)
        return self.config

    def load_agents(self, config: Config, previous: AgentSet | None) -> AgentSet:
        return self.agents


def notifier_for(listener) -> Notifier:
    return Notifier(str(listener.path)) if listener is not None else Notifier(None)


def drain(listener, parse_notify: Callable) -> list[dict[str, str]]:
    messages = []
    listener.socket.setblocking(False)
    while True:
        try:
            messages.append(parse_notify(listener.socket.recv(65536)))
        except BlockingIOError:
            return messages


async def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.01)


def send_signal(signum: int) -> None:
    os.kill(os.getpid(), signum)


async def run_supervisor(
    supervisor: Supervisor, script: Callable, timeout: float = 10.0
) -> int:
    """Run `supervisor.serve()` while `script()` drives it; return its exit status."""
    result: list[int] = []

    async def serve() -> None:
        result.append(await supervisor.serve())

    with anyio.fail_after(timeout):
        async with anyio.create_task_group() as group:
            group.start_soon(serve)
            await script()
    return result[0]


# -- schedules --------------------------------------------------------------


async def test_cycles_repeat_at_interval(tmp_path: Path, log_stream) -> None:
    config = make_config(tmp_path, interval=0.1)
    engine = FakeEngine()
    agents = agent_set(make_agent("Default"), make_agent("Fast", every=0.05))
    source = FakeSource(config, agents)
    supervisor = Supervisor(engine, source, config, agents, Notifier(None))

    async def script() -> None:
        await anyio.sleep(0.55)
        send_signal(signal.SIGTERM)

    assert await run_supervisor(supervisor, script) == 0
    default_runs = len(engine.versions("Default"))
    fast_runs = len(engine.versions("Fast"))
    # Generous bounds: the loop may be slow on a loaded machine.
    assert 3 <= default_runs <= 7
    assert fast_runs > default_runs


async def test_first_cycle_after_splay(tmp_path: Path, log_stream) -> None:
    config = make_config(tmp_path, interval=10.0, splay=0.3)
    engine = FakeEngine()
    agents = agent_set(*(make_agent(f"A{i}") for i in range(20)))
    supervisor = Supervisor(
        engine,
        FakeSource(config, agents),
        config,
        agents,
        Notifier(None),
        rng=random.Random(7),
    )
    start = anyio.current_time()

    async def script() -> None:
        await wait_for(lambda: len(engine.cycles) == 20)
        send_signal(signal.SIGTERM)

    await run_supervisor(supervisor, script)
    delays = [cycle.started - start for cycle in engine.cycles]
    assert max(delays) <= 0.3 + 0.2
    # Random offsets spread the starts instead of firing all at once.
    assert max(delays) - min(delays) > 0.1


async def test_manual_and_unscheduled_never_run(tmp_path: Path, log_stream) -> None:
    config = make_config(tmp_path, interval=0.05)
    engine = FakeEngine()
    agents = agent_set(
        make_agent("Manual", manual=True),
        make_agent("Unmet", scheduled=False),
        make_agent("Runs"),
    )
    supervisor = Supervisor(
        engine, FakeSource(config, agents), config, agents, Notifier(None)
    )

    async def script() -> None:
        await anyio.sleep(0.3)
        send_signal(signal.SIGTERM)

    await run_supervisor(supervisor, script)
    assert engine.versions("Manual") == []
    assert engine.versions("Unmet") == []
    assert len(engine.versions("Runs")) >= 2


async def test_overrun_warned_without_overlap(tmp_path: Path, log_stream) -> None:
    config = make_config(tmp_path, interval=0.05)
    engine = FakeEngine(duration={"Slow": 0.15}, cleanup=0.0)
    agents = agent_set(make_agent("Slow"))
    supervisor = Supervisor(
        engine, FakeSource(config, agents), config, agents, Notifier(None)
    )

    async def script() -> None:
        await wait_for(lambda: len(engine.cycles) >= 3)
        send_signal(signal.SIGTERM)

    await run_supervisor(supervisor, script)
    overruns = events(log_stream, "cycle_overrun")
    assert overruns
    assert overruns[0]["level"] == "warning"
    assert overruns[0]["agent"] == "Slow"
    assert overruns[0]["interval_s"] == 0.05
    # Each cycle starts only after the one before it ended.
    for before, after in zip(engine.cycles, engine.cycles[1:]):
        assert after.started >= before.ended


# -- reload -----------------------------------------------------------------


async def test_reload_changed_agent_next_cycle(
    tmp_path: Path, log_stream, listener, parse_notify: Callable
) -> None:
    config = make_config(tmp_path, interval=0.05)
    engine = FakeEngine(duration={"Acct": 0.4})
    agents = agent_set(make_agent("Acct", version="1"))
    source = FakeSource(config, agents)
    supervisor = Supervisor(engine, source, config, agents, notifier_for(listener))

    async def script() -> None:
        await wait_for(lambda: engine.in_flight == {"Acct"})
        source.agents = agent_set(make_agent("Acct", version="2"))
        send_signal(signal.SIGHUP)
        await wait_for(lambda: engine.versions("Acct") == ["1", "2"])
        send_signal(signal.SIGTERM)

    await run_supervisor(supervisor, script)
    first, second = engine.cycles[:2]
    # The cycle in flight at the reload ran to its end on version 1.
    assert first.version == "1"
    assert not first.cancelled
    assert second.version == "2"
    assert second.started >= first.ended
    finished = events(log_stream, "reload_finished")
    assert finished[0]["changed"] == ["Acct"]
    messages = drain(listener, parse_notify)
    reloading = [m for m in messages if m.get("RELOADING") == "1"]
    assert reloading
    assert int(reloading[0]["MONOTONIC_USEC"]) > 0
    ready_index = [i for i, m in enumerate(messages) if m.get("READY") == "1"]
    assert len(ready_index) == 2  # after the start and after the reload
    assert ready_index[1] > messages.index(reloading[0])


async def test_reload_invalid_config_keeps_old(
    tmp_path: Path, log_stream, listener, parse_notify: Callable
) -> None:
    config = make_config(tmp_path, interval=0.05)
    engine = FakeEngine()
    agents = agent_set(make_agent("Keep"))
    source = FakeSource(config, agents)
    supervisor = Supervisor(engine, source, config, agents, notifier_for(listener))

    async def script() -> None:
        await wait_for(lambda: len(engine.cycles) >= 1)
        source.error = ["50-bad.toml: daemon.interval: expected a duration such as 5m"]
        source.agents = agent_set(make_agent("Other"))
        send_signal(signal.SIGHUP)
        await wait_for(lambda: events(log_stream, "reload_failed") != [])
        count = len(engine.versions("Keep"))
        await wait_for(lambda: len(engine.versions("Keep")) > count)
        send_signal(signal.SIGTERM)

    await run_supervisor(supervisor, script)
    assert engine.configs == []  # the Engine never saw a new configuration
    assert engine.versions("Other") == []
    (failed,) = events(log_stream, "reload_failed")
    assert failed["level"] == "error"
    assert "50-bad.toml" in failed["error"]
    statuses = [m["STATUS"] for m in drain(listener, parse_notify) if "STATUS" in m]
    assert any("50-bad.toml" in status for status in statuses)
    assert any("reload failed" in status for status in statuses)


async def test_reload_requests_coalesce(tmp_path: Path, log_stream) -> None:
    config = make_config(tmp_path, interval=1.0)
    engine = FakeEngine()
    agents = agent_set(make_agent("A"))
    source = FakeSource(config, agents, block=anyio.Event())
    supervisor = Supervisor(engine, source, config, agents, Notifier(None))

    async def script() -> None:
        await anyio.sleep(0.05)
        send_signal(signal.SIGHUP)
        await wait_for(lambda: source.loads == 1)
        # Three more while the first reload is blocked in load_config.
        for _ in range(3):
            send_signal(signal.SIGHUP)
            await anyio.sleep(0.02)
        blocker = source.block
        source.block = None
        blocker.set()
        await wait_for(lambda: len(events(log_stream, "reload_finished")) == 2)
        await anyio.sleep(0.2)
        send_signal(signal.SIGTERM)

    await run_supervisor(supervisor, script)
    assert source.loads == 2
    assert len(events(log_stream, "reload_requested")) == 4


async def test_reload_adds_and_removes_agents(tmp_path: Path, log_stream) -> None:
    config = make_config(tmp_path, interval=0.05)
    engine = FakeEngine(duration={"Old": 0.3})
    agents = agent_set(make_agent("Old"))
    source = FakeSource(config, agents)
    supervisor = Supervisor(engine, source, config, agents, Notifier(None))

    async def script() -> None:
        await wait_for(lambda: engine.in_flight == {"Old"})
        source.agents = agent_set(make_agent("New"))
        send_signal(signal.SIGHUP)
        await wait_for(lambda: len(engine.versions("New")) >= 2)
        await wait_for(lambda: "Old" not in engine.in_flight)
        await anyio.sleep(0.2)
        send_signal(signal.SIGTERM)

    await run_supervisor(supervisor, script)
    # The removed agent finished its cycle in flight and started no other.
    old = [cycle for cycle in engine.cycles if cycle.agent == "Old"]
    assert len(old) == 1
    assert not old[0].cancelled
    stopped = events(log_stream, "agent_stopped")
    assert {"agent": "Old", "reason": "removed"} in [
        {"agent": e["agent"], "reason": e["reason"]} for e in stopped
    ]
    assert len(engine.configs) == 1


async def test_reload_revives_removed_agent_without_overlap(
    tmp_path: Path, log_stream
) -> None:
    config = make_config(tmp_path, interval=0.05)
    engine = FakeEngine(duration={"A": 0.3})
    agents = agent_set(make_agent("A", version="1"))
    source = FakeSource(config, agents)
    supervisor = Supervisor(engine, source, config, agents, Notifier(None))

    async def script() -> None:
        await wait_for(lambda: engine.in_flight == {"A"})
        source.agents = agent_set()
        assert await supervisor.reload()
        source.agents = agent_set(make_agent("A", version="2"))
        assert await supervisor.reload()
        await wait_for(lambda: engine.versions("A") == ["1", "2"])
        send_signal(signal.SIGTERM)

    # FakeEngine asserts that no two cycles of one agent overlap.
    await run_supervisor(supervisor, script)
    assert engine.cycles[1].started >= engine.cycles[0].ended


# -- stop -------------------------------------------------------------------


async def test_stop_waits_for_runs_in_grace(
    tmp_path: Path, log_stream, listener, parse_notify: Callable
) -> None:
    config = make_config(tmp_path, interval=0.05, shutdown_grace=2.0)
    engine = FakeEngine(duration={"A": 0.3})
    agents = agent_set(make_agent("A"))
    supervisor = Supervisor(
        engine, FakeSource(config, agents), config, agents, notifier_for(listener)
    )

    async def script() -> None:
        await wait_for(lambda: engine.in_flight == {"A"})
        send_signal(signal.SIGTERM)

    assert await run_supervisor(supervisor, script) == 0
    assert engine.stopping
    assert engine.cancel_calls == 0
    assert len(engine.cycles) == 1
    assert not engine.cycles[0].cancelled
    messages = drain(listener, parse_notify)
    stopping = [m for m in messages if m.get("STOPPING") == "1"]
    assert stopping
    assert "stopping" in stopping[0]["STATUS"]


async def test_stop_cancels_runs_after_grace(tmp_path: Path, log_stream) -> None:
    config = make_config(tmp_path, interval=0.05, shutdown_grace=0.2)
    engine = FakeEngine(duration={"A": 30.0}, cleanup=0.1)
    agents = agent_set(make_agent("A"))
    supervisor = Supervisor(
        engine, FakeSource(config, agents), config, agents, Notifier(None)
    )
    stopped_at: list[float] = []

    async def script() -> None:
        await wait_for(lambda: engine.in_flight == {"A"})
        stopped_at.append(anyio.current_time())
        send_signal(signal.SIGTERM)

    assert await run_supervisor(supervisor, script) == 0
    (cycle,) = engine.cycles
    assert cycle.cancelled
    assert cycle.cleaned_up
    assert engine.cancel_calls == 1
    assert cycle.ended - stopped_at[0] >= 0.2
    (cancelled,) = events(log_stream, "runs_cancelled")
    assert cancelled["runs_cancelled"] == 1
    assert cancelled["reason"] == "shutdown grace expired"


async def test_second_signal_skips_grace(tmp_path: Path, log_stream) -> None:
    config = make_config(tmp_path, interval=0.05, shutdown_grace=60.0)
    engine = FakeEngine(duration={"A": 30.0})
    agents = agent_set(make_agent("A"))
    supervisor = Supervisor(
        engine, FakeSource(config, agents), config, agents, Notifier(None)
    )

    async def script() -> None:
        await wait_for(lambda: engine.in_flight == {"A"})
        send_signal(signal.SIGTERM)
        await anyio.sleep(0.1)
        send_signal(signal.SIGINT)

    assert await run_supervisor(supervisor, script, timeout=5.0) == 0
    assert engine.cycles[0].cancelled
    assert engine.cycles[0].cleaned_up
    (cancelled,) = events(log_stream, "runs_cancelled")
    assert cancelled["reason"] == "second signal"


async def test_signal_handlers_restored(tmp_path: Path, log_stream) -> None:
    def marker(signum: int, frame: object) -> None:
        raise AssertionError("not expected to run")

    previous = signal.signal(signal.SIGHUP, marker)
    try:
        config = make_config(tmp_path)
        engine = FakeEngine()
        agents = agent_set()
        supervisor = Supervisor(
            engine, FakeSource(config, agents), config, agents, Notifier(None)
        )

        async def script() -> None:
            await anyio.sleep(0.05)
            send_signal(signal.SIGTERM)

        await run_supervisor(supervisor, script)
        assert signal.getsignal(signal.SIGHUP) is marker
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGHUP, previous)


async def test_ready_and_watchdog_sent(
    tmp_path: Path, log_stream, listener, parse_notify: Callable
) -> None:
    config = make_config(tmp_path)
    engine = FakeEngine()
    agents = agent_set(make_agent("A"), make_agent("B", scheduled=False))
    supervisor = Supervisor(
        engine,
        FakeSource(config, agents),
        config,
        agents,
        notifier_for(listener),
        watchdog_period=0.05,
    )

    async def script() -> None:
        await anyio.sleep(0.3)
        send_signal(signal.SIGTERM)

    await run_supervisor(supervisor, script)
    messages = drain(listener, parse_notify)
    ready = [m for m in messages if m.get("READY") == "1"]
    assert len(ready) == 1
    assert "1 agents running" in ready[0]["STATUS"]
    assert "1 not running" in ready[0]["STATUS"]
    assert "runs in progress" in ready[0]["STATUS"]
    assert sum(1 for m in messages if m == {"WATCHDOG": "1"}) >= 4


async def test_status_reports_last_run_error(tmp_path: Path, log_stream) -> None:
    config = make_config(tmp_path, shutdown_grace=0.0)
    engine = FakeEngine(duration={"A": 30.0})
    agents = agent_set(make_agent("A"))
    supervisor = Supervisor(
        engine, FakeSource(config, agents), config, agents, Notifier(None)
    )

    async def script() -> None:
        await wait_for(lambda: engine.in_flight == {"A"})
        send_signal(signal.SIGTERM)

    await run_supervisor(supervisor, script)
    stats = supervisor.statistics()
    assert stats.outcomes == {"error": 1}
    assert stats.last_error == "A record -: error: cancelled"
    assert "last error: A record -: error: cancelled" in supervisor.status_text()


def test_structlog_reset_between_tests() -> None:
    # The autouse fixture resets structlog, so no test sees another's output.
    assert not structlog.is_configured()


async def test_reload_warns_restart_settings(tmp_path: Path, log_stream) -> None:
    config = Config(
        conf_dir=tmp_path,
        daemon=DaemonSettings(state="postgresql://fleet:hunter2@127.0.0.1/fleet"),
    )
    engine = FakeEngine()
    agents = agent_set(make_agent("A"))
    source = FakeSource(make_config(tmp_path, interval=0.1), agents)
    supervisor = Supervisor(engine, source, config, agents, Notifier(None))

    async def script() -> None:
        await anyio.sleep(0.05)
        assert await supervisor.reload()
        send_signal(signal.SIGTERM)

    await run_supervisor(supervisor, script)
    (warning,) = events(log_stream, "setting_needs_restart")
    assert warning["key"] == "daemon.state"
    assert warning["running"].startswith("postgresql://fleet:")
    assert "hunter2" not in log_stream.getvalue()
    # Other settings apply at once.
    assert engine.configs[-1].daemon.interval == 0.1


async def test_reload_unscheduled_agent_stops(tmp_path: Path, log_stream) -> None:
    config = make_config(tmp_path, interval=0.05)
    engine = FakeEngine()
    agents = agent_set(make_agent("A"))
    source = FakeSource(config, agents)
    supervisor = Supervisor(engine, source, config, agents, Notifier(None))
    counts: list[int] = []

    async def script() -> None:
        await wait_for(lambda: len(engine.cycles) >= 1)
        # A prerequisite that no longer holds: the agent stops.
        source.agents = agent_set(make_agent("A", scheduled=False))
        assert await supervisor.reload()
        await wait_for(lambda: events(log_stream, "agent_stopped") != [])
        counts.append(len(engine.cycles))
        await anyio.sleep(0.3)
        counts.append(len(engine.cycles))
        # It holds again: the agent runs again.
        source.agents = agent_set(make_agent("A"))
        assert await supervisor.reload()
        await wait_for(lambda: len(engine.cycles) > counts[1])
        send_signal(signal.SIGTERM)

    await run_supervisor(supervisor, script)
    assert counts[0] == counts[1]
    (stopped, *_) = events(log_stream, "agent_stopped")
    assert stopped["reason"] == "not scheduled"
    assert events(log_stream, "reload_finished")[0]["stopped"] == ["A"]
