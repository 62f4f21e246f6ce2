"""`fleetd once` imports Lark, regex and the rest only when its agents need them.

Each case runs `fleetd once` in a new interpreter and lists `sys.modules`
after the command returns, so a module-level import added anywhere on the
way (CLI, configuration, logging, parser, runtime) fails here. The same
run lists the dataclasses that fleetd's imported modules define.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import fleetd

# Runs the command in-process, then writes the names of the imported modules
# and of the dataclasses defined in fleetd's modules.
CHILD = """
import dataclasses, json, sys
from fleetd.cli import main
status = main(sys.argv[2:])
defined = sorted(
    f"{name}.{value.__name__}"
    for name, module in list(sys.modules.items())
    if name == "fleetd" or name.startswith("fleetd.")
    for value in vars(module).values()
    if isinstance(value, type)
    and dataclasses.is_dataclass(value)
    and value.__module__ == name
)
data = {"status": status, "modules": sorted(sys.modules), "dataclasses": defined}
with open(sys.argv[1], "w") as file:
    json.dump(data, file)
"""
# Modules that `once` must not import for an agent without patterns, long
# lines or errors, logging to a pipe, when no installed package declares a
# fleetd entry point.
LAZY_MODULES = ("lark", "regex", "importlib.metadata", "ctypes", "logging_journald")
LONG_CONDITION = "REQUIRE " + " AND ".join(["1 = 1"] * 40) + "\n"
# A dataclass compiles its generated methods when its class is defined, about
# 1 ms per class in a start of `once` (timed around dataclasses._process_class
# on a loaded 2-core AMD EPYC), so fleetd's own records are msgspec Structs.
# Only the plugin API, whose classes plugins construct, keeps dataclasses.
PLUGIN_API_DATACLASSES = [
    "fleetd.lang.registry.CommandSpec",
    "fleetd.lang.registry.FunctionSpec",
]


def run_once(tmp_path: Path, agent: str) -> dict[str, Any]:
    """Run `fleetd once` on one agent; return the status, modules and dataclasses."""
    conf = tmp_path / "conf.d"
    conf.mkdir()
    (conf / "fleetd.toml").write_text(
        f'[daemon]\nstate = "sqlite:///{tmp_path}/state.db"\nlog_level = "warning"\n'
    )
    (conf / "one.agent").write_text(agent)
    output = tmp_path / "modules.json"
    # The child imports the fleetd that this test imported, whatever the
    # current folder and an editable install would give it.
    source = str(Path(fleetd.__file__).parents[1])
    path = os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(output), "--conf-dir", str(conf), "once"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert output.exists(), result.stderr

    return json.loads(output.read_text())


def imported_modules(tmp_path: Path, agent: str) -> tuple[int, set[str]]:
    """Run `fleetd once` on a conf dir with one agent; return status and modules."""
    data = run_once(tmp_path, agent)

    return data["status"], set(data["modules"])


def test_empty_agent_skips_lazy_modules(tmp_path: Path) -> None:
    status, modules = imported_modules(tmp_path, "NAME Empty\nMNEMONIC empty\n")
    assert status == 0
    for name in LAZY_MODULES:
        assert name not in modules, f"{name} imported by once on an empty agent"


def test_empty_agent_defines_plugin_dataclasses_only(tmp_path: Path) -> None:
    data = run_once(tmp_path, "NAME Empty\nMNEMONIC empty\n")
    assert data["status"] == 0
    assert data["dataclasses"] == PLUGIN_API_DATACLASSES


def test_pattern_imports_regex_only(tmp_path: Path) -> None:
    agent = 'NAME Match\nMNEMONIC match\nREQUIRE "abc" MATCHES /b/\n'
    status, modules = imported_modules(tmp_path, agent)
    assert status == 0
    assert "regex" in modules
    assert "lark" not in modules


@pytest.mark.parametrize(
    ("line", "status"),
    [(LONG_CONDITION, 0), ("REQUIRE (1 = \n", 2)],
    ids=["long line", "syntax error"],
)
def test_lark_imported_when_needed(tmp_path: Path, line: str, status: int) -> None:
    agent = f"NAME Lark\nMNEMONIC lark\n{line}"
    result, modules = imported_modules(tmp_path, agent)
    assert result == status
    assert "lark" in modules
