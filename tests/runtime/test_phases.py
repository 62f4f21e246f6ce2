"""Phase rules: Requirements, Check, Run, PARALLEL, TIMEOUT, Cleanup."""

from __future__ import annotations

import time

import anyio

from fleetd.lang import FunctionSpec
from fleetd.runtime import Outcome, PhaseResult
from tests.runtime.conftest import Fleet
from tests.runtime.helpers import process_gone, wait_for_file


async def test_requirements_name_every_unmet_one(fleet: Fleet) -> None:
    fleet.record("ivy", status="pending", email="ivy")
    path = fleet.agent(
        """
        NAME     Needs
        MNEMONIC needs
        WORKFLOW requests
        REQUIRE this.status = "approved"
        REQUIRE this.email MATCHES /@/
        REQUIRE TRUE
        ECHO ran
        """
    )
    [report] = await fleet.cycle()
    assert report.outcome is Outcome.SKIPPED
    assert report.run is PhaseResult.NOT_RUN
    assert report.cleanup is PhaseResult.NOT_RUN
    assert report.reason == (
        f'{path}:4: REQUIRE this.status = "approved"; '
        f"{path}:5: REQUIRE this.email MATCHES /@/"
    )
    assert fleet.echoed == []


async def test_skipped_record_takes_no_lock(fleet: Fleet) -> None:
    fleet.record("ivy", status="pending")
    fleet.agent(
        """
        NAME     Needs
        MNEMONIC needs
        WORKFLOW requests
        REQUIRE this.status = "approved"
        """
    )
    await fleet.cycle()
    async with fleet.engine() as engine:
        assert await engine.store.locks() == []
        assert await engine.store.history("ivy") == []


async def test_failing_requirement_function_is_unmet(
    fleet: Fleet, events: list
) -> None:
    def boom() -> str:
        raise RuntimeError("disk on fire")

    fleet.registry.add_function(FunctionSpec("boom", 0, 0, boom))
    fleet.record("jo")
    path = fleet.agent(
        """
        NAME     Boom
        MNEMONIC boom
        WORKFLOW requests
        REQUIRE boom() = 1
        """
    )
    [report] = await fleet.cycle()
    assert report.outcome is Outcome.SKIPPED
    assert report.reason == f"{path}:4: REQUIRE boom() = 1"
    [finished] = [e for e in events if e["event"] == "run_finished"]
    assert finished["phase"] == "requirements"
    assert finished["record"] == "jo"
    [failure] = [e for e in events if e["event"] == "command_failed"]
    assert failure["agent"] == "Boom"
    assert failure["record"] == "jo"
    assert failure["command"] == f"{path}:4: REQUIRE boom() = 1"
    assert "disk on fire" in failure["error"]


async def test_run_stops_at_first_failure(fleet: Fleet) -> None:
    fleet.agent(
        f"""
        NAME     Stops
        MNEMONIC stops
        ECHO first
        EXEC_COMMAND false
        EXEC_COMMAND touch {fleet.root}/after
        ON_FAILURE
            ECHO cleanup
        END
        """
    )
    [report] = await fleet.cycle()
    assert report.run is PhaseResult.FAILED
    assert not (fleet.root / "after").exists()
    assert fleet.echoed == ["first", "cleanup"]


async def test_run_stops_inside_foreach(fleet: Fleet) -> None:
    fleet.agent(
        """
        NAME     Loop
        MNEMONIC loop
        FOREACH n IN [1, 2, 3] DO
            EXEC_COMMAND test ${n} -ne 2
            ECHO passed ${n}
        END
        ECHO after
        ON_FAILURE
            ECHO cleanup
        END
        """
    )
    [report] = await fleet.cycle()
    assert report.outcome is Outcome.ROLLED_BACK
    assert fleet.echoed == ["passed 1", "cleanup"]


async def test_parallel_failure_kills_siblings(fleet: Fleet) -> None:
    pidfile = fleet.root / "sibling.pid"
    fleet.agent(
        f"""
        NAME     Parallel
        MNEMONIC parallel
        PARALLEL
            EXEC_COMMAND sh -c "echo $$ > {pidfile}; exec sleep 30"
            EXEC_COMMAND sh -c "while [ ! -s {pidfile} ]; do sleep 0.01; done; exit 1"
        END
        EXEC_COMMAND touch {fleet.root}/after
        ON_FAILURE
            ECHO cleanup
        END
        """
    )
    started = time.monotonic()
    [report] = await fleet.cycle()
    assert time.monotonic() - started < 5
    assert report.outcome is Outcome.ROLLED_BACK
    assert report.run is PhaseResult.FAILED
    assert process_gone(int(pidfile.read_text()))
    assert not (fleet.root / "after").exists()
    assert fleet.echoed == ["cleanup"]


