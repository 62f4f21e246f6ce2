"""Argument parsing for every fleetd command.

`--conf-dir`, `-v`, `-q` and `--log-target` are accepted before and after
the subcommand. argparse lets a subparser overwrite what the main parser
stored under the same name, so each place stores under its own name and
`main` adds them up.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import fleetd

LOG_TARGETS = ("auto", "console", "json", "journal")


def _common_options(parser: argparse.ArgumentParser, suffix: str) -> None:
    parser.add_argument(
        "--conf-dir",
        dest="conf_dir" if suffix == "main" else "conf_dir_sub",
        metavar="DIR",
        default=(os.environ.get("FLEETD_CONF_DIR") or "/etc/fleetd/conf.d")
        if suffix == "main"
        else None,
        help="drop-in directory of *.toml settings and *.agent files "
        "(default: $FLEETD_CONF_DIR, else /etc/fleetd/conf.d)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        dest=f"verbose_{suffix}",
        action="count",
        default=0,
        help="log one syslog level more, e.g. info to debug (repeatable); run "
        "and once start from daemon.log_level, other commands from warning",
    )
    parser.add_argument(
        "-q",
        "--quiet",
        dest=f"quiet_{suffix}",
        action="count",
        default=0,
        help="log one syslog level less, e.g. info to notice (repeatable)",
    )
    parser.add_argument(
        "--log-target",
        dest="log_target" if suffix == "main" else "log_target_sub",
        choices=LOG_TARGETS,
        default="auto" if suffix == "main" else None,
        help="where logs go: auto (the journal under systemd, readable lines on "
        "a terminal, else JSON lines), console, json or journal; default auto",
    )


def _handler(name: str) -> Any:
    """Return a function that imports the command module `name` when called."""

    def run(args: argparse.Namespace) -> int:
        import importlib

        module = importlib.import_module(f"fleetd.cli.{name}")
        return module.main(args)

    return run


def build_parser() -> argparse.ArgumentParser:
    """Build the parser of `fleetd` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="fleetd",
        description="Run FleetConf agents over the records of their workflows.",
    )
    parser.add_argument(
        "--version", action="version", version=f"fleetd {fleetd.__version__}"
    )
    _common_options(parser, "main")
    parser.set_defaults(command=None)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    def add(name: str, module: str, text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=text, description=text)
        _common_options(sub, "sub")
        sub.set_defaults(command=name, handler=_handler(module))
        return sub

    add("run", "run", "Run the daemon in the foreground until SIGTERM or SIGINT.")

    once = add("once", "once", "Run one cycle of each selected agent, then exit.")
    once.add_argument(
        "-a",
        "--agent",
        dest="agents",
        metavar="NAME",
        action="append",
        default=[],
        help="run the agent with this NAME (repeatable; default: every "
        "scheduled agent except those with SCHEDULE manual)",
    )
    once.add_argument(
        "-f",
        "--file",
        dest="files",
        metavar="FILE",
        action="append",
        default=[],
        help="run the agent in this .agent file, inside the conf dir or not "
        "(repeatable)",
    )
    once.add_argument(
        "--pretend",
        action="store_true",
        help="evaluate Requirements and Check only: log at info level the Run "
        "and Cleanup commands without executing them, take no lock, write "
        "nothing",
    )
    once.add_argument(
        "--json",
        action="store_true",
        help="print one JSON report object per record on standard output "
        "instead of a table",
    )

    add("check", "check", "Validate the conf dir; print each error as file:line:col.")

    status = add(
        "status",
        "status",
        "Show agents, held locks, counts by outcome and records in error.",
    )
    status.add_argument(
        "--json", action="store_true", help="print one JSON object instead of tables"
    )

    retry = add(
        "retry",
        "retry",
        "Clear the error or commit mark of records for an agent's mnemonic, "
        "so the next cycle runs them again.",
    )
    retry.add_argument(
        "-a",
        "--agent",
        required=True,
        metavar="NAME",
        help="the agent whose mnemonic's marks are cleared",
    )
    retry.add_argument("records", nargs="+", metavar="RECORD", help="record id")

    history = add(
        "history", "history", "Show every resolution of a record, newest first."
    )
    history.add_argument(
        "record",
        metavar="RECORD",
        help="record id; '' (the empty string) for the runs of Null workflow agents",
    )
    history.add_argument(
        "-w",
        "--workflow",
        metavar="NAME",
        help="only resolutions in this workflow (default: every workflow)",
    )
    history.add_argument(
        "--json", action="store_true", help="print one JSON object per resolution"
    )

    database = add("db", "db", "Manage the state store.")
    database.add_argument(
        "action",
        choices=("upgrade",),
        help="upgrade: create the state store's schema or migrate it to this "
        "version of fleetd",
    )

    return parser
