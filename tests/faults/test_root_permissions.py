"""As root, code and agents that other users could change are never run.

The conf dir check rejects a group- or world-writable TOML or agent file,
as sshd's StrictModes does. A plugin is Python that runs inside the root
daemon and an agent named with `once -f` runs its programs as root, so
both need the same check.
"""

from __future__ import annotations

import os

import pytest

from tests.faults.support import Site

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

PLUGIN = """from pathlib import Path

from fleetd.lang import FunctionSpec


def touch_marker():
    Path("@ROOT@/markers/plugin.ran").touch()
    return 1


FLEETD_FUNCTIONS = [FunctionSpec("touch_marker", 0, 0, touch_marker)]
"""

PLUGIN_AGENT = """NAME     Plugged
MNEMONIC plugged
SET done = touch_marker()
CLEANUP
    LOG info done
END
"""

LOOSE_AGENT = """NAME     Loose
MNEMONIC loose
EXEC_COMMAND touch @ROOT@/markers/loose.ran
CLEANUP
    LOG info done
END
"""


def write_plugin(site: Site, folder_mode: int, file_mode: int) -> None:
    folder = site.root / "plugins"
    folder.mkdir()
    folder.chmod(folder_mode)
    plugin = folder / "marker.py"
    plugin.write_text(PLUGIN.replace("@ROOT@", str(site.root)))
    plugin.chmod(file_mode)
    site.write("10-plugins.toml", '[daemon]\nplugin_dirs = ["../plugins"]\n')
    site.write("plugged.agent", PLUGIN_AGENT)


def test_world_writable_plugin_rejected(site: Site) -> None:
    write_plugin(site, folder_mode=0o755, file_mode=0o666)

    result = site.run("once")

    assert not (site.markers / "plugin.ran").exists()
    assert result.returncode == 2
    assert "marker.py" in result.stderr


def test_world_writable_plugin_dir_rejected(site: Site) -> None:
    write_plugin(site, folder_mode=0o777, file_mode=0o644)

    result = site.run("once")

    assert not (site.markers / "plugin.ran").exists()
    assert result.returncode == 2
    assert "plugins" in result.stderr


def test_world_writable_agent_file_rejected(site: Site) -> None:
    agent = site.root / "loose.agent"
    agent.write_text(LOOSE_AGENT.replace("@ROOT@", str(site.root)))
    agent.chmod(0o666)

    result = site.run("once", "-f", str(agent))

    assert not (site.markers / "loose.ran").exists()
    assert result.returncode == 2
    assert "group- or world-writable" in result.stderr