async def test_parallel_children_run_at_once(fleet: Fleet) -> None:
    fleet.agent(
        """
        NAME     Parallel
        MNEMONIC parallel
        PARALLEL
            EXEC_COMMAND sleep 0.5
            EXEC_COMMAND sleep 0.5
            EXEC_COMMAND sleep 0.5
            EXEC_COMMAND sleep 0.5
        END
        ON_SUCCESS
            ECHO done
        END
        """
    )
    started = time.monotonic()
    [report] = await fleet.cycle()
    # Four half-second sleeps one after another would take 2 s.
    assert time.monotonic() - started < 1.8
    assert report.outcome is Outcome.COMMITTED
    assert report.run is PhaseResult.SUCCEEDED


async def test_timeout_names_the_parallel_command_still_running(fleet: Fleet) -> None:
    fleet.agent(
        """
        NAME     Slow
        MNEMONIC slow
        TIMEOUT  500ms
        PARALLEL
            EXEC_COMMAND true
            EXEC_COMMAND sleep 30
        END
        ON_FAILURE
            ECHO cleanup
        END
        """
    )
    [report] = await fleet.cycle()
    path = fleet.root / "conf.d" / "test.agent"
    assert report.reason == f"timed out after 0.5 s in {path}:6: EXEC_COMMAND sleep 30"


async def test_timeout_fails_run_and_kills_program(fleet: Fleet) -> None:
    pidfile = fleet.root / "slow.pid"
    fleet.agent(
        f"""
        NAME     Slow
        MNEMONIC slow
        TIMEOUT  500ms
        EXEC_COMMAND sh -c "echo $$ > {pidfile}; exec sleep 30"
        ON_FAILURE
            ECHO cleanup
        END
        """
    )
    started = time.monotonic()
    [report] = await fleet.cycle()
    assert time.monotonic() - started < 5
    assert report.outcome is Outcome.ROLLED_BACK
    assert report.run is PhaseResult.FAILED
    # The reason names the command that was still running.
    path = fleet.root / "conf.d" / "test.agent"
    assert report.reason == (
        f'timed out after 0.5 s in {path}:4: EXEC_COMMAND sh -c "echo $$ > {pidfile};'
        ' exec sleep 30"'
    )
    assert process_gone(int(pidfile.read_text()))
    assert fleet.echoed == ["cleanup"]


async def test_timeout_fails_even_if_program_exits_zero(fleet: Fleet) -> None:
    fleet.agent(
        """
        NAME     Slow
        MNEMONIC slow
        TIMEOUT  300ms
        EXEC_COMMAND sh -c "trap 'exit 0' TERM; sleep 30 & wait"
        ON_FAILURE
            ECHO cleanup
        END
        """
    )
    [report] = await fleet.cycle()
    assert report.run is PhaseResult.FAILED
    assert report.outcome is Outcome.ROLLED_BACK


async def test_timeout_bounds_check_plus_run(fleet: Fleet) -> None:
    fleet.agent(
        """
        NAME     Slow
        MNEMONIC slow
        TIMEOUT  1s
        CHECK TRUE
        EXEC_COMMAND sleep 0.6
        EXEC_COMMAND sleep 0.6
        ECHO never
        ON_FAILURE
            ECHO cleanup
        END
        """
    )
    [report] = await fleet.cycle()
    assert report.run is PhaseResult.FAILED
    assert fleet.echoed == ["cleanup"]


async def test_cleanup_runs_in_order_and_goes_on(fleet: Fleet) -> None:
    fleet.agent(
        """
        NAME     Order
        MNEMONIC order
        ECHO run
        ON_FAILURE
            ECHO wrong-failure
        END
        CLEANUP
            EXEC_COMMAND false
            ECHO cleanup-1
        END
        ON_SUCCESS
            ECHO success-2
        END
        CLEANUP
            ECHO cleanup-3
        END
        """
    )
    [report] = await fleet.cycle()
    assert fleet.echoed == ["run", "cleanup-1", "success-2", "cleanup-3"]
    assert report.cleanup is PhaseResult.FAILED
    assert report.outcome is Outcome.COMMITTED


async def test_cleanup_with_only_false_when_ran_nothing(fleet: Fleet) -> None:
    fleet.agent(
        """
        NAME     Nothing
        MNEMONIC nothing
        EXEC_COMMAND false
        WHEN FALSE DO
            ON_FAILURE
                ECHO never
            END
        END
        """
    )
    [report] = await fleet.cycle()
    assert report.cleanup is PhaseResult.FAILED
    assert report.outcome is Outcome.ERROR


