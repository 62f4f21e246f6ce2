"""The engine: locks, recovery, fencing, pretend, plugins, concurrency."""

from __future__ import annotations

import sys
from typing import Any

import anyio
import pytest
from msgspec.structs import replace

from fleetd.lang import CommandSpec
from fleetd.locks import LockKey, Owner, current_owner
from fleetd.runtime import Engine, Outcome, PhaseResult
from tests.runtime.conftest import Fleet
from tests.runtime.helpers import wait_for_file

PROVISION = """
    NAME     Provision
    MNEMONIC provision
    WORKFLOW requests
    REQUIRE this.status = "approved"
    SET this.status = "done"
    ECHO provisioned ${this.id}
    """


async def test_abandoned_lock_reported_once_as_interrupted(fleet: Fleet) -> None:
    fleet.record("olga", status="approved")
    fleet.agent(PROVISION)
    finished = await anyio.run_process(["sh", "-c", "echo $$"])
    dead_pid = int(finished.stdout)
    owner = replace(current_owner(), pid=dead_pid, instance="gone")
    async with fleet.engine() as engine:
        await engine.store.acquire(
            LockKey("requests", "olga", "provision"),
            owner,
            "Provision",
            "run-of-a-dead-daemon",
            60.0,
            check_mark=True,
        )
    first = await fleet.cycle()
    assert [(r.outcome, r.record, r.reason) for r in first] == [
        (Outcome.ERROR, "olga", "interrupted"),
    ]
    assert first[0].run_id == "run-of-a-dead-daemon"
    second = await fleet.cycle()
    assert [(r.outcome, r.reason) for r in second] == [(Outcome.DONE, "in error")]
    assert fleet.echoed == []
    assert fleet.fields("olga") == {"status": "approved"}


async def hold_lock(fleet: Fleet, record_id: str) -> Owner:
    """Lock `record_id` for the mnemonic provision as another, live daemon."""
    other = replace(current_owner(), instance="another-daemon")
    async with fleet.engine() as engine:
        await engine.store.acquire(
            LockKey("requests", record_id, "provision"),
            other,
            "Provision",
            "other-run",
            60.0,
            check_mark=True,
        )

    return other


async def test_record_locked_by_live_owner(fleet: Fleet) -> None:
    fleet.record("pia", status="approved")
    fleet.agent(PROVISION)
    other = await hold_lock(fleet, "pia")
    [report] = await fleet.cycle()
    assert report.outcome is Outcome.LOCKED
    assert report.reason is not None
    assert report.reason.startswith(f"locked by {other} since 20")
    assert fleet.echoed == []


async def test_pretend_reports_a_held_lock_as_locked(fleet: Fleet) -> None:
    # Pretend shows what a run would do, and a run would be refused.
    fleet.record("pia", status="approved")
    fleet.agent(PROVISION)
    other = await hold_lock(fleet, "pia")
    [report] = await fleet.cycle(pretend=True)
    assert report.outcome is Outcome.LOCKED
    assert report.reason is not None
    assert report.reason.startswith(f"locked by {other} since 20")
    async with fleet.engine() as engine:
        [lock] = await engine.store.locks()
    assert lock.run_id == "other-run"


async def test_pretend_reports_dead_owner_lock(
    fleet: Fleet,
) -> None:
    fleet.record("olga", status="approved")
    fleet.agent(PROVISION)
    finished = await anyio.run_process(["sh", "-c", "echo $$"])
    owner = replace(current_owner(), pid=int(finished.stdout), instance="gone")
    async with fleet.engine() as engine:
        await engine.store.acquire(
            LockKey("requests", "olga", "provision"),
            owner,
            "Provision",
            "run-of-a-dead-daemon",
            60.0,
            check_mark=True,
        )
    [report] = await fleet.cycle(pretend=True)
    assert report.outcome is Outcome.LOCKED
    assert report.reason is not None
    assert report.reason.endswith(
        "; its owner is gone, so the next run that is not pretend resolves it"
        " as error (interrupted)"
    )
    [real] = await fleet.cycle()
    assert (real.outcome, real.reason) == (Outcome.ERROR, "interrupted")


