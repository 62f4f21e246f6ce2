"""Each cell of the resolution table, against a spool and a SQLite state."""

from __future__ import annotations

from fleetd.runtime import Engine, Outcome, PhaseResult
from tests.runtime.conftest import Fleet


async def test_run_and_cleanup_succeed_commit(fleet: Fleet) -> None:
    fleet.record("alice", status="approved")
    fleet.agent(
        """
        NAME     Provision
        MNEMONIC provision
        WORKFLOW requests
        SET this.status = "done"
        EXEC_COMMAND true
        ON_SUCCESS
            ECHO cleaned ${this.id}
        END
        """
    )
    [report] = await fleet.cycle()
    assert report.outcome is Outcome.COMMITTED
    assert report.run is PhaseResult.SUCCEEDED
    assert report.cleanup is PhaseResult.SUCCEEDED
    assert report.reason is None
    assert fleet.fields("alice") == {"status": "done"}
    assert fleet.echoed == ["cleaned alice"]

    [again] = await fleet.cycle()
    assert again.outcome is Outcome.DONE
    assert again.reason is None


async def test_cleanup_failure_still_commits(fleet: Fleet, events: list) -> None:
    fleet.record("bob", status="approved")
    fleet.agent(
        """
        NAME     Provision
        MNEMONIC provision
        WORKFLOW requests
        SET this.status = "done"
        CLEANUP
            EXEC_COMMAND false
        END
        """
    )
    [report] = await fleet.cycle()
    assert report.outcome is Outcome.COMMITTED
    assert report.run is PhaseResult.SUCCEEDED
    assert report.cleanup is PhaseResult.FAILED
    assert report.reason is not None
    assert "EXEC_COMMAND false" in report.reason
    assert fleet.fields("bob") == {"status": "done"}
    warnings = [e for e in events if e["event"] == "cleanup_failed"]
    assert warnings and warnings[0]["log_level"] == "warning"


async def test_no_cleanup_command_fails_cleanup_but_commits(fleet: Fleet) -> None:
    fleet.record("carl", status="approved")
    fleet.agent(
        """
        NAME     Provision
        MNEMONIC provision
        WORKFLOW requests
        SET this.status = "done"
        """
    )
    [report] = await fleet.cycle()
    assert report.outcome is Outcome.COMMITTED
    assert report.cleanup is PhaseResult.FAILED
    assert fleet.fields("carl") == {"status": "done"}


async def test_run_fails_cleanup_succeeds_rollback(fleet: Fleet) -> None:
    fleet.record("carol", status="approved")
    fleet.agent(
        """
        NAME     Flaky
        MNEMONIC flaky
        WORKFLOW requests
        SET this.status = "half-done"
        EXEC_COMMAND false
        ON_FAILURE
            ECHO undo ${this.id} ${this.status}
        END
        """
    )
    [report] = await fleet.cycle()
    assert report.outcome is Outcome.ROLLED_BACK
    assert report.run is PhaseResult.FAILED
    assert report.cleanup is PhaseResult.SUCCEEDED
    assert report.reason is not None
    assert "EXEC_COMMAND false" in report.reason
    assert "exited with status 1" in report.reason
    # Cleanup sees the staged value; the record keeps its old one.
    assert fleet.echoed == ["undo carol half-done"]
    assert fleet.fields("carol") == {"status": "approved"}

    [again] = await fleet.cycle()
    assert again.outcome is Outcome.ROLLED_BACK


async def test_run_and_cleanup_fail_commit_with_error(fleet: Fleet) -> None:
    fleet.record("dave", status="approved")
    fleet.agent(
        """
        NAME     Broken
        MNEMONIC broken
        WORKFLOW requests
        SET this.status = "attempted"
        EXEC_COMMAND false
        ON_FAILURE
            EXEC_COMMAND false
            ECHO cleanup goes on
        END
        """
    )
    [report] = await fleet.cycle()
    assert report.outcome is Outcome.ERROR
    assert report.run is PhaseResult.FAILED
    assert report.cleanup is PhaseResult.FAILED
    assert fleet.fields("dave") == {"status": "attempted"}
    assert fleet.echoed == ["cleanup goes on"]

    [again] = await fleet.cycle()
    assert again.outcome is Outcome.DONE
    assert again.reason == "in error"