async def test_cleanup_timeout_fails_cleanup(fleet: Fleet) -> None:
    fleet.settings(daemon='cleanup_timeout = "300ms"')
    fleet.agent(
        """
        NAME     Stuck
        MNEMONIC stuck
        EXEC_COMMAND false
        ON_FAILURE
            EXEC_COMMAND sleep 30
        END
        """
    )
    started = time.monotonic()
    [report] = await fleet.cycle()
    assert time.monotonic() - started < 5
    assert report.cleanup is PhaseResult.FAILED
    assert report.outcome is Outcome.ERROR
    assert report.reason is not None
    assert "cleanup timed out after 0.3 s" in report.reason


async def test_cancel_runs_fails_run_but_cleans_up(fleet: Fleet) -> None:
    pidfile = fleet.root / "long.pid"
    fleet.agent(
        f"""
        NAME     Long
        MNEMONIC long
        EXEC_COMMAND sh -c "echo $$ > {pidfile}; exec sleep 30"
        ON_FAILURE
            EXEC_COMMAND touch {fleet.root}/cleaned
        END
        """
    )
    [loaded] = fleet.load().agents.values()
    async with fleet.engine() as engine:
        async with anyio.create_task_group() as group:
            reports: list = []

            async def cycle() -> None:
                reports.extend(await engine.run_cycle(loaded))

            group.start_soon(cycle)
            await anyio.to_thread.run_sync(wait_for_file, pidfile)
            assert engine.statistics().runs_in_flight == 1
            assert engine.cancel_runs() == 1
        [report] = reports
        assert report.run is PhaseResult.FAILED
        assert report.reason == "cancelled by shutdown"
        assert report.outcome is Outcome.ROLLED_BACK
        assert (fleet.root / "cleaned").exists()
        assert process_gone(int(pidfile.read_text()))
        assert await engine.store.locks() == []
        assert engine.statistics().runs_in_flight == 0


async def test_cancel_runs_skips_runs_in_cleanup(fleet: Fleet) -> None:
    # A run that already reached Cleanup is not cancelled, and not counted.
    ready = fleet.root / "ready"
    fleet.agent(
        f"""
        NAME     Cleaning
        MNEMONIC cleaning
        EXEC_COMMAND true
        CLEANUP
            EXEC_COMMAND sh -c "echo 1 > {ready}; sleep 0.3"
        END
        """
    )
    [loaded] = fleet.load().agents.values()
    async with fleet.engine() as engine:
        async with anyio.create_task_group() as group:
            reports: list = []

            async def cycle() -> None:
                reports.extend(await engine.run_cycle(loaded))

            group.start_soon(cycle)
            await anyio.to_thread.run_sync(wait_for_file, ready)
            assert engine.statistics().runs_in_flight == 1
            assert engine.cancel_runs() == 0
        [report] = reports
        assert report.run is PhaseResult.SUCCEEDED
        assert report.outcome is Outcome.COMMITTED


async def test_cleanup_survives_outer_cancellation(fleet: Fleet) -> None:
    ready = fleet.root / "ready"
    fleet.agent(
        f"""
        NAME     Shielded
        MNEMONIC shielded
        EXEC_COMMAND false
        ON_FAILURE
            EXEC_COMMAND sh -c "echo 1 > {ready}; sleep 0.5; touch {fleet.root}/cleaned"
        END
        """
    )
    [loaded] = fleet.load().agents.values()
    async with fleet.engine() as engine:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as group:
                group.start_soon(engine.run_cycle, loaded)
                await anyio.to_thread.run_sync(wait_for_file, ready)
                scope.cancel()
        assert (fleet.root / "cleaned").exists()
        assert await engine.store.locks() == []
        [entry] = await engine.store.history("")
        assert entry.resolution.value == "rolled_back"


async def test_set_values_last_through_phases(fleet: Fleet) -> None:
    fleet.record("hank", email="hank@example.org")
    fleet.settings(extra='[globals]\nhome_root = "/srv/home"\n')
    fleet.agent(
        """
        NAME     Vars
        MNEMONIC vars
        WORKFLOW requests
        REQUIRE this.email MATCHES /^([a-z]+)@example\\.org$/
        REQUIRE_SET user = "${1}"
        CHECK_SET home = "${home_root}/${user}"
        WHEN TRUE DO
            SET inner = "scoped"
            SET home = "${home}!"
        END
        ECHO home=${home} user=${user} inner=${inner}
        ON_SUCCESS
            ECHO cleanup sees ${home}
        END
        """
    )
    await fleet.cycle()
    assert fleet.echoed == [
        "home=/srv/home/hank! user=hank inner=",
        "cleanup sees /srv/home/hank!",
    ]


