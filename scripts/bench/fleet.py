"""Benchmark claims per second of the PostgreSQL state store.

Measures fleetd's claim (LockManager.begin) and commit of each record with
1 and 4 processes, beside a floor measured in the same script: a plain
asyncpg loop that claims a row of a queue table with
`SELECT ... FOR UPDATE SKIP LOCKED`, marks it done and commits, one
transaction per record. Both run the same records, processes and
concurrent tasks per process, on a fresh schema. fleetd's PostgreSQL
store sends the claims that a process's tasks make at the same time as
one batch in one transaction, and likewise their commits. The floor does
not batch, so `--tasks 1` shows fleetd without batches.

Each fleetd process walks all records, starting at its own offset
(process i of n at record i * records / n), so processes meet only at the
end of their share. A record that another process has locked or
committed is refused (`Locked`, `Done`) and skipped. A claim per second is one record
committed: the number of records divided by the time from the start
signal until the last process finished.

With `--walk share`, each fleetd process tries only its own share of the
records, as hosts whose record listings do not overlap would. The
difference to the default shows what the refused claims cost.

Usage: python scripts/bench/fleet.py [--dsn URL] [--records N]
       [--repeat N] [--tasks N] [--walk all|share] [--json]
The DSN defaults to $FLEETD_TEST_PG_DSN.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import secrets
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import structlog

from fleetd.locks import Done, Locked, LockKey, LockManager, current_owner, open_store


def schema_url(dsn: str, schema: str) -> str:
    parts = urlsplit(dsn)
    query = [*parse_qsl(parts.query), ("search_path", schema)]

    return urlunsplit(parts._replace(query=urlencode(query)))


async def fleetd_worker(
    url: str, records: int, tasks: int, offset: int, walk: int, start: Any, ready: Any
) -> int:
    """Claim and commit every record not yet claimed; return how many."""
    store = open_store(url)
    await store.open()
    committed = 0
    try:
        async with LockManager(store, current_owner(), lease=60) as locks:
            order = [(offset + n) % records for n in range(walk)]
            queue: asyncio.Queue[int] = asyncio.Queue()
            for record in order:
                queue.put_nowait(record)

            async def run() -> None:
                nonlocal committed
                while not queue.empty():
                    key = LockKey("bench", f"r{queue.get_nowait():06d}", "bench")
                    try:
                        transaction = await locks.begin(
                            key,
                            agent="bench",
                            run_id=uuid.uuid4().hex,
                            check_mark=True,
                        )
                    except (Locked, Done):
                        continue
                    await transaction.commit()
                    committed += 1

            ready.release()
            await asyncio.to_thread(start.wait)
            await asyncio.gather(*(run() for _ in range(tasks)))
    finally:
        await store.close()

    return committed


async def floor_worker(
    url: str, records: int, tasks: int, offset: int, walk: int, start: Any, ready: Any
) -> int:
    """Claim rows with FOR UPDATE SKIP LOCKED until none is left."""
    pool = await asyncpg.create_pool(url, min_size=tasks, max_size=tasks)
    committed = 0

    async def run() -> None:
        nonlocal committed
        async with pool.acquire() as connection:
            while True:
                async with connection.transaction():
                    claimed = await connection.fetchval(
                        "SELECT id FROM bench_queue WHERE state = 'new'"
                        " ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"
                    )
                    if claimed is None:
                        return
                    await connection.execute(
                        "UPDATE bench_queue SET state = 'done' WHERE id = $1", claimed
                    )
                committed += 1

    try:
        ready.release()
        await asyncio.to_thread(start.wait)
        await asyncio.gather(*(run() for _ in range(tasks)))
    finally:
        await pool.close()

    return committed


def worker_main(
    kind: str,
    url: str,
    records: int,
    tasks: int,
    offset: int,
    walk: int,
    start: Any,
    ready: Any,
    results: Any,
) -> None:
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(40)  # errors only
    )
    function = fleetd_worker if kind == "fleetd" else floor_worker
    committed = asyncio.run(function(url, records, tasks, offset, walk, start, ready))
    results.put((committed, time.monotonic()))


async def prepare(dsn: str, schema: str, records: int) -> str:
    """Create `schema` with the fleetd schema and a queue of `records` rows."""
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(f"CREATE SCHEMA {schema}")
    finally:
        await connection.close()
    url = schema_url(dsn, schema)
    store = open_store(url)
    await store.open()
    await store.close()
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(
            "CREATE TABLE bench_queue (id text PRIMARY KEY, state text NOT NULL)"
        )
        await connection.copy_records_to_table(
            "bench_queue", records=[(f"r{n:06d}", "new") for n in range(records)]
        )
    finally:
        await connection.close()

    return url


async def drop(dsn: str, schema: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(f"DROP SCHEMA {schema} CASCADE")
    finally:
        await connection.close()


def measure_once(
    kind: str, dsn: str, processes: int, records: int, tasks: int, share: bool
) -> float:
    """Run one measurement on a fresh schema; return claims per second."""
    schema = f"fleetd_bench_{secrets.token_hex(4)}"
    url = asyncio.run(prepare(dsn, schema, records))
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    ready = context.Semaphore(0)
    results = context.Queue()
    # With `share`, each fleetd process tries only its own part of the
    # records, as hosts whose listings do not overlap would.
    walk = -(-records // processes) if share else records
    workers = [
        context.Process(
            target=worker_main,
            args=(
                kind,
                url,
                records,
                tasks,
                i * records // processes,
                walk,
                start,
                ready,
                results,
            ),
        )
        for i in range(processes)
    ]
    try:
        for worker in workers:
            worker.start()
        for _ in workers:
            ready.acquire()
        began = time.monotonic()
        start.set()
        finished = [results.get(timeout=600) for _ in workers]
        for worker in workers:
            worker.join()
        committed = sum(count for count, _ in finished)
        if committed != records:
            raise RuntimeError(f"{kind}: {committed} commits for {records} records")
        elapsed = max(at for _, at in finished) - began
    finally:
        asyncio.run(drop(dsn, schema))

    return records / elapsed


def summarize(values: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": len(values),
    }


def measure(
    dsn: str,
    records: int,
    repeat: int,
    tasks: int,
    share: bool,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "records": records,
        "tasks_per_process": tasks,
        "walk": "share" if share else "all",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "asyncpg": asyncpg.__version__,
        },
        "cases": {},
    }
    for processes in (1, 4):
        samples: dict[str, list[float]] = {"fleetd": [], "floor": []}
        for run in range(repeat):
            # Alternate the order so drift on a shared machine hits both.
            kinds = ("fleetd", "floor") if run % 2 == 0 else ("floor", "fleetd")
            for kind in kinds:
                rate = measure_once(kind, dsn, processes, records, tasks, share)
                samples[kind].append(rate)
                progress(f"{kind} processes={processes} run={run + 1}: {rate:.0f}/s")
        fleetd = summarize(samples["fleetd"])
        floor = summarize(samples["floor"])
        data["cases"][f"{processes} process{'es' if processes > 1 else ''}"] = {
            "fleetd": fleetd,
            "floor": floor,
            "ratio": fleetd["median"] / floor["median"],
        }

    return data


def print_table(data: dict[str, Any]) -> None:
    print("| case | fleetd claims/s (median, min-max) | floor claims/s | ratio |")
    print("| --- | --- | --- | --- |")
    for case, result in data["cases"].items():
        fleetd, floor = result["fleetd"], result["floor"]
        print(
            f"| {case} | {fleetd['median']:.0f} ({fleetd['min']:.0f}-"
            f"{fleetd['max']:.0f}) | {floor['median']:.0f} ({floor['min']:.0f}-"
            f"{floor['max']:.0f}) | {result['ratio']:.2f} |"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dsn",
        default=os.environ.get("FLEETD_TEST_PG_DSN"),
        help="PostgreSQL URL (default: $FLEETD_TEST_PG_DSN)",
    )
    parser.add_argument(
        "--records", type=int, default=2000, help="records per measurement"
    )
    parser.add_argument("--repeat", type=int, default=5, help="runs per measurement")
    parser.add_argument(
        "--tasks", type=int, default=8, help="concurrent claims per process"
    )
    parser.add_argument(
        "--walk",
        choices=("all", "share"),
        default="all",
        help="records each fleetd process tries: all (default) or its own share",
    )
    parser.add_argument("--json", action="store_true", help="print JSON, not a table")
    args = parser.parse_args()
    if not args.dsn:
        parser.error("--dsn is missing and FLEETD_TEST_PG_DSN is not set")
    # Standard output carries only the results.
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(30),  # warnings
    )

    data = measure(
        args.dsn,
        args.records,
        args.repeat,
        args.tasks,
        args.walk == "share",
        lambda line: print(line, file=sys.stderr, flush=True),
    )
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print_table(data)

    return 0


if __name__ == "__main__":
    sys.exit(main())
