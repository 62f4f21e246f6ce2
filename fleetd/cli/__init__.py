"""The `fleetd` command line.

Only argparse is imported at start; each subcommand imports what it needs
when it runs, so `fleetd --version` and `fleetd once` start fast.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Sequence

from fleetd import deferred_signals
from fleetd.cli.common import CommandFailed, error
from fleetd.cli.exits import EXIT_USAGE
from fleetd.cli.parser import build_parser
from fleetd.streams import reopen_closed

__all__ = ["entry", "main"]


def entry() -> None:
    """Run the `fleetd` command and exit with its status."""
    reopen_closed()
    raise SystemExit(main(exiting=True))


def main(argv: Sequence[str] | None = None, *, exiting: bool = False) -> int:
    """Run the command line `argv` (default: `sys.argv[1:]`); return the exit status.

    With `exiting`, the process exits right after. The signals that `run`
    and `once` stop on are then ignored from the moment the command returns,
    because their default action would end the process with 128 + the
    signal number on its way out.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        error(parser.format_usage().rstrip("\n"))
        error("fleetd: error: a command is required")
        return EXIT_USAGE
    args.verbosity = (args.verbose_main or 0) + (args.verbose_sub or 0)
    args.verbosity -= (args.quiet_main or 0) + (args.quiet_sub or 0)
    if args.conf_dir_sub is not None:
        args.conf_dir = args.conf_dir_sub
    if args.log_target_sub is not None:
        args.log_target = args.log_target_sub
    if not args.conf_dir:
        # An unset shell variable (`--conf-dir "$CONF_DIR"`) names no folder;
        # the working directory would load whatever agents it holds.
        error(parser.format_usage().rstrip("\n"))
        error("fleetd: error: --conf-dir needs a folder, got an empty value")
        return EXIT_USAGE

    # Until the event loop receives them, SIGTERM, SIGINT and SIGHUP only
    # get recorded, so a stop or reload during startup neither kills the
    # process nor is lost. SIGHUP reloads the daemon and stops `once`.
    deferred: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if args.command in ("run", "once"):
        deferred = deferred_signals.deferred(
            (signal.SIGTERM, signal.SIGINT, signal.SIGHUP), restore=not exiting
        )
    try:
        with deferred:
            return int(args.handler(args))
    except CommandFailed as stop:
        return stop.status
    except KeyboardInterrupt:
        return 130