async def test_globals_are_not_shared_between_runs(fleet: Fleet) -> None:
    fleet.record("a1")
    fleet.record("a2")
    fleet.settings(extra="[globals]\ncounter = 1\n")
    fleet.agent(
        """
        NAME     Count
        MNEMONIC count
        WORKFLOW requests
        ECHO ${this.id} ${counter}
        SET counter = 2
        """
    )
    await fleet.cycle()
    assert fleet.echoed == ["a1 1", "a2 1"]


async def test_program_builder_with_options(fleet: Fleet) -> None:
    fleet.record("kim", shell="/bin/sh")
    fleet.agent(
        f"""
        NAME     Build
        MNEMONIC build
        WORKFLOW requests
        COMMAND sh -c "echo $* > {fleet.root}/args" sh
        OPTION --name ${{this.id}}
        OPTION_IF (this.missing = 1) --missing
        OPTION_IF (this.shell = "/bin/sh") --shell "${{this.shell}}"
        EXEC
        COMMAND echo no options
        EXEC_IF_OPTION
        """
    )
    [report] = await fleet.cycle()
    assert report.run is PhaseResult.SUCCEEDED
    assert (fleet.root / "args").read_text() == "--name kim --shell /bin/sh\n"


async def test_ignore_failure_keeps_going(fleet: Fleet) -> None:
    fleet.agent(
        """
        NAME     Ignore
        MNEMONIC ignore
        EXEC_COMMAND IGNORE_FAILURE false
        ECHO after
        """
    )
    [report] = await fleet.cycle()
    assert report.run is PhaseResult.SUCCEEDED
    assert fleet.echoed == ["after"]


async def test_spawn_failure_is_a_command_failure(fleet: Fleet, events: list) -> None:
    path = fleet.agent(
        """
        NAME     Missing
        MNEMONIC missing
        EXEC_COMMAND no-such-program-here
        """
    )
    [report] = await fleet.cycle()
    assert report.outcome is Outcome.ERROR
    assert report.run is PhaseResult.FAILED
    [failure] = [e for e in events if e["event"] == "command_failed"]
    assert failure["command"] == f"{path}:3: EXEC_COMMAND no-such-program-here"
    assert "not found in safe_path" in failure["error"]


async def test_shell_metacharacters_stay_data(fleet: Fleet) -> None:
    marker = fleet.root / "pwned"
    fleet.record(
        "mallory",
        username=f"x; touch {marker}",
        shell=f"$(touch {marker}) `touch {marker}` ${{HOME}} -rf\nnext",
    )
    fleet.agent(
        f"""
        NAME     Inject
        MNEMONIC inject
        WORKFLOW requests
        EXEC_COMMAND sh -c "printf '%s|' \\"$@\\" > {fleet.root}/argv" sh ${{this.username}} "${{this.shell}}"
        """
    )
    [report] = await fleet.cycle()
    assert report.outcome is Outcome.COMMITTED
    assert not marker.exists()
    assert (fleet.root / "argv").read_text() == (
        f"x; touch {marker}|$(touch {marker}) `touch {marker}` ${{HOME}} -rf\nnext|"
    )


async def test_nul_in_field_fails_the_command(fleet: Fleet, events: list) -> None:
    fleet.record("nul", name="a\u0000b")
    fleet.agent(
        """
        NAME     Nul
        MNEMONIC nul
        WORKFLOW requests
        EXEC_COMMAND echo ${this.name}
        """
    )
    [report] = await fleet.cycle()
    assert report.run is PhaseResult.FAILED
    assert report.reason is not None
    assert "NUL byte" in report.reason


async def test_run_events_carry_context(fleet: Fleet, events: list) -> None:
    fleet.record("zed")
    fleet.agent(
        """
        NAME     Context
        MNEMONIC context
        WORKFLOW requests
        REQUIRE TRUE
        EXEC_COMMAND echo hello
        LOG NOTICE said hello
        """
    )
    [report] = await fleet.cycle()
    [output] = [e for e in events if e["event"] == "program_output"]
    assert output["line"] == "hello"
    assert output["agent"] == "Context"
    assert output["mnemonic"] == "context"
    assert output["workflow"] == "requests"
    assert output["record"] == "zed"
    assert output["phase"] == "run"
    assert output["run_id"] == report.run_id
    finished = [e for e in events if e["event"] == "run_finished"]
    assert [e["phase"] for e in finished] == ["resolution"]
    assert finished[0]["run_id"] == report.run_id
    [logged] = [e for e in events if e["event"] == "agent_log"]
    assert logged["message"] == "said hello"
    assert logged["syslog_level"] == "notice"
    assert logged["phase"] == "run"


