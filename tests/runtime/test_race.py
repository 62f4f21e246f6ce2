"""Several processes racing over one SQLite state run each record once."""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path

import anyio
import pytest

from tests.runtime.conftest import Fleet

CHILD = Path(__file__).with_name("race_child.py")
PROCESSES = 4
RECORDS = 200


@pytest.mark.slow
async def test_racing_processes_run_each_record_once(fleet: Fleet) -> None:
    for number in range(RECORDS):
        fleet.record(f"rec{number:03d}", status="approved")
    ran = fleet.root / "ran.log"
    fleet.agent(
        f"""
        NAME        Racer
        MNEMONIC    racer
        WORKFLOW    requests
        CONCURRENCY 8
        REQUIRE this.status = "approved"
        EXEC_COMMAND sh -c "echo \\"$1\\" >> {ran}" sh ${{this.id}}
        SET this.status = "done"
        """
    )
    outputs: list[str] = []
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}

    async def child() -> None:
        result = await anyio.run_process(
            [sys.executable, str(CHILD), str(fleet.conf)], env=env, check=True
        )
        outputs.append(result.stdout.decode())

    with anyio.fail_after(120):
        async with anyio.create_task_group() as group:
            for _ in range(PROCESSES):
                group.start_soon(child)

    reports = [json.loads(line) for out in outputs for line in out.splitlines()]
    committed = Counter(r["record"] for r in reports if r["outcome"] == "committed")
    assert len(committed) == RECORDS
    assert set(committed.values()) == {1}
    assert Counter(ran.read_text().split()) == Counter(committed)
    others = {r["outcome"] for r in reports if r["outcome"] != "committed"}
    assert others <= {"locked", "done", "skipped"}
    assert all(fleet.fields(f"rec{n:03d}")["status"] == "done" for n in range(RECORDS))
