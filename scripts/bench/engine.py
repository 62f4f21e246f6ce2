"""Measure the engine and program execution beside floors in the same process.

Three measurements, each repeated (default 5 times, alternating with its
floor so both see the same machine noise):

- engine, in-process commands: records per second through Requirements,
  lock, Check, Run (SET this.f, ECHO), Cleanup and a commit, on a real
  SQLite state file (durable as with synchronous=FULL), against plain sqlite3 doing
  the same durable writes per record (one claim transaction and one
  resolution transaction, each committed and synced) one record after
  another.
- exec: the same records with `EXEC_COMMAND true` at CONCURRENCY 1 and 8
  (and 8 on uvloop), against plain `asyncio.create_subprocess_exec` of
  /bin/true at the same concurrency, on the faster of the stdlib asyncio
  loop and uvloop. `fleetd.runtime.process.run_program` alone is measured
  against the same floor, to tell spawning from the rest of a run.
- exec, 1 at once, against a durable floor: plain asyncio and sqlite3
  claiming each record in a synced transaction before its program and
  resolving it after, as the phase rules require of fleetd. The plain
  subprocess floor pays no fsync, and one fsync takes about 0.2 to 0.3 ms
  here against about 0.8 ms per program.

Records come from an in-memory workflow (commit does nothing) so that the
numbers show the runtime and the state store, not a workflow's own
writes. Logging is filtered at warning, as `log_level = "warning"` would.

Usage: python -m scripts.bench.engine [--repeat N] [--records N] [--spawns N]
       [--only engine|exec] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import structlog

from fleetd.config.model import Config, DaemonSettings, WorkflowSettings
from fleetd.daemon.logging import configure_logging
from fleetd.lang import Registry, parse_agent
from fleetd.runtime import Engine, Outcome, initialize
from fleetd.runtime.loop import pidfd_child_watcher
from fleetd.runtime.process import run_program
from fleetd.workflows import Record, Workflow
from scripts.bench.common import (
    format_machine,
    machine,
    print_ratios,
    print_rows,
    ratio_of,
    summarize,
)

try:
    import uvloop
except ImportError:  # uvloop is optional; the floor then uses the stdlib loop
    uvloop = None

TRUE = "/bin/true"

IN_PROCESS_AGENT = """\
NAME        Bench
MNEMONIC    bench
WORKFLOW    memory
CONCURRENCY {concurrency}
REQUIRE this.status = "approved"
CHECK this.size > 0
SET this.status = "done"
ECHO ${{this.id}}
ON_SUCCESS
    LOG DEBUG cleaned ${{this.id}}
END
"""

EXEC_AGENT = """\
NAME        BenchExec
MNEMONIC    benchexec
WORKFLOW    memory
CONCURRENCY {concurrency}
REQUIRE this.status = "approved"
EXEC_COMMAND true
SET this.status = "done"
ON_SUCCESS
    LOG DEBUG cleaned ${{this.id}}
END
"""


class MemoryWorkflow:
    """Records held in memory; a commit changes nothing."""

    kind = "memory"

    def __init__(self, count: int) -> None:
        self.name = "memory"
        self.count = count

    async def records(self) -> list[Record]:
        return [
            Record(f"r{number:06d}", {"status": "approved", "size": 3})
            for number in range(self.count)
        ]

    async def commit(self, record: Record, changes: dict[str, Any]) -> None:
        return None


class BenchEngine(Engine):
    """An engine whose only workflow is the in-memory one."""

    memory: Workflow

    def workflow(self, name: str) -> Workflow:
        return self.memory


def make_config(folder: Path, concurrency: int) -> Config:
    daemon = DaemonSettings(
        state=f"sqlite:///{folder}/state.db",
        max_concurrency=concurrency,
        safe_path=("/usr/bin", "/bin"),
        log_level="warning",
    )
    return Config(
        conf_dir=folder,
        daemon=daemon,
        workflows={"memory": WorkflowSettings("memory", "memory")},
    )


async def engine_rate(template: str, records: int, concurrency: int) -> float:
    """Run one cycle of `records` records; return records per second."""
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        registry = Registry.default()
        agent = parse_agent(
            template.format(concurrency=concurrency),
            str(folder / "bench.agent"),
            registry=registry,
        )
        loaded = initialize(agent, {}, registry)
        engine = BenchEngine(
            make_config(folder, concurrency), echo=lambda text: None, registry=registry
        )
        engine.memory = MemoryWorkflow(records)
        async with engine:
            started = time.perf_counter()
            reports = await engine.run_cycle(loaded)
            elapsed = time.perf_counter() - started
    committed = sum(report.outcome is Outcome.COMMITTED for report in reports)
    if committed != records:
        raise RuntimeError(f"only {committed} of {records} records committed")

    return records / elapsed


FLOOR_SCHEMA = """
    CREATE TABLE tokens (id INTEGER PRIMARY KEY, value INTEGER NOT NULL);
    INSERT INTO tokens VALUES (1, 0);
    CREATE TABLE locks (workflow TEXT, record TEXT, mnemonic TEXT,
        agent TEXT, owner TEXT, token INTEGER, since REAL, expires REAL,
        run_id TEXT, PRIMARY KEY (workflow, record, mnemonic));
    CREATE TABLE marks (workflow TEXT, record TEXT, mnemonic TEXT,
        agent TEXT, resolution TEXT, reason TEXT, at REAL,
        PRIMARY KEY (workflow, record, mnemonic));
    CREATE TABLE history (id INTEGER PRIMARY KEY AUTOINCREMENT,
        workflow TEXT, record TEXT, mnemonic TEXT, agent TEXT,
        resolution TEXT, reason TEXT, run_id TEXT, owner TEXT,
        token INTEGER, started REAL, at REAL);
