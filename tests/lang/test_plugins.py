"""Plugins add functions and commands from plugin_dirs and entry points."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from fleetd.lang import (
    AgentError,
    CallCommand,
    PluginError,
    Registry,
    Scope,
    evaluate,
    load_plugins,
    parse_agent,
)
from fleetd.lang.registry import _may_declare_entry_points

PLUGIN = """
from fleetd.lang import CommandSpec, FunctionSpec

def shout(text):
    return str(text).upper() + "!"

async def notify(ctx, channel, message=None):
    return 1

FLEETD_FUNCTIONS = [FunctionSpec("shout", 1, 1, shout)]
FLEETD_COMMANDS = [CommandSpec("notify", 1, 2, notify, side_effect_free=True)]
"""


def test_plugin_dir_adds_function_and_command(tmp_path: Path) -> None:
    (tmp_path / "site.py").write_text(PLUGIN)
    registry = load_plugins([str(tmp_path)], entry_points=False)
    assert registry.function("lc") is not None  # built-ins stay
    agent = parse_agent(
        'NAME p\nMNEMONIC p\nSET x = shout("hi")\nCALL notify("ops")\n',
        "p.agent",
        registry=registry,
    )
    assign, call = agent.commands
    assert evaluate(assign.expr, Scope(), registry) == "HI!"
    assert isinstance(call, CallCommand)
    command = registry.command("notify")
    assert command is not None and command.side_effect_free


def test_unknown_plugin_names_fail_without_plugin() -> None:
    with pytest.raises(AgentError) as caught:
        parse_agent(
            'NAME p\nMNEMONIC p\nSET x = shout("hi")\nCALL notify("ops")\n', "p.agent"
        )
    assert [str(d) for d in caught.value.diagnostics] == [
        "p.agent:3:9: unknown function 'shout'",
        "p.agent:4:6: unknown command 'notify' in CALL",
    ]


def test_broken_plugin_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("raise RuntimeError('nope')\n")
    with pytest.raises(PluginError) as caught:
        load_plugins([str(tmp_path)], entry_points=False)
    assert "broken.py: import failed" in str(caught.value)


def test_plugin_without_specs_is_reported(tmp_path: Path) -> None:
    (tmp_path / "empty.py").write_text("X = 1\n")
    with pytest.raises(PluginError) as caught:
        load_plugins([str(tmp_path)], entry_points=False)
    assert "defines neither FLEETD_FUNCTIONS nor FLEETD_COMMANDS" in str(caught.value)


def test_missing_plugin_dir_is_reported(tmp_path: Path) -> None:
    with pytest.raises(PluginError) as caught:
        load_plugins([str(tmp_path / "nope")], entry_points=False)
    assert "plugin directory not found" in str(caught.value)


def test_entry_points_are_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "fleetd_site_plugin.py"
    package.write_text(PLUGIN)
    dist = tmp_path / "fleetd_site_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: fleetd-site-plugin\nVersion: 1.0\n"
    )
    (dist / "entry_points.txt").write_text(
        "[fleetd.functions]\nsite = fleetd_site_plugin\n"
        "[fleetd.commands]\nnotify = fleetd_site_plugin:FLEETD_COMMANDS\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = load_plugins([], entry_points=True)
    assert registry.function("shout") is not None
    assert registry.command("notify") is not None
    sys.modules.pop("fleetd_site_plugin", None)


def write_distribution(folder: Path, name: str, entry_points: str) -> None:
    dist = folder / f"{name}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n"
    )
    (dist / "entry_points.txt").write_text(entry_points)


@pytest.mark.parametrize("group", ["fleetd.functions", "fleetd.commands"])
def test_entry_point_scan_finds_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, group: str
) -> None:
    write_distribution(tmp_path, "other", "[console_scripts]\nother = other:main\n")
    write_distribution(tmp_path, "site_plugin", f"[{group}]\nsite = site_plugin\n")
    monkeypatch.setattr(sys, "path", [str(tmp_path)])
    assert _may_declare_entry_points()


def test_entry_point_scan_skips_other_groups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_distribution(tmp_path, "other", "[console_scripts]\nother = other:main\n")
    (tmp_path / "legacy.egg-info").write_text("Name: legacy\n")
    monkeypatch.setattr(sys, "path", [str(tmp_path), str(tmp_path / "missing")])
    assert not _may_declare_entry_points()


def test_entry_point_scan_defers_zip_and_egg(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = tmp_path / "bundle.zip"
    archive.write_bytes(b"")
    monkeypatch.setattr(sys, "path", [str(archive)])
    assert _may_declare_entry_points()
    (tmp_path / "tool-1.0-py3.11.egg").mkdir()
    monkeypatch.setattr(sys, "path", [str(tmp_path)])
    assert _may_declare_entry_points()


def test_entry_point_scan_defers_other_finders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class DistributionFinder:
        def find_spec(self, *args: object) -> None:
            return None

        def find_distributions(self, *args: object) -> list[object]:
            return []

    monkeypatch.setattr(sys, "path", [str(tmp_path)])
    assert not _may_declare_entry_points()
    monkeypatch.setattr(sys, "meta_path", [*sys.meta_path, DistributionFinder()])
    assert _may_declare_entry_points()


def test_default_registry_has_no_commands() -> None:
    assert Registry.default().commands == {}
