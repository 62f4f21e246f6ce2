"""`fleetd db upgrade`: create or migrate the state store's schema."""

from __future__ import annotations

import argparse

from fleetd.cli.common import CommandFailed, error, load, run_async
from fleetd.cli.exits import EXIT_FAILURE, EXIT_OK


def main(args: argparse.Namespace) -> int:
    from fleetd.config import redact_url
    from fleetd.locks import SchemaError, upgrade

    try:
        config = load(args, base_level="warning")
    except CommandFailed as stop:
        return stop.status
    url = config.daemon.state
    try:
        version = run_async(config, upgrade, url)
    except (SchemaError, OSError) as failure:
        error(f"fleetd: cannot upgrade the state store {redact_url(url)}: {failure}")
        return EXIT_FAILURE
    error(f"state store {redact_url(url)} is at schema version {version}")

    return EXIT_OK
