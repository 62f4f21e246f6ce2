"""Variables set inside blocks across phases, and command lines split as sh does."""

from __future__ import annotations

import pytest

from fleetd.runtime import PhaseResult
from tests.runtime.conftest import Fleet


async def test_prerequisite_set_inside_when_reaches_run(fleet: Fleet) -> None:
    # The LEXICAL SCOPING BUG section of FleetConf::Agent::Context (FleetConf
    # 0.01_016) shows this agent, which printed "foo = 2" where "foo = 1" is
    # meant. A PREREQUISITE_SET value lasts through every later phase.
    fleet.agent(
        """
        NAME     Scoped
        MNEMONIC scoped
        WHEN TRUE DO
            PREREQUISITE_SET foo = 1
            SET foo //= 2
            ECHO foo = ${foo}
        END
        """
    )
    [report] = await fleet.cycle()
    assert report.run is PhaseResult.SUCCEEDED
    assert fleet.echoed == ["foo = 1"]


async def test_phase_sets_inside_when_reach_run(fleet: Fleet) -> None:
    fleet.record("hank")
    fleet.agent(
        """
        NAME     Scoped
        MNEMONIC scoped
        WORKFLOW requests
        WHEN TRUE DO
            REQUIRE_SET home = "/srv/home/${this.id}"
            CHECK_SET shell = "/bin/sh"
            ECHO home=${home}
            ECHO shell=${shell}
        END
        """
    )
    [report] = await fleet.cycle()
    assert report.run is PhaseResult.SUCCEEDED
    assert "home=/srv/home/hank" in fleet.echoed
    assert "shell=/bin/sh" in fleet.echoed


async def test_form_feed_stays_inside_word(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A POSIX shell splits words at blanks and newlines only (IFS), so
    # `touch a<FF>b` creates one file whose name contains the form feed.
    target = fleet.root / "made"
    target.mkdir()
    # A wrong split creates the extra words relative to the working
    # directory, so that directory is the test's own folder.
    monkeypatch.chdir(target)
    fleet.agent(
        f"""
        NAME     Words
        MNEMONIC words
        EXEC_COMMAND touch {target}/a\fb {target}/c\vd
        """
    )
    [report] = await fleet.cycle()
    assert report.run is PhaseResult.SUCCEEDED
    assert sorted(path.name for path in target.iterdir()) == ["a\fb", "c\vd"]


async def test_cleanup_option_after_run_command(fleet: Fleet) -> None:
    # The OPTION and EXEC in ON_SUCCESS follow a COMMAND earlier in the file,
    # as the load check requires. Such a program is either rejected at load
    # or built and run, but it must not pass load and then fail in Cleanup.
    path = fleet.agent(
        f"""
        NAME     Build
        MNEMONIC build
        COMMAND touch {fleet.root}/from-run
        ON_SUCCESS
            OPTION {fleet.root}/from-cleanup
            EXEC
        END
        """
    )
    agents = fleet.load()
    if agents.errors:
        assert all(error.startswith(f"{path}:") for error in agents.errors)
        return
    [report] = await fleet.cycle()
    assert report.cleanup is PhaseResult.SUCCEEDED
    assert (fleet.root / "from-cleanup").exists()
