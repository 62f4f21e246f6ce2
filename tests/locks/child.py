"""A separate fleetd process for the lock tests: holds, commits or races.

Usage: python child.py URL MODE [ARGS...]

  hold RECORD        take the lock on RECORD, print "locked", sleep
  commit RECORD      take the lock, commit, print "committed", sleep
  update-crash RECORD  take the lock, commit with an UPDATE of table
                     accounts in the resolution transaction, and die by
                     SIGKILL after the UPDATE, before the commit
  race COUNT         print "ready", wait for a line on stdin, then
                     begin/commit every record 0..COUNT-1 and print how many
                     this process committed
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import uuid
from typing import Any

import structlog

from fleetd.locks import Done, Locked, LockKey, LockManager, current_owner, open_store

WORKFLOW = "accounts"
MNEMONIC = "mk"


async def main(url: str, mode: str, argument: str) -> None:
    store = open_store(url)
    await store.open()
    try:
        async with LockManager(store, current_owner(), lease=30.0) as locks:
            if mode == "hold":
                await locks.begin(
                    LockKey(WORKFLOW, argument, MNEMONIC),
                    agent="a",
                    run_id=uuid.uuid4().hex,
                    check_mark=True,
                )
                print("locked", flush=True)
                await asyncio.sleep(3600)
            elif mode == "commit":
                transaction = await locks.begin(
                    LockKey(WORKFLOW, argument, MNEMONIC),
                    agent="a",
                    run_id=uuid.uuid4().hex,
                    check_mark=True,
                )
                await transaction.commit()
                print("committed", flush=True)
                await asyncio.sleep(3600)
            elif mode == "update-crash":
                transaction = await locks.begin(
                    LockKey(WORKFLOW, argument, MNEMONIC),
                    agent="a",
                    run_id=uuid.uuid4().hex,
                    check_mark=True,
                )

                async def update_then_die(connection: Any) -> None:
                    await connection.execute(
                        "UPDATE accounts SET state = 'active' WHERE id = $1", argument
                    )
                    print("updated", flush=True)
                    os.kill(os.getpid(), signal.SIGKILL)

                await transaction.commit(in_transaction=update_then_die)
            elif mode == "race":
                # Start together: the test releases every child at once.
                print("ready", flush=True)
                await asyncio.to_thread(sys.stdin.readline)
                committed = await race(locks, int(argument))
                print(committed, flush=True)
    finally:
        await store.close()


async def race(locks: LockManager, count: int) -> int:
    committed = 0

    async def one(record: int) -> None:
        nonlocal committed
        key = LockKey(WORKFLOW, f"r{record:05d}", MNEMONIC)
        try:
            transaction = await locks.begin(
                key, agent="a", run_id=uuid.uuid4().hex, check_mark=True
            )
        except (Locked, Done):
            return
        transaction.stage("state", "done")
        await asyncio.sleep(0.01)  # the Run phase, while the lock is held
        await transaction.commit()
        committed += 1

    # Eight runs at once, as a daemon's concurrency would have them.
    semaphore = asyncio.Semaphore(8)

    async def limited(record: int) -> None:
        async with semaphore:
            await one(record)

    await asyncio.gather(*(limited(record) for record in range(count)))

    return committed


if __name__ == "__main__":
    # Logs go to stderr: stdout carries the replies the test reads.
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    )
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