"""

KEY_WHERE = "workflow = ? AND record = ? AND mnemonic = ?"


def floor_connection(folder: str) -> sqlite3.Connection:
    """Open the floor's database in WAL mode with synchronous=FULL."""
    connection = sqlite3.connect(f"{folder}/floor.db", isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    connection.executescript(FLOOR_SCHEMA)

    return connection


def floor_claim(connection: sqlite3.Connection, number: int) -> int:
    """Claim record `number` in one durable transaction; return its token."""
    key = ("memory", f"r{number:06d}", "bench")
    now = time.time()
    connection.execute("BEGIN IMMEDIATE")
    connection.execute(f"SELECT * FROM marks WHERE {KEY_WHERE}", key)
    connection.execute(f"SELECT * FROM locks WHERE {KEY_WHERE}", key)
    token = connection.execute(
        "UPDATE tokens SET value = value + 1 WHERE id = 1 RETURNING value"
    ).fetchone()[0]
    connection.execute(
        "INSERT INTO locks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (*key, "Bench", "host:1", token, now, now + 60, "run"),
    )
    connection.execute("COMMIT")

    return token


def floor_resolve(connection: sqlite3.Connection, number: int, token: int) -> None:
    """Resolve record `number` as committed in one durable transaction."""
    key = ("memory", f"r{number:06d}", "bench")
    now = time.time()
    connection.execute("BEGIN IMMEDIATE")
    connection.execute(f"SELECT token FROM locks WHERE {KEY_WHERE}", key)
    connection.execute(f"DELETE FROM locks WHERE {KEY_WHERE}", key)
    connection.execute(
        "INSERT OR REPLACE INTO marks VALUES (?, ?, ?, ?, ?, ?, ?)",
        (*key, "Bench", "committed", None, now),
    )
    connection.execute(
        "INSERT INTO history (workflow, record, mnemonic, agent,"
        " resolution, reason, run_id, owner, token, started, at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (*key, "Bench", "committed", None, "run", "host:1", token, now, now),
    )
    connection.execute("COMMIT")


def sqlite_floor_rate(records: int) -> float:
    """Plain sqlite3: a claim and a resolution transaction per record."""
    with tempfile.TemporaryDirectory() as name:
        connection = floor_connection(name)
        started = time.perf_counter()
        for number in range(records):
            token = floor_claim(connection, number)
            floor_resolve(connection, number, token)
        elapsed = time.perf_counter() - started
        connection.close()

    return records / elapsed


async def _pool(
    count: int, concurrency: int, job: Callable[[], Awaitable[Any]]
) -> float:
    """Run `job` `count` times, `concurrency` at once; return runs per second."""
    remaining = count

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await job()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))

    return count / (time.perf_counter() - started)