async def test_expression_error_in_run_fails(fleet: Fleet) -> None:
    def boom() -> str:
        raise ValueError("bad value")

    fleet.registry.add_function(FunctionSpec("boom", 0, 0, boom))
    fleet.agent(
        """
        NAME     Boom
        MNEMONIC boom
        SET x = boom()
        ECHO never
        ON_FAILURE
            ECHO cleanup
        END
        """
    )
    [report] = await fleet.cycle()
    assert report.run is PhaseResult.FAILED
    assert report.outcome is Outcome.ROLLED_BACK
    assert fleet.echoed == ["cleanup"]


async def test_secret_globals_masked_in_logs(fleet: Fleet, events: list) -> None:
    fleet.settings(extra='[globals]\ndb_password = "hunter2"\n')
    fleet.agent(
        """
        NAME     Secret
        MNEMONIC secret
        EXEC_COMMAND echo connecting with ${db_password}
        LOG INFO using ${db_password}
        """
    )
    [report] = await fleet.cycle()
    assert report.run is PhaseResult.SUCCEEDED
    [output] = [e for e in events if e["event"] == "program_output"]
    assert output["line"] == "connecting with ***"
    [logged] = [e for e in events if e["event"] == "agent_log"]
    assert logged["message"] == "using ***"
    await fleet.cycle(pretend=True)
    [shown] = [e for e in events if e["event"] == "pretend_exec"]
    assert shown["argv"] == ["echo", "connecting", "with", "***"]
    assert "hunter2" not in repr(events)


async def test_blocks_in_requirements_name_each_unmet(fleet: Fleet) -> None:
    fleet.record("uma", groups=["staff", "admin"], active="0")
    path = fleet.agent(
        """
        NAME     Blocks
        MNEMONIC blocks
        WORKFLOW requests
        FOREACH group IN this.groups DO
            REQUIRE group = "staff"
        END
        WHEN defined(this.active) DO
            REQUIRE this.active
        END
        """
    )
    [report] = await fleet.cycle()
    assert report.outcome is Outcome.SKIPPED
    assert report.reason == (
        f'{path}:5: REQUIRE group = "staff"; {path}:8: REQUIRE this.active'
    )


async def test_pretend_shows_every_run_command(fleet: Fleet, events: list) -> None:
    fleet.agent(
        f"""
        NAME     Show
        MNEMONIC show
        PARALLEL
            EXEC_COMMAND touch {fleet.root}/a
            EXEC_COMMAND touch {fleet.root}/b
        END
        EXEC_COMMAND false
        EXEC_COMMAND touch {fleet.root}/c
        ON_SUCCESS
            ECHO done
        END
        """
    )
    [report] = await fleet.cycle(pretend=True)
    assert report.outcome is Outcome.PRETEND
    assert report.would == "commit"
    shown = [e["argv"][-1] for e in events if e["event"] == "pretend_exec"]
    assert shown == [f"{fleet.root}/a", f"{fleet.root}/b", "false", f"{fleet.root}/c"]
    assert [e["text"] for e in events if e["event"] == "pretend_echo"] == ["done"]
    assert not any(fleet.root.glob("[abc]"))
    assert fleet.echoed == []


async def test_reconfigure_applies_to_later_cycles(fleet: Fleet) -> None:
    other = fleet.root / "other-spool"
    other.mkdir()
    (other / "vera.json").write_text("{}")
    fleet.record("walt")
    fleet.agent(
        """
        NAME     Lister
        MNEMONIC lister
        WORKFLOW requests
        ECHO ${this.id}
        """
    )
    [loaded] = fleet.load().agents.values()
    async with fleet.engine() as engine:
        await engine.run_cycle(loaded)
        text = (fleet.conf / "00-test.toml").read_text()
        (fleet.conf / "00-test.toml").write_text(
            text.replace(str(fleet.spool), str(other))
        )
        engine.reconfigure(fleet.config())
        await engine.run_cycle(loaded)
    assert fleet.echoed == ["walt", "vera"]


async def test_ignore_failure_does_not_hide_spawn_failure(fleet: Fleet) -> None:
    fleet.agent(
        """
        NAME     Ignore
        MNEMONIC ignore
        EXEC_COMMAND IGNORE_FAILURE no-such-program-here
        ECHO after
        """
    )
    [report] = await fleet.cycle()
    assert report.run is PhaseResult.FAILED
    assert fleet.echoed == []
