"""Conf dirs and agent files as operators name them: symlinks, repeats, modes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.cli.support import Site, fleetd_command

SETTINGS = """\
[daemon]
state = "../state.db"
safe_path = ["../bin", "/usr/bin", "/bin"]

[globals]
data_dir = "../data"

[workflows.requests]
kind = "spool"
path = "../spool"
"""

AGENT = """\
NAME     Stamp
MNEMONIC stamp
WORKFLOW requests

ECHO data ${data_dir}
EXEC_COMMAND site-tool
SET this.status = "done"
CLEANUP
    ECHO cleaned ${this.id}
END
"""


def test_symlinked_conf_dir_resolves_against_target(tmp_path: Path) -> None:
    # /site/conf.d is the real folder, and /links/conf.d is a symlink to it.
    # The kernel resolves "../spool" in /site/conf.d to /site/spool, so the
    # TOML file's relative paths must mean the same through the symlink.
    site = tmp_path / "site"
    conf_dir = site / "conf.d"
    for folder in (conf_dir, site / "spool", site / "bin", site / "data"):
        folder.mkdir(parents=True)
    (conf_dir / "00-site.toml").write_text(SETTINGS)
    (conf_dir / "stamp.agent").write_text(AGENT)
    tool = site / "bin/site-tool"
    tool.write_text("#!/bin/sh\nexit 0\n")
    tool.chmod(0o755)
    (site / "spool/r1.json").write_text('{"status": "new"}')
    links = tmp_path / "links"
    links.mkdir()
    (links / "conf.d").symlink_to(conf_dir)

    result = subprocess.run(
        [*fleetd_command(), "--conf-dir", str(links / "conf.d"), "once", "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )

    assert result.returncode == 0, result.stderr
    assert f"data {site / 'data'}" in result.stdout.splitlines()
    reports = [json.loads(line) for line in result.stdout.splitlines() if "{" in line]
    assert [(line["record"], line["outcome"]) for line in reports] == [
        ("r1", "committed")
    ]
    assert json.loads((site / "spool/r1.json").read_text())["status"] == "done"
    assert (site / "state.db").exists()
    assert not (tmp_path / "state.db").exists()


def test_same_agent_file_twice_runs_once(site: Site, reports) -> None:
    agent = site.root / "host check.agent"
    agent.write_text("NAME Host\nMNEMONIC host\nECHO host-ran\n")
    agent.chmod(0o644)
    result = site.run("once", "--json", "-f", str(agent), "-f", "host check.agent")
    assert result.returncode == 0, result.stderr
    assert "duplicate agent name" not in result.stderr
    assert result.stdout.splitlines().count("host-ran") == 1
    assert [line["outcome"] for line in reports(result.stdout)] == ["committed"]


def run_without_file_mode_bypass(
    site: Site, *args: str
) -> subprocess.CompletedProcess[str]:
    """Run fleetd as root without the capabilities that bypass file modes.

    Without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, root obeys file modes
    like any other user, so a folder of mode 000 is unreadable to it.
    """
    return subprocess.run(
        [
            "setpriv",
            "--bounding-set",
            "-dac_override,-dac_read_search",
            "--",
            *fleetd_command(),
            "--conf-dir",
            str(site.conf_dir),
            *args,
            "--log-target",
            "console",
        ],
        cwd=site.root,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )


needs_setpriv = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to drop the capability to bypass file modes",
)


@needs_setpriv
@pytest.mark.parametrize("command", ["check", "once"])
def test_unreadable_conf_dir_exits_2(site: Site, command: str) -> None:
    site.write("host.agent", "NAME Host\nMNEMONIC host\nECHO host-ran\n")
    site.conf_dir.chmod(0o000)
    try:
        result = run_without_file_mode_bypass(site, command)
    finally:
        site.conf_dir.chmod(0o755)

    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert str(site.conf_dir) in result.stderr
    assert "Permission denied" in result.stderr
    assert "host-ran" not in result.stdout


@needs_setpriv
@pytest.mark.parametrize("command", ["check", "once"])
def test_unreachable_toml_symlink_exits_2(site: Site, command: str) -> None:
    # A drop-in that links to a file in a folder fleetd may not enter.
    private = site.root / "private"
    private.mkdir()
    (private / "site.toml").write_text('[globals]\nsite = "main"\n')
    link = site.conf_dir / "10-site.toml"
    link.symlink_to(private / "site.toml")
    site.write("host.agent", "NAME Host\nMNEMONIC host\nECHO host-ran\n")
    private.chmod(0o000)
    try:
        result = run_without_file_mode_bypass(site, command)
    finally:
        private.chmod(0o755)

    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert str(link) in result.stderr
    assert "Permission denied" in result.stderr


def test_empty_conf_dir_option_exits_2(site: Site) -> None:
    # `--conf-dir "$CONF_DIR"` with the variable unset passes an empty value.
    # That names no folder, so it must not load the working directory.
    stray = site.root / "stray.agent"
    stray.write_text("NAME Stray\nMNEMONIC stray\nECHO stray-ran\n")
    stray.chmod(0o644)

    result = subprocess.run(
        [*fleetd_command(), "--conf-dir", "", "once"],
        cwd=site.root,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )

    assert result.returncode == 2, result.stderr
    assert "stray-ran" not in result.stdout
