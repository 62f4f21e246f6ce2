"""`fleetd run`: the daemon in the foreground."""

from __future__ import annotations

import argparse
from pathlib import Path


def main(args: argparse.Namespace) -> int:
    from fleetd.daemon import run_daemon

    return run_daemon(
        Path(args.conf_dir), log_target=args.log_target, verbosity=args.verbosity
    )
