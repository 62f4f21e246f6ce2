"""`fleetd history RECORD`: every resolution of a record, newest first."""

from __future__ import annotations

import argparse
import json
from typing import Any

from fleetd.cli.common import (
    CommandFailed,
    error,
    format_table,
    load,
    open_store_to_read,
    print_output,
    run_async,
    timestamp,
)
from fleetd.cli.exits import EXIT_OK


def main(args: argparse.Namespace) -> int:
    try:
        config = load(args, base_level="warning")
    except CommandFailed as stop:
        return stop.status
    entries = run_async(config, read_history, config.daemon.state, args.record,
                        args.workflow)  # fmt: skip
    if args.json:
        lines = [json.dumps(entry, ensure_ascii=False) + "\n" for entry in entries]
        return print_output("".join(lines))
    if entries:
        rows = [
            [e["at"], e["agent"], e["workflow"], e["resolution"], e["owner"],
             e["run_id"], e["reason"]]
            for e in entries
        ]  # fmt: skip
        header = ["AT", "AGENT", "WORKFLOW", "RESOLUTION", "OWNER", "RUN", "REASON"]
        title = args.record or "Null workflow runs (no record id)"
        return print_output(f"{title}\n{format_table(header, rows)}\n")
    error(f"fleetd: no resolution of record {args.record!r} in the state store")

    return EXIT_OK


async def read_history(
    url: str, record: str, workflow: str | None
) -> list[dict[str, Any]]:
    store = await open_store_to_read(url)
    try:
        entries = await store.history(record, workflow)
    finally:
        await store.close()

    return [
        {
            "agent": entry.agent,
            "mnemonic": entry.key.mnemonic,
            "workflow": entry.key.workflow,
            "record": entry.key.record or None,
            "resolution": entry.resolution.value,
            "reason": entry.reason,
            "run_id": entry.run_id,
            "owner": entry.owner,
            "started": timestamp(entry.started),
            "at": timestamp(entry.at),
        }
        for entry in entries
    ]
