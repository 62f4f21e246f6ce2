"""`fleetd check` output when standard error is a pipe, as in CI jobs."""

from __future__ import annotations

import re

from tests.cli.support import Site


def test_check_prints_plain_error_lines(site: Site) -> None:
    # check prints its findings as a compiler does, whatever the log target,
    # so `fleetd check 2>&1 | grep` and CI logs show file:line:col lines.
    agent = site.write("bad.agent", "NAME Bad\nMNEMONIC bad\nNOSUCH thing\n")
    settings = site.write("10-bad.toml", "[daemon]\nnope = 1\n")

    settings_result = site.run("check")
    settings.unlink()
    agent_result = site.run("check")

    assert settings_result.returncode == 2
    settings_lines = settings_result.stderr.splitlines()
    expected = f"{settings}:2:1: daemon.nope: unknown key"
    assert any(line.startswith(expected) for line in settings_lines), settings_lines
    assert agent_result.returncode == 2
    pattern = rf"^{re.escape(str(agent))}:3:\d+: "
    assert re.search(pattern, agent_result.stderr, re.MULTILINE), agent_result.stderr