async def subprocess_floor(count: int, concurrency: int) -> float:
    """Plain asyncio: spawn /bin/true with piped output and wait for it."""

    async def job() -> None:
        process = await asyncio.create_subprocess_exec(
            TRUE,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        await process.communicate()

    return await _pool(count, concurrency, job)


async def durable_subprocess_floor(count: int) -> float:
    """Plain asyncio and sqlite3, one record at a time: claim, program, resolve.

    The floor's own fsyncs: the claim is durable before the program
    starts and the resolution before the next record, as the phase rules
    ask of fleetd. The sqlite3 calls block the loop, which costs nothing
    with one record at a time.
    """
    with tempfile.TemporaryDirectory() as name:
        connection = floor_connection(name)
        started = time.perf_counter()
        for number in range(count):
            token = floor_claim(connection, number)
            process = await asyncio.create_subprocess_exec(
                TRUE,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            await process.communicate()
            floor_resolve(connection, number, token)
        elapsed = time.perf_counter() - started
        connection.close()

    return count / elapsed


async def run_program_rate(count: int, concurrency: int) -> float:
    """fleetd's program execution of /bin/true."""
    log = structlog.get_logger()

    async def job() -> None:
        result = await run_program([TRUE], safe_path=(), log=log)
        if not result.ok:
            raise RuntimeError(result.describe())

    with pidfd_child_watcher():
        return await _pool(count, concurrency, job)


def on_loop(loop: str, function: Callable[..., Awaitable[float]], *args: Any) -> float:
    """Run `function(*args)` on a new event loop of the kind `loop`."""
    if loop == "uvloop":
        assert uvloop is not None
        return uvloop.run(function(*args))
    return asyncio.run(function(*args))


def measure(repeat: int, records: int, spawns: int, only: set[str]) -> dict[str, Any]:
    loops = ["asyncio"] + (["uvloop"] if uvloop is not None else [])
    samples: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        samples.setdefault(name, []).append(value)

    for _ in range(repeat):
        if "engine" in only:
            add(
                "engine_inprocess",
                anyio.run(engine_rate, IN_PROCESS_AGENT, records, 64),
            )
            add("sqlite_floor", sqlite_floor_rate(records))
        if "exec" not in only:
            continue
        for concurrency in (1, 8):
            add(
                f"engine_exec_c{concurrency}",
                anyio.run(engine_rate, EXEC_AGENT, spawns, concurrency),
            )
            if concurrency == 8 and uvloop is not None:
                add(
                    "engine_exec_c8_uvloop",
                    anyio.run(
                        engine_rate,
                        EXEC_AGENT,
                        spawns,
                        concurrency,
                        backend_options={"use_uvloop": True},
                    ),
                )
            add(
                f"run_program_c{concurrency}",
                on_loop("asyncio", run_program_rate, spawns, concurrency),
            )
            if concurrency == 1:
                add(
                    "durable_floor_c1",
                    on_loop("asyncio", durable_subprocess_floor, spawns),
                )
            for loop in loops:
                add(
                    f"subprocess_floor_c{concurrency}_{loop}",
                    on_loop(loop, subprocess_floor, spawns, concurrency),
                )

    results = {name: summarize(values) for name, values in samples.items()}
    # The floor of each concurrency is the faster loop's, by median.
    floors: dict[str, str] = {}
    if "exec" in only:
        for concurrency in (1, 8):
            floors[f"subprocess_floor_c{concurrency}"] = max(
                (f"subprocess_floor_c{concurrency}_{loop}" for loop in loops),
                key=lambda name: results[name]["median"],
            )
    pairs = {}
    if "engine" in only:
        pairs["engine, in-process / SQLite floor"] = (
            "engine_inprocess",
            "sqlite_floor",
            0.5,
        )
    if "exec" in only:
        for concurrency in (1, 8):
            floor = floors[f"subprocess_floor_c{concurrency}"]
            pairs[f"engine, /bin/true, {concurrency} at once / floor"] = (
                f"engine_exec_c{concurrency}",
                floor,
                0.8,
            )
            if concurrency == 1:
                pairs["engine, /bin/true, 1 at once / durable floor"] = (
                    "engine_exec_c1",
                    "durable_floor_c1",
                    0.8,
                )
            pairs[f"run_program, {concurrency} at once / floor"] = (
                f"run_program_c{concurrency}",
                floor,
                0.8,
            )
    ratios = {
        label: {**ratio_of(samples[measured], samples[floor]), "target": target}
        for label, (measured, floor, target) in pairs.items()
    }

    return {
        "machine": machine(),
        "repeat": repeat,
        "records": records,
        "spawns": spawns,
        "results": results,
        "floors": floors,
        "ratios": ratios,
    }


def print_table(data: dict[str, Any]) -> None:
    print(format_machine(data["machine"]))
    floors = set(data["floors"].values())
    print_rows(
        "records or programs per second",
        [
            (name + (" (faster floor)" if name in floors else ""), values, "/s")
            for name, values in data["results"].items()
        ],
    )
    print_ratios(
        [
            (label, ratio, f">= {ratio['target']}")
            for label, ratio in data["ratios"].items()
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per measurement")
    parser.add_argument(
        "--records", type=int, default=2000, help="records per in-process cycle"
    )
    parser.add_argument(
        "--spawns", type=int, default=400, help="programs per exec measurement"
    )
    parser.add_argument(
        "--only",
        choices=["engine", "exec"],
        help="run only the in-process engine or only the program measurements",
    )
    parser.add_argument("--json", action="store_true", help="print JSON, not a table")
    options = parser.parse_args()
    # As the daemon logs at its default target, from warning up.
    configure_logging(level="warning", target="json", stream=sys.stderr)
    only = {options.only} if options.only else {"engine", "exec"}
    data = measure(options.repeat, options.records, options.spawns, only)
    if options.json:
        print(json.dumps(data, indent=2))
    else:
        print_table(data)


if __name__ == "__main__":
    main()
