"""Programs started on the thread pool: output, exit status, reaping."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import anyio
import pytest
import uvloop

from fleetd.runtime.process import run_program
from fleetd.runtime.spawn import can_spawn_on_thread

SAFE_PATH = ("/usr/bin", "/bin")
SCRIPT = 'echo "out $1"; echo "err $1" >&2; exit 3'


async def test_asyncio_loop_spawns_on_thread() -> None:
    assert can_spawn_on_thread()


async def test_many_programs_at_once_all_reaped() -> None:
    results = {}

    async def one(index: int) -> None:
        results[index] = await run_program(
            ["sh", "-c", SCRIPT, "sh", str(index)], safe_path=SAFE_PATH
        )

    async with anyio.create_task_group() as group:
        for index in range(30):
            group.start_soon(one, index)

    for index, result in results.items():
        assert result.returncode == 3
        assert sorted(result.output) == [f"err {index}", f"out {index}"]
        assert result.pid is not None
        with pytest.raises(ChildProcessError):
            os.waitpid(result.pid, os.WNOHANG)  # noqa: ASYNC222 - WNOHANG never blocks


async def test_start_failure_is_a_result(tmp_path: Path) -> None:
    result = await run_program(
        ["true"], safe_path=SAFE_PATH, cwd=str(tmp_path / "missing")
    )
    assert result.returncode is None
    assert result.error is not None
    assert result.error.startswith("cannot start true:")


def test_uvloop_keeps_subprocess_exec() -> None:
    async def main() -> tuple[bool, int | None]:
        result = await run_program(["true"], safe_path=SAFE_PATH)
        return can_spawn_on_thread(), result.returncode

    on_thread, returncode = uvloop.run(main())
    assert not on_thread
    assert returncode == 0


def test_stdlib_loop_without_anyio() -> None:
    result = asyncio.run(run_program(["sh", "-c", "exit 7"], safe_path=SAFE_PATH))
    assert result.returncode == 7
