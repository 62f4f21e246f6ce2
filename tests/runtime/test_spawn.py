"""Programs started with posix_spawn: output, exit status, reaping, fallback."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import anyio
import pytest
import uvloop

from fleetd.runtime import process, spawn
from fleetd.runtime.process import run_program

SAFE_PATH = ("/usr/bin", "/bin")
SCRIPT = 'echo "out $1"; echo "err $1" >&2; exit 3'


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


async def test_exec_failure_is_a_result(tmp_path: Path) -> None:
    # Executable but in no format the kernel runs: exec fails with ENOEXEC.
    program = tmp_path / "not-a-program"
    program.write_bytes(b"\x00\x01\x02\x03")
    program.chmod(0o755)

    result = await run_program([str(program)], safe_path=SAFE_PATH)

    assert result.returncode is None
    assert result.error is not None
    assert result.error.startswith(f"cannot start {program}:")


async def test_program_state_is_reset() -> None:
    # New session, stdin from /dev/null, SIGPIPE at its default, and a
    # descriptor that Python opened (close-on-exec) is not inherited.
    script = (
        "cut -d' ' -f6 /proc/$$/stat; cat; readlink /proc/$$/fd/0;"
        " grep SigIgn /proc/$$/status;"
        " [ -e /proc/$$/fd/100 ] && echo inherited || echo closed"
    )
    opened = os.open(os.devnull, os.O_RDONLY)
    os.dup2(opened, 100, inheritable=False)
    try:
        result = await run_program(["sh", "-c", script], safe_path=SAFE_PATH)
    finally:
        os.close(100)
        os.close(opened)

    assert result.returncode == 0, result.output
    session, stdin, ignored, descriptor = result.output
    assert int(session) == result.pid
    assert stdin == os.devnull
    assert not int(ignored.split()[1], 16) & (1 << (signal.SIGPIPE - 1))
    assert descriptor == "closed"


async def test_inherited_descriptor_not_passed_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As if fleetd's parent had left descriptor 101 open for it.
    opened = os.open(os.devnull, os.O_RDONLY)
    os.dup2(opened, 101, inheritable=True)
    monkeypatch.setattr(spawn, "_inherited_closed", False)
    try:
        result = await run_program(
            ["sh", "-c", "[ -e /proc/$$/fd/101 ] && echo inherited || echo closed"],
            safe_path=SAFE_PATH,
        )
    finally:
        os.close(101)
        os.close(opened)

    assert result.output == ["closed"]


def test_uvloop_runs_programs() -> None:
    async def main() -> int | None:
        result = await run_program(["sh", "-c", "echo hi; exit 4"], safe_path=SAFE_PATH)
        assert result.output == ["hi"]
        return result.returncode

    assert uvloop.run(main()) == 4


def test_stdlib_loop_without_anyio() -> None:
    result = asyncio.run(run_program(["sh", "-c", "exit 7"], safe_path=SAFE_PATH))
    assert result.returncode == 7


async def test_subprocess_exec_without_pidfd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(process, "PIDFD_SUPPORTED", False)

    result = await run_program(["sh", "-c", SCRIPT, "sh", "x"], safe_path=SAFE_PATH)

    assert result.returncode == 3
    assert sorted(result.output) == ["err x", "out x"]


async def test_environment_changes_reach_programs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLEETD_TEST_VALUE", "changed at run time")

    result = await run_program(
        ["sh", "-c", 'echo "$FLEETD_TEST_VALUE"'], safe_path=SAFE_PATH
    )

    assert result.output == ["changed at run time"]


async def test_program_removed_after_lookup(tmp_path: Path) -> None:
    program = tmp_path / "tool"
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    first = await run_program(["tool"], safe_path=(str(tmp_path),))

    program.unlink()
    second = await run_program(["tool"], safe_path=(str(tmp_path),))

    assert first.returncode == 0
    assert second.returncode is None
    assert second.error == (
        f"program not found in safe_path {tmp_path}: tool"
        " (add its folder to [daemon] safe_path, or give its absolute path)"
    )


async def test_program_moved_within_safe_path(tmp_path: Path) -> None:
    first_dir, second_dir = tmp_path / "a", tmp_path / "b"
    first_dir.mkdir()
    second_dir.mkdir()
    (first_dir / "tool").write_text("#!/bin/sh\necho a\n")
    (first_dir / "tool").chmod(0o755)
    safe_path = (str(first_dir), str(second_dir))
    first = await run_program(["tool"], safe_path=safe_path)

    (first_dir / "tool").rename(second_dir / "tool")
    second = await run_program(["tool"], safe_path=safe_path)

    assert first.output == ["a"]
    assert second.returncode == 0
    assert second.output == ["a"]


async def test_missing_interpreter_named(tmp_path: Path) -> None:
    script = tmp_path / "tool"
    script.write_text("#!/nonexistent/sh\necho hi\n")
    script.chmod(0o755)

    result = await run_program([str(script)], safe_path=SAFE_PATH)

    assert result.returncode is None
    assert result.error == (
        f"cannot start {script}: No such file or directory"
        " (its interpreter /nonexistent/sh was not found)"
    )


# Sets O_NONBLOCK on the program's own stdin, as an event loop library may.
SET_NONBLOCK = (
    "import fcntl, os;"
    " fcntl.fcntl(0, fcntl.F_SETFL, fcntl.fcntl(0, fcntl.F_GETFL) | os.O_NONBLOCK)"
)


def stdin_flags(output: list[str]) -> int:
    [line] = [line for line in output if line.startswith("flags:")]
    return int(line.split()[1], 8)


async def test_stdin_flags_not_shared() -> None:
    first = await run_program(["python3", "-c", SET_NONBLOCK], safe_path=SAFE_PATH)
    assert first.returncode == 0, first.output

    second = await run_program(
        ["sh", "-c", "grep flags /proc/self/fdinfo/0"], safe_path=SAFE_PATH
    )

    assert second.returncode == 0, second.output
    assert not stdin_flags(second.output) & os.O_NONBLOCK


async def test_stdin_is_writable_devnull() -> None:
    # As with subprocess.DEVNULL, a program may write to its stdin.
    result = await run_program(["sh", "-c", "echo lost >&0"], safe_path=SAFE_PATH)

    assert result.returncode == 0, result.output
    assert result.output == []
