"""Measure the start of `fleetd once` on one empty agent.

The script measures wall time and CPU time (user + system, from the
child's rusage) of `fleetd --conf-dir DIR once`. The conf dir holds one
agent with only a NAME and a MNEMONIC (the Null workflow, one record) and
a SQLite state store in the same temporary folder. The baseline, run alternately with it,
is the interpreter alone (`python -c pass`) with the same `site` setup, so
the ratio shows what fleetd adds to starting Python. A second baseline
imports the libraries that `once` on this agent cannot start without
(anyio with its asyncio backend, structlog, msgspec, tomllib, sqlite3).
Lark, regex and importlib.metadata are not among them, because `once`
imports them only when an agent's lines or an installed plugin need them
(tests/cli/test_startup_imports.py).

The first run of each kind is a warm-up that creates the state store and
the bytecode cache (in the temporary folder, through PYTHONPYCACHEPREFIX,
as an installed package has its bytecode) and is not counted. The first
fleetd run is reported apart, as the cost of a start with empty caches.
This agent's lines need no Lark, so no run builds or reads the grammar
tables.

Usage: python -m scripts.bench.startup [--runs N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from scripts.bench.common import (
    format_machine,
    machine,
    print_ratios,
    print_rows,
    ratio_of,
    summarize,
)

AGENT = "NAME Empty\nMNEMONIC empty\n"
TARGET_MS = 250
# The libraries `once` cannot start without: a second baseline, so the
# ratio to it shows what fleetd's own modules and work add.
LIBRARIES = (
    "import anyio, structlog, msgspec, tomllib, sqlite3;"
    " import anyio._backends._asyncio"
)


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Run `command`; return its wall and CPU time in seconds."""
    started = time.perf_counter()
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    errors = process.stderr.read().decode() if process.stderr else ""
    if process.stderr:
        process.stderr.close()
    if process.returncode != 0:
        raise RuntimeError(f"{command} exited {process.returncode}: {errors}")

    return wall, usage.ru_utime + usage.ru_stime


def write_conf(folder: Path) -> Path:
    conf = folder / "conf.d"
    conf.mkdir()
    (conf / "empty.agent").write_text(AGENT)
    (conf / "fleetd.toml").write_text(
        f'[daemon]\nstate = "sqlite:///{folder}/state.db"\nlog_level = "warning"\n'
    )

    return conf


def fleetd_command(conf: Path) -> list[str]:
    script = Path(sys.executable).with_name("fleetd")
    program = [str(script)] if script.exists() else [sys.executable, "-m", "fleetd"]

    return [*program, "--conf-dir", str(conf), "once"]


def measure(runs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="fleetd-bench-") as name:
        folder = Path(name)
        conf = write_conf(folder)
        # Bytecode is cached as in an installed package, but outside the
        # source tree, even when PYTHONDONTWRITEBYTECODE is set here.
        env = {
            **os.environ,
            "XDG_CACHE_HOME": str(folder / "cache"),
            "PYTHONPYCACHEPREFIX": str(folder / "pycache"),
        }
        env.pop("CACHE_DIRECTORY", None)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        fleetd = fleetd_command(conf)
        floor = [sys.executable, "-c", "pass"]
        libraries = [sys.executable, "-c", LIBRARIES]

        cold_wall, cold_cpu = timed(fleetd, env)
        timed(floor, env)
        timed(libraries, env)
        samples: dict[str, list[float]] = {}
        commands = (("fleetd", fleetd), ("python", floor), ("libraries", libraries))
        for _ in range(runs):
            for label, command in commands:
                wall, cpu = timed(command, env)
                samples.setdefault(f"{label}_wall", []).append(wall * 1000)
                samples.setdefault(f"{label}_cpu", []).append(cpu * 1000)

    return {
        "machine": machine(),
        "runs": runs,
        "command": " ".join(fleetd[-4:]),
        "cold_cache_ms": {"wall": cold_wall * 1000, "cpu": cold_cpu * 1000},
        "results": {name: summarize(values) for name, values in samples.items()},
        "ratios": {
            "wall": ratio_of(samples["fleetd_wall"], samples["python_wall"]),
            "cpu": ratio_of(samples["fleetd_cpu"], samples["python_cpu"]),
            "libraries_wall": ratio_of(
                samples["fleetd_wall"], samples["libraries_wall"]
            ),
            "libraries_cpu": ratio_of(samples["fleetd_cpu"], samples["libraries_cpu"]),
        },
        "target_ms": TARGET_MS,
    }


def print_report(data: dict[str, Any]) -> None:
    print(format_machine(data["machine"]))
    results = data["results"]
    print_rows(
        f"startup: {data['command']} on one empty agent (ms)",
        [
            ("fleetd once, wall", results["fleetd_wall"], "ms"),
            ("fleetd once, CPU (user + system)", results["fleetd_cpu"], "ms"),
            ("baseline python -c pass, wall", results["python_wall"], "ms"),
            ("baseline python -c pass, CPU", results["python_cpu"], "ms"),
            ("baseline: import the libraries, wall", results["libraries_wall"], "ms"),
            ("baseline: import the libraries, CPU", results["libraries_cpu"], "ms"),
        ],
    )
    print_ratios(
        [
            ("fleetd / python, wall", data["ratios"]["wall"], ""),
            ("fleetd / python, CPU", data["ratios"]["cpu"], ""),
            ("fleetd / libraries, wall", data["ratios"]["libraries_wall"], ""),
            ("fleetd / libraries, CPU", data["ratios"]["libraries_cpu"], ""),
        ]
    )
    cold = data["cold_cache_ms"]
    print(
        f"  first start, empty bytecode cache: {cold['wall']:.0f} ms wall,"
        f" {cold['cpu']:.0f} ms CPU"
    )
    median = results["fleetd_wall"]["median"]
    verdict = "met" if median < data["target_ms"] else "NOT met"
    print(f"  target: median wall < {data['target_ms']} ms: {verdict}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="runs of each command")
    parser.add_argument("--json", action="store_true", help="print JSON, not a table")
    options = parser.parse_args()
    data = measure(options.runs)
    if options.json:
        print(json.dumps(data, indent=2))
    else:
        print_report(data)

    return 0


if __name__ == "__main__":
    sys.exit(main())