async def test_late_commit_rejected_after_lease_lost(
    fleet: Fleet, events: list
) -> None:
    fleet.record("quinn", status="approved")
    engines: list[Engine] = []

    async def take_over(context: Any) -> int:
        # Another daemon found the lease expired and recovered the lock.
        store = engines[0].store
        [lock] = [lock for lock in await store.locks() if lock.key.record == "quinn"]
        assert await store.resolve_abandoned(lock, "interrupted")
        return 1

    fleet.registry.add_command(CommandSpec("take_over", 0, 0, take_over))
    fleet.agent(
        """
        NAME     Provision
        MNEMONIC provision
        WORKFLOW requests
        SET this.status = "done"
        CALL take_over()
        """
    )
    agents = fleet.load()
    async with fleet.engine() as engine:
        engines.append(engine)
        [report] = await engine.run_cycle(agents.agents["Provision"])
        history = await engine.store.history("quinn")
    assert report.outcome is Outcome.ERROR
    assert report.reason == "lease lost"
    assert report.run is PhaseResult.SUCCEEDED
    assert fleet.fields("quinn") == {"status": "approved"}
    assert [entry.reason for entry in history] == ["interrupted"]
    assert any(e["event"] == "resolution_rejected" for e in events)


async def test_failed_resolution_stops_renewal(
    fleet: Fleet, events: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A store that fails the resolution for good (fdatasync returned EIO,
    # say): the lease is no longer renewed, so the lock expires and is
    # recovered as interrupted instead of staying held while fleetd lives.
    fleet.record("rena", status="approved")
    fleet.agent(
        """
        NAME     Provision
        MNEMONIC provision
        WORKFLOW requests
        SET this.status = "done"
        """
    )
    agents = fleet.load()
    async with fleet.engine() as engine:

        async def failing_resolve(*args: Any, **kwargs: Any) -> None:
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(engine.store, "resolve", failing_resolve)
        [report] = await engine.run_cycle(agents.agents["Provision"])
        monkeypatch.undo()
        assert report.outcome is Outcome.ERROR
        assert engine.locks.statistics().held == 0
        [lock] = await engine.store.locks()
        renewed_until = lock.expires
        await engine.locks.renew()
        [lock] = await engine.store.locks()
        assert lock.expires == renewed_until
    assert any(e["event"] == "lock_abandoned" for e in events)


async def test_lease_lost_run_reported_once(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The store renewed nothing, so the run's lease lapsed and its commit
    # was rejected. The next cycle recovers the lock as interrupted in the
    # store, and does not report the same run a second time.
    fleet.settings(daemon='lease = "0.3s"')
    fleet.record("lena", status="approved")
    fleet.agent(
        """
        NAME     Provision
        MNEMONIC provision
        WORKFLOW requests
        SET this.status = "done"
        EXEC_COMMAND sleep 0.5
        """
    )
    agents = fleet.load()
    async with fleet.engine() as engine:

        async def renew_nothing(*args: Any, **kwargs: Any) -> list:
            return []

        monkeypatch.setattr(engine.store, "renew", renew_nothing)
        [report] = await engine.run_cycle(agents.agents["Provision"])
        assert report.reason == "lease lost"
        await anyio.sleep(0.4)
        again = await engine.run_cycle(agents.agents["Provision"])
        assert [r.outcome for r in again] == [Outcome.DONE]
        assert report.run_id not in [r.run_id for r in again]
        history = await engine.store.history("lena")
    assert [entry.reason for entry in history] == ["interrupted"]


async def test_pretend_runs_nothing_and_writes_nothing(
    fleet: Fleet, events: list
) -> None:
    fleet.record("frank", status="approved")
    fleet.record("gina", status="pending")
    fleet.agent(
        f"""
        NAME     Provision
        MNEMONIC provision
        WORKFLOW requests
        REQUIRE this.status = "approved"
        EXEC_COMMAND touch {fleet.root}/touched-${{this.id}}
        SET this.status = "done"
        ECHO shown only
        """
    )
    reports = await fleet.cycle(pretend=True)
    assert [(r.record, r.outcome, r.would) for r in reports] == [
        ("frank", Outcome.PRETEND, "commit"),
        ("gina", Outcome.SKIPPED, None),
    ]
    assert reports[0].run is PhaseResult.NOT_RUN
    assert reports[0].cleanup is PhaseResult.NOT_RUN
    assert not (fleet.root / "touched-frank").exists()
    assert fleet.fields("frank") == {"status": "approved"}
    assert fleet.echoed == []
    [change] = [e for e in events if e["event"] == "pretend_set"]
    assert change["field"] == "status"
    assert change["old"] == "approved"
    assert change["value"] == "done"
    [program] = [e for e in events if e["event"] == "pretend_exec"]
    assert program["argv"] == ["touch", f"{fleet.root}/touched-frank"]
    async with fleet.engine() as engine:
        assert await engine.store.history("frank") == []
        assert await engine.store.locks() == []

    [real, _] = await fleet.cycle()
    assert real.outcome is Outcome.COMMITTED
    fleet.record("frank", status="approved")
    [again, _] = await fleet.cycle(pretend=True)
    assert again.outcome is Outcome.DONE


async def test_pretend_names_resolution_after_failed_check(fleet: Fleet) -> None:
    fleet.record("rollback", size=1)
    fleet.agent(
        """
        NAME     WithCleanup
        MNEMONIC withcleanup
        WORKFLOW requests
        CHECK this.size > 10
        ON_FAILURE
            ECHO undo
        END
        """,
        name="a.agent",
    )
    fleet.agent(
        """
        NAME     WithoutCleanup
        MNEMONIC withoutcleanup
        WORKFLOW requests
        CHECK this.size > 10
        """,
        name="b.agent",
    )
    reports = await fleet.cycle(pretend=True)
    assert [(r.agent, r.would) for r in reports] == [
        ("WithCleanup", "rollback"),
        ("WithoutCleanup", "error"),
    ]
    assert all(r.reason and "CHECK this.size > 10" in r.reason for r in reports)
    assert fleet.echoed == []


async def test_pretend_calls_only_side_effect_free_commands(fleet: Fleet) -> None:
    called: list[str] = []
    fleet.registry.add_command(
        CommandSpec(
            "look", 0, 0, lambda ctx: called.append("look") or 1, side_effect_free=True
        )
    )
    fleet.registry.add_command(
        CommandSpec("touch", 0, 0, lambda ctx: called.append("touch") or 1)
    )
    fleet.agent(
        """
        NAME     Calls
        MNEMONIC calls
        CALL look()
        CALL touch()
        """
    )
    [report] = await fleet.cycle(pretend=True)
    assert report.outcome is Outcome.PRETEND
    assert called == ["look"]


async def test_call_false_or_raising_fails(fleet: Fleet) -> None:
    def reject(ctx: Any) -> int:
        return 0

    def explode(ctx: Any) -> int:
        raise OSError("no route")

    fleet.registry.add_command(CommandSpec("reject", 0, 0, reject))
    fleet.registry.add_command(CommandSpec("explode", 0, 0, explode))
    fleet.agent(
        """
        NAME     Refuse
        MNEMONIC reject
        CALL reject()
        """,
        name="a.agent",
    )
    fleet.agent(
        """
        NAME     Explode
        MNEMONIC explode
        CALL explode()
        """,
        name="b.agent",
    )
    reports = await fleet.cycle()
    assert [r.run for r in reports] == [PhaseResult.FAILED, PhaseResult.FAILED]
    assert reports[0].reason is not None
    assert "reject returned false" in reports[0].reason
    assert reports[1].reason is not None
    assert "explode raised OSError: no route" in reports[1].reason


async def test_call_hooks_run_after_resolution(fleet: Fleet) -> None:
    seen: list[tuple[str, str | None, Any]] = []

    async def register(ctx: Any, fail: Any) -> int:
        ctx.on_commit(lambda: seen.append(("commit", ctx.record_id, ctx.record)))
        ctx.on_rollback(lambda: seen.append(("rollback", ctx.record_id, None)))
        ctx.on_error(lambda: seen.append(("error", ctx.record_id, None)))
        return 0 if fail == "yes" else 1

    fleet.registry.add_command(CommandSpec("register", 1, 1, register))
    fleet.record("ok", fail="no")
    fleet.record("bad", fail="yes")
    fleet.agent(
        """
        NAME     Hooks
        MNEMONIC hooks
        WORKFLOW requests
        SET this.step = 1
        CALL register(this.fail)
        ON_FAILURE
            ECHO undo
        END
        """
    )
    reports = await fleet.cycle()
    assert [(r.record, r.outcome) for r in reports] == [
        ("bad", Outcome.ROLLED_BACK),
        ("ok", Outcome.COMMITTED),
    ]
    assert seen == [
        ("rollback", "bad", None),
        ("commit", "ok", {"id": "ok", "fail": "no", "step": 1}),
    ]


async def test_unreadable_record_is_invalid(fleet: Fleet) -> None:
    (fleet.spool / "broken.json").write_text("{not json")
    fleet.record("fine", status="approved")
    fleet.agent(PROVISION)
    reports = await fleet.cycle()
    outcomes = {r.record: r.outcome for r in reports}
    assert outcomes == {"broken": Outcome.INVALID, "fine": Outcome.COMMITTED}


async def _max_concurrent(fleet: Fleet, agent_concurrency: int) -> int:
    running = 0
    peak = 0

    async def track(ctx: Any) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await anyio.sleep(0.05)
        running -= 1
        return 1

    fleet.registry.add_command(CommandSpec("track", 0, 0, track))
    for number in range(8):
        fleet.record(f"r{number}")
    fleet.agent(
        f"""
        NAME        Busy
        MNEMONIC    busy
        WORKFLOW    requests
        CONCURRENCY {agent_concurrency}
        CALL track()
        """
    )
    reports = await fleet.cycle()
    assert len(reports) == 8
    assert all(r.outcome is Outcome.COMMITTED for r in reports)
    return peak


async def test_agent_concurrency_limits_runs(fleet: Fleet) -> None:
    assert await _max_concurrent(fleet, 3) == 3


async def test_max_concurrency_limits_runs(fleet: Fleet) -> None:
    fleet.settings(daemon="max_concurrency = 2")
    assert await _max_concurrent(fleet, 5) == 2


async def test_stop_starting_ends_cycle_after_runs_in_flight(fleet: Fleet) -> None:
    engines: list[Engine] = []

    def stop(ctx: Any) -> int:
        engines[0].stop_starting()
        return 1

    fleet.registry.add_command(CommandSpec("stop", 0, 0, stop))
    for number in range(3):
        fleet.record(f"s{number}")
    fleet.agent(
        """
        NAME     Stopper
        MNEMONIC stopper
        WORKFLOW requests
        CALL stop()
        """
    )
    agents = fleet.load()
    async with fleet.engine() as engine:
        engines.append(engine)
        reports = await engine.run_cycle(agents.agents["Stopper"])
        assert await engine.run_cycle(agents.agents["Stopper"]) == []
        assert engine.statistics().runs_done == 1
    assert [(r.record, r.outcome) for r in reports] == [("s0", Outcome.COMMITTED)]


async def test_unscheduled_agent_runs_nothing(fleet: Fleet) -> None:
    fleet.agent(
        """
        NAME         Windows
        MNEMONIC     windows
        PREREQUISITE OS() = "MSWin32"
        ECHO never
        """
    )
    assert await fleet.cycle() == []
    assert fleet.echoed == []


async def test_null_cycles_never_overlap(fleet: Fleet) -> None:
    ready = fleet.root / "ready"
    fleet.agent(
        f"""
        NAME     Host
        MNEMONIC host
        EXEC_COMMAND sh -c "echo 1 > {ready}; sleep 0.5"
        """
    )
    agents = fleet.load()
    loaded = agents.agents["Host"]
    reports: list = []
    async with fleet.engine() as first, fleet.engine() as second:

        async def cycle(engine: Engine) -> None:
            reports.extend(await engine.run_cycle(loaded))

        async with anyio.create_task_group() as group:
            group.start_soon(cycle, first)
            await anyio.to_thread.run_sync(wait_for_file, ready)
            await cycle(second)
    outcomes = sorted(report.outcome.value for report in reports)
    assert outcomes == ["committed", "locked"]
    assert all(report.record is None for report in reports)


async def test_cycle_switches_version_between_runs(fleet: Fleet) -> None:
    for number in range(3):
        fleet.record(f"v{number}")
    version_one = """
        NAME     Versioned
        MNEMONIC versioned
        WORKFLOW requests
        ECHO one ${this.id}
        """
    fleet.agent(version_one)
    old = fleet.load().agents["Versioned"]
    fleet.agent(version_one.replace("ECHO one", "ECHO two"))
    new = fleet.load().agents["Versioned"]
    seen: list[str] = []

    def current() -> Any:
        # The reload lands once the first run has been handed out.
        seen.append("asked")
        return old if len(seen) == 1 else new

    async with fleet.engine() as engine:
        reports = await engine.run_cycle(old, current=current)

    assert [r.outcome for r in reports] == [Outcome.COMMITTED] * 3
    assert fleet.echoed == ["one v0", "two v1", "two v2"]


async def test_cycle_ends_when_agent_removed(fleet: Fleet) -> None:
    for number in range(3):
        fleet.record(f"r{number}")
    fleet.agent(
        """
        NAME     Removed
        MNEMONIC removed
        WORKFLOW requests
        ECHO ran ${this.id}
        """
    )
    loaded = fleet.load().agents["Removed"]
    versions = iter([loaded, None, None])

    async with fleet.engine() as engine:
        reports = await engine.run_cycle(loaded, current=lambda: next(versions))

    assert [r.record for r in reports] == ["r0"]
    assert fleet.echoed == ["ran r0"]


async def test_backtracking_pattern_fails_requirement(
    fleet: Fleet, events: list
) -> None:
    # A pattern that backtracks exponentially on this value is stopped, so
    # one record cannot hold the event loop and every other agent.
    fleet.record("greedy", status="a" * 60 + "!")
    fleet.record("plain", status="approved")
    fleet.agent(
        """
        NAME     Greedy
        MNEMONIC greedy
        WORKFLOW requests
        REQUIRE this.status MATCHES /^(a|aa)+$/ OR this.status = "approved"
        SET this.status = "done"
        """
    )
    agents = fleet.load()
    async with fleet.engine() as engine:
        reports = await engine.run_cycle(agents.agents["Greedy"])

    by_record = {report.record: report for report in reports}
    assert by_record["greedy"].outcome is Outcome.SKIPPED
    assert "took longer than 1 s" in (by_record["greedy"].reason or "") or any(
        "took longer than 1 s" in str(event.get("error")) for event in events
    )
    assert by_record["plain"].outcome is Outcome.COMMITTED


async def test_program_output_logged_under_own_run(fleet: Fleet, events: list) -> None:
    for name in ("ann", "bob", "cyd"):
        fleet.record(name, status="approved")
    fleet.agent(
        """
        NAME     Echo
        MNEMONIC echo
        WORKFLOW requests
        CONCURRENCY 3
        EXEC_COMMAND echo ${this.id}
        """
    )
    agents = fleet.load()
    async with fleet.engine() as engine:
        reports = await engine.run_cycle(agents.agents["Echo"])

    run_ids = {report.record: report.run_id for report in reports}
    lines = [event for event in events if event["event"] == "program_output"]
    assert sorted(event["line"] for event in lines) == ["ann", "bob", "cyd"]
    for event in lines:
        assert event["record"] == event["line"]
        assert event["run_id"] == run_ids[event["line"]]
        assert event["phase"] == "run"


async def test_matches_of_one_command_share_time_limit(fleet: Fleet) -> None:
    # Twenty values that each backtrack for about 0.4 s here, 8 s in all
    # one after another: the command fails once its matches together have
    # used one second.
    fleet.record("many", status="approved", values=["a" * 30 + "!"] * 20)
    fleet.agent(
        """
        NAME     Greedy
        MNEMONIC greedy
        WORKFLOW requests
        SET this.found = grep("^(a|aa)+$", this.values)
        """
    )
    agents = fleet.load()
    started = anyio.current_time()
    async with fleet.engine() as engine:
        [report] = await engine.run_cycle(agents.agents["Greedy"])
    elapsed = anyio.current_time() - started

    assert report.outcome is Outcome.ERROR
    assert "took longer than 1 s" in (report.reason or "")
    assert elapsed < 5


async def test_plugin_command_sys_exit_fails_run(fleet: Fleet) -> None:
    # A plugin command that calls sys.exit() raises SystemExit, which is
    # not an Exception. It must fail the run like any other raise, and
    # the run must still run its cleanup and resolve its lock.
    fleet.record("ada", status="approved")
    fleet.registry.add_command(CommandSpec("quit", 0, 0, lambda context: sys.exit(3)))
    fleet.agent(
        """
        NAME     Quitter
        MNEMONIC quitter
        WORKFLOW requests
        CALL quit()
        ON_FAILURE
            EXEC_COMMAND true
        END
        """
    )
    agents = fleet.load()

    async with fleet.engine() as engine:
        [report] = await engine.run_cycle(agents.agents["Quitter"])
        locks = await engine.store.locks()

    assert report.outcome is Outcome.ROLLED_BACK, report.reason
    assert report.run is PhaseResult.FAILED
    assert report.cleanup is PhaseResult.SUCCEEDED
    assert locks == []
