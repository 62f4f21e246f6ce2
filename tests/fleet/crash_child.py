"""Run `fleetd once` and die with SIGKILL right after the workflow's UPDATE.

The UPDATE runs inside the lock's resolution transaction, so the process
dies with that transaction open: PostgreSQL must roll back the UPDATE with
it. Usage: crash_child.py CONF_DIR
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from fleetd.cli import main
from fleetd.workflows.postgresql import PostgresqlWorkflow

update = PostgresqlWorkflow.commit_in_transaction


async def update_then_die(
    self: PostgresqlWorkflow, connection: Any, *args: Any
) -> None:
    await update(self, connection, *args)
    # Nothing of the transaction is committed yet.
    os.kill(os.getpid(), signal.SIGKILL)


PostgresqlWorkflow.commit_in_transaction = update_then_die  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main(["--conf-dir", sys.argv[1], "-q", "once", "--json"]))
