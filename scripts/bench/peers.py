"""Compare the cost of one command in fleetd with Ansible and FleetConf.

The marginal cost of one command: the wall time of a run with many
`/bin/true` commands, minus that of the same run with fewer, divided by
the difference in their count. Start-up and fact gathering cancel out.

- fleetd: `fleetd once` on one agent (Null workflow, one record) with
  `--commands` lines of `EXEC_COMMAND true`, against the same agent with
  none.
- baseline: the same number of `/bin/true` runs from a bare Python loop
  (`subprocess.run` with captured output), minus an empty loop: the cost
  of spawning alone on this machine at this moment.
- Ansible: `ansible-playbook -c local -i localhost,` on a playbook with
  `--ansible-tasks` tasks `command: /bin/true` (gather_facts off), against
  the same playbook with no task. ansible-core comes from PyPI into a
  separate venv that this script creates under /tmp (kept for later runs).
- FleetConf 0.01_016 (Perl), with `--fleetconf DIR` or FLEETCONF_HOME:
  `perl DIR/bin/fleetconf --root ROOT` on one agent (WORKFLOW Null) with
  `--commands` lines of `EXEC_COMMAND true`, against the same agent with
  one such line, because FleetConf rejects an agent without commands.
  ROOT is a folder under the benchmark's temporary folder that contains
  etc/fleet.conf and the agent. FleetConf loads the plugins of
  DIR/plugins and writes no file, because the Null workflow keeps no
  state and no log file is set. Without DIR, the script
  quotes 3.4 ms per `EXEC_COMMAND true`, an earlier figure that this
  script did not measure.

Targets: one command at least 100 times cheaper than in Ansible and at
least 2 times cheaper than in FleetConf.

Usage: python -m scripts.bench.peers [--runs N] [--commands N]
       [--ansible-tasks N] [--ansible-venv DIR] [--fleetconf DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from scripts.bench.common import format_machine, machine, print_rows, summarize

# Quoted when FleetConf is not run: measured earlier, not by this script.
FLEETCONF_QUOTED_MS_PER_COMMAND = 3.4
# Perl modules that FleetConf 0.01_016 needs to start, with their Debian
# packages. Without SOAP::Lite (libsoap-lite-perl) only the RT workflow
# plugin fails to load, with a warning.
FLEETCONF_PERL_MODULES = {
    "Parse::RecDescent": "libparse-recdescent-perl",
    "Log::Dispatch": "liblog-dispatch-perl",
}
ANSIBLE_TARGET = 100
# Baseline: the same programs, one after another, from a bare Python loop.
SPAWN_FLOOR = (
    "import subprocess, sys\n"
    "for _ in range(int(sys.argv[1])):\n"
    "    subprocess.run(['/bin/true'], stdin=subprocess.DEVNULL,"
    " capture_output=True, check=True)\n"
)
FLEETCONF_TARGET = 2


def wall(command: list[str], env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(
            f"{command[:3]} exited {result.returncode}: {result.stderr[-2000:]!r}"
            f" {result.stdout[-2000:]!r}"
        )

    return elapsed


def fleetd_conf(folder: Path, commands: int) -> Path:
    conf = folder / f"conf-{commands}"
    conf.mkdir()
    (conf / "fleetd.toml").write_text(
        f'[daemon]\nstate = "sqlite:///{conf}/state.db"\nlog_level = "warning"\n'
        'safe_path = ["/usr/bin", "/bin"]\n'
    )
    lines = "EXEC_COMMAND true\n" * commands
    (conf / "peer.agent").write_text(f"NAME Peer\nMNEMONIC peer\n{lines}")

    return conf


def fleetd_command(conf: Path) -> list[str]:
    script = Path(sys.executable).with_name("fleetd")
    program = [str(script)] if script.exists() else [sys.executable, "-m", "fleetd"]

    return [*program, "--conf-dir", str(conf), "once"]


def fleetconf_check(home: Path) -> str:
    """Check that the FleetConf at `home` can run and return its version."""
    script = home / "bin" / "fleetconf"
    if not script.is_file():
        raise SystemExit(
            f"FleetConf not found: {script} is missing. Pass the folder of a"
            " FleetConf 0.01_016 release with --fleetconf or FLEETCONF_HOME."
        )
    if shutil.which("perl") is None:
        raise SystemExit("perl not found on PATH. Install perl to run FleetConf.")
    for module, package in FLEETCONF_PERL_MODULES.items():
        found = subprocess.run(
            ["perl", f"-M{module}", "-e", "1"], capture_output=True, check=False
        )
        if found.returncode != 0:
            raise SystemExit(
                f"Perl module {module} not found. Install the Debian package"
                f" {package}, which FleetConf needs."
            )
    version = subprocess.run(
        ["perl", f"-I{home / 'lib'}", "-MFleetConf", "-e", "print $FleetConf::VERSION"],
        capture_output=True,
        text=True,
        check=True,
    )

    return version.stdout.strip()


def fleetconf_root(folder: Path, home: Path, commands: int) -> Path:
    """Create a FleetConf root with one Null agent of `commands` commands."""
    root = folder / f"fleetconf-{commands}"
    (root / "etc").mkdir(parents=True)
    (root / "agents").mkdir()
    # FleetConf's own configuration format: `name [ values ]` lists.
    (root / "etc" / "fleet.conf").write_text(
        f"agent_include [\n\t{root / 'agents'}\n]\n"
        f"plugin_include [\n\t{home / 'plugins'}\n]\n"
        "safe_path [\n\t/usr/bin\n\t/bin\n]\n"
    )
    lines = "EXEC_COMMAND true\n" * commands
    (root / "agents" / "peer.agent").write_text(
        f"NAME Peer\nMNEMONIC peer\nWORKFLOW Null\n{lines}"
    )

    return root


def fleetconf_command(home: Path, root: Path) -> list[str]:
    return ["perl", str(home / "bin" / "fleetconf"), "--root", str(root)]


def fleetconf_verify(command: list[str], commands: int) -> None:
    """Run FleetConf once at notice level and check that every program ran.

    FleetConf exits 0 when a program fails, and when one agent among
    others fails to compile, so the check reads its log. It expects one
    "Program output" notice per program and no line at level error.
    """
    result = subprocess.run(
        [*command, "--verbose"], capture_output=True, text=True, check=False
    )
    log = result.stderr.splitlines()
    ran = sum("[notice] Program output:" in line for line in log)
    errors = [line for line in log if "[error]" in line]
    if result.returncode != 0 or ran != commands or errors:
        raise RuntimeError(
            f"FleetConf ran {ran} of {commands} programs, exit status"
            f" {result.returncode}, errors: {errors[:3]!r}"
        )


def ansible_venv(folder: Path) -> Path:
    """Return ansible-playbook of the venv at `folder`, creating it if needed."""
    playbook = folder / "bin" / "ansible-playbook"
    if not playbook.exists():
        print(f"installing ansible-core into {folder}", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
        subprocess.run(
            [str(folder / "bin" / "pip"), "install", "-q", "ansible-core"], check=True
        )

    return playbook


def playbook(folder: Path, tasks: int) -> Path:
    path = folder / f"playbook-{tasks}.yml"
    body = "".join(
        f"    - name: true {index}\n      command: /bin/true\n"
        for index in range(tasks)
    )
    path.write_text(
        "- hosts: localhost\n  gather_facts: false\n"
        + ("  tasks:\n" + body if tasks else "  tasks: []\n")
    )

    return path


def measure(
    runs: int, commands: int, tasks: int, venv: Path, fleetconf: Path | None
) -> dict[str, Any]:
    samples: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        samples.setdefault(name, []).append(value)

    ansible = ansible_venv(venv)
    version = subprocess.run(
        [str(ansible), "--version"], capture_output=True, text=True, check=True
    ).stdout.splitlines()[0]
    fleetconf_version = fleetconf_check(fleetconf) if fleetconf else None
    with tempfile.TemporaryDirectory(prefix="fleetd-bench-") as name:
        folder = Path(name)
        many = fleetd_command(fleetd_conf(folder, commands))
        none = fleetd_command(fleetd_conf(folder, 0))
        env = dict(os.environ, ANSIBLE_LOCALHOST_WARNING="False")
        env["ANSIBLE_LOCAL_TEMP"] = str(folder / "ansible-tmp")
        env["ANSIBLE_HOME"] = str(folder / "ansible-home")
        # Modules run on the venv's Python, not one Ansible would discover.
        interpreter = f"ansible_python_interpreter={ansible.with_name('python')}"
        inventory = ["-i", "localhost,", "-c", "local", "-e", interpreter]
        play_many = [str(ansible), *inventory, str(playbook(folder, tasks))]
        play_none = [str(ansible), *inventory, str(playbook(folder, 0))]
        # Warm-up: state store, grammar cache, Ansible's own caches.
        wall(many)
        wall(none)
        wall(play_none, env)
        if fleetconf:
            perl_many = fleetconf_command(
                fleetconf, fleetconf_root(folder, fleetconf, commands)
            )
            perl_one = fleetconf_command(
                fleetconf, fleetconf_root(folder, fleetconf, 1)
            )
            fleetconf_verify(perl_many, commands)
            fleetconf_verify(perl_one, 1)
        for _ in range(runs):
            with_commands = wall(many)
            without = wall(none)
            add("fleetd_ms_per_command", (with_commands - without) * 1000 / commands)
            add("fleetd_once_ms", without * 1000)
            floor = wall([sys.executable, "-c", SPAWN_FLOOR, str(commands)])
            empty = wall([sys.executable, "-c", SPAWN_FLOOR, "0"])
            add("floor_ms_per_command", (floor - empty) * 1000 / commands)
            if fleetconf:
                with_commands = wall(perl_many)
                one = wall(perl_one)
                add(
                    "fleetconf_ms_per_command",
                    (with_commands - one) * 1000 / (commands - 1),
                )
                add("fleetconf_one_command_ms", one * 1000)
            with_tasks = wall(play_many, env)
            without = wall(play_none, env)
            add("ansible_ms_per_command", (with_tasks - without) * 1000 / tasks)
            add("ansible_playbook_ms", without * 1000)

    fleetd = samples["fleetd_ms_per_command"]
    ansible_ms = samples["ansible_ms_per_command"]
    paired = [a / f for a, f in zip(ansible_ms, fleetd, strict=True)]
    if fleetconf:
        fleetconf_ms = samples["fleetconf_ms_per_command"]
    else:
        fleetconf_ms = [FLEETCONF_QUOTED_MS_PER_COMMAND] * len(fleetd)

    return {
        "machine": machine(),
        "runs": runs,
        "commands": commands,
        "ansible_tasks": tasks,
        "ansible_version": version,
        "fleetconf": {
            "measured": fleetconf is not None,
            "home": str(fleetconf) if fleetconf else None,
            "version": fleetconf_version,
        },
        "results": {key: summarize(values) for key, values in samples.items()},
        "ansible_over_fleetd": summarize(paired),
        "fleetconf_over_fleetd": summarize(
            [c / f for c, f in zip(fleetconf_ms, fleetd, strict=True)]
        ),
    }


def print_report(data: dict[str, Any]) -> None:
    print(format_machine(data["machine"]))
    results = data["results"]
    rows = [
        ("fleetd, per EXEC_COMMAND true", results["fleetd_ms_per_command"], "ms"),
        ("fleetd once, no command", results["fleetd_once_ms"], "ms"),
        ("baseline: Python subprocess.run loop", results["floor_ms_per_command"], "ms"),
        ("Ansible, per command task", results["ansible_ms_per_command"], "ms"),
        ("Ansible playbook, no task", results["ansible_playbook_ms"], "ms"),
    ]
    measured = data["fleetconf"]["measured"]
    if measured:
        rows += [
            (
                "FleetConf, per EXEC_COMMAND true",
                results["fleetconf_ms_per_command"],
                "ms",
            ),
            (
                "FleetConf, agent of one command",
                results["fleetconf_one_command_ms"],
                "ms",
            ),
        ]
    print_rows(
        f"cost of one /bin/true command ({data['commands']} in fleetd and"
        f" FleetConf, {data['ansible_tasks']} in Ansible)",
        rows,
    )
    print(f"  {data['ansible_version']}")
    if measured:
        print(
            f"  FleetConf {data['fleetconf']['version']} from {data['fleetconf']['home']}"
        )
    ansible = data["ansible_over_fleetd"]
    fleetconf = data["fleetconf_over_fleetd"]
    print(
        f"  Ansible / fleetd per command: median {ansible['median']:.0f}"
        f" (min {ansible['min']:.0f}, max {ansible['max']:.0f}),"
        f" target >= {ANSIBLE_TARGET}"
    )
    label = (
        "FleetConf (measured, paired)"
        if measured
        else f"FleetConf ({FLEETCONF_QUOTED_MS_PER_COMMAND} ms, quoted, not run)"
    )
    print(
        f"  {label} / fleetd per command:"
        f" median {fleetconf['median']:.1f} (min {fleetconf['min']:.1f},"
        f" max {fleetconf['max']:.1f}), target >= {FLEETCONF_TARGET}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each measurement")
    parser.add_argument(
        "--commands",
        type=int,
        default=200,
        help="EXEC_COMMAND lines in the agent of fleetd and of FleetConf (at least 2)",
    )
    parser.add_argument(
        "--ansible-tasks", type=int, default=20, help="command tasks in the playbook"
    )
    parser.add_argument(
        "--ansible-venv",
        type=Path,
        default=Path(tempfile.gettempdir()) / "fleetd-bench-ansible",
        help="venv for ansible-core, created when missing",
    )
    home = os.environ.get("FLEETCONF_HOME")
    parser.add_argument(
        "--fleetconf",
        type=Path,
        default=Path(home) if home else None,
        metavar="DIR",
        help="folder of a FleetConf 0.01_016 release (with bin/fleetconf) to run"
        " beside fleetd (default: $FLEETCONF_HOME; without it the FleetConf"
        " figure is quoted, not measured)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON, not a table")
    options = parser.parse_args()
    if options.commands < 2:
        parser.error("--commands must be at least 2")
    fleetconf = options.fleetconf.resolve() if options.fleetconf else None
    data = measure(
        options.runs,
        options.commands,
        options.ansible_tasks,
        options.ansible_venv,
        fleetconf,
    )
    if options.json:
        print(json.dumps(data, indent=2))
    else:
        print_report(data)

    return 0


if __name__ == "__main__":
    sys.exit(main())