async def test_run_fails_without_cleanup_is_error(fleet: Fleet) -> None:
    fleet.record("erin", status="approved")
    fleet.agent(
        """
        NAME     Broken
        MNEMONIC broken
        WORKFLOW requests
        EXEC_COMMAND false
        """
    )
    [report] = await fleet.cycle()
    assert report.outcome is Outcome.ERROR
    assert report.cleanup is PhaseResult.FAILED
    assert report.reason is not None
    assert "no cleanup command ran" in report.reason


async def test_failed_check_with_cleanup_rolls_back(fleet: Fleet) -> None:
    fleet.record("fay", size=3)
    path = fleet.agent(
        """
        NAME     Checker
        MNEMONIC checker
        WORKFLOW requests
        CHECK this.size > 10
        CHECK_SET after = "evaluated"
        CHECK FALSE
        EXEC_COMMAND touch ran
        ON_FAILURE
            ECHO undo ${this.id} ${after}
        END
        """
    )
    [report] = await fleet.cycle()
    assert report.outcome is Outcome.ROLLED_BACK
    assert report.run is PhaseResult.NOT_RUN
    assert report.cleanup is PhaseResult.SUCCEEDED
    assert report.reason == (f"{path}:4: CHECK this.size > 10; {path}:6: CHECK FALSE")
    assert fleet.echoed == ["undo fay evaluated"]


async def test_failed_check_without_cleanup_is_error(fleet: Fleet) -> None:
    fleet.record("gus", size=3)
    fleet.agent(
        """
        NAME     Checker
        MNEMONIC checker
        WORKFLOW requests
        CHECK this.size > 10
        ECHO never
        """
    )
    [report] = await fleet.cycle()
    assert report.outcome is Outcome.ERROR
    assert report.run is PhaseResult.NOT_RUN
    assert report.cleanup is PhaseResult.FAILED
    assert fleet.echoed == []


async def test_null_record_in_error_runs_next_cycle(fleet: Fleet) -> None:
    fleet.agent(
        """
        NAME     Host
        MNEMONIC host
        ECHO once
        EXEC_COMMAND false
        """
    )
    [first] = await fleet.cycle()
    assert first.outcome is Outcome.ERROR
    assert first.record is None
    [second] = await fleet.cycle()
    assert second.outcome is Outcome.ERROR
    assert fleet.echoed == ["once", "once"]


async def test_unexpected_error_fails_run_not_lock(fleet: Fleet) -> None:
    fleet.record("zoe", status="approved")
    fleet.agent(
        """
        NAME     Crashing
        MNEMONIC crashing
        WORKFLOW requests
        ECHO first
        ON_FAILURE
            EXEC_COMMAND true
        END
        """
    )
    agents = fleet.load()

    def broken_echo(text: str) -> None:
        raise ValueError("echo target broke")

    engine = Engine(fleet.config(), echo=broken_echo, registry=fleet.registry)
    async with engine:
        [report] = await engine.run_cycle(agents.agents["Crashing"])
        locks = await engine.store.locks()

    assert report.outcome is Outcome.ROLLED_BACK
    assert report.run is PhaseResult.FAILED
    assert "internal error: ValueError: echo target broke" in (report.reason or "")
    assert locks == []


async def test_surrogate_in_reason_resolves_lock(fleet: Fleet) -> None:
    # chr(0xD800) is a lone surrogate, as in Perl, and the path of the
    # missing program quotes it in the failure reason. The state store
    # cannot encode it, yet the run must resolve its lock all the same.
    fleet.record("ada", status="approved")
    fleet.agent(
        """
        NAME     Surrogate
        MNEMONIC surrogate
        WORKFLOW requests
        SET part = chr(55296)
        EXEC_COMMAND /nonexistent/${part}
        ON_FAILURE
            EXEC_COMMAND true
        END
        """
    )
    agents = fleet.load()

    async with fleet.engine() as engine:
        [report] = await engine.run_cycle(agents.agents["Surrogate"])
        locks = await engine.store.locks()

    assert report.outcome is Outcome.ROLLED_BACK, report.reason
    assert report.run is PhaseResult.FAILED
    assert report.cleanup is PhaseResult.SUCCEEDED
    assert "program not found" in (report.reason or "")
    assert locks == []
