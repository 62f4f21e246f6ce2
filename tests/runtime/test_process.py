"""Program execution: no shell, safe_path, output capture, group kill."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import anyio
import pytest
from structlog.testing import capture_logs

from fleetd.runtime.process import MAX_LINE_BYTES, run_program
from tests.runtime.helpers import process_gone, wait_for_file, wait_gone

SAFE_PATH = ("/usr/bin", "/bin")


def output_lines(logs: list[dict]) -> list[str]:
    return [entry["line"] for entry in logs if entry["event"] == "program_output"]


async def test_metacharacters_stay_in_one_argument(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    hostile = f"x; touch {marker} $(touch {marker}) `touch {marker}` | & > <"
    with capture_logs() as logs:
        result = await run_program(
            ["printf", "<%s>\\n", hostile, "-rf", "a\nb"], safe_path=SAFE_PATH
        )
    assert result.ok
    assert output_lines(logs) == [f"<{hostile}>", "<-rf>", "<a", "b>"]
    assert not marker.exists()


async def test_nul_in_argument_fails_without_spawning() -> None:
    result = await run_program(["echo", "a\0b"], safe_path=SAFE_PATH)
    assert not result.ok
    assert result.pid is None
    assert "NUL" in (result.error or "")


async def test_program_not_in_safe_path(tmp_path: Path) -> None:
    # `env` is on $PATH, but safe_path does not list /usr/bin.
    result = await run_program(["env"], safe_path=(str(tmp_path),))
    assert not result.ok
    assert result.error is not None
    assert "not found in safe_path" in result.error


async def test_program_not_executable(tmp_path: Path) -> None:
    script = tmp_path / "tool"
    script.write_text("#!/bin/sh\necho hi\n")
    result = await run_program(["tool"], safe_path=(str(tmp_path),))
    assert result.error is not None
    assert "not executable" in result.error
    direct = await run_program([str(script)], safe_path=())
    assert direct.error is not None
    assert "not executable" in direct.error


async def test_relative_safe_path_resolves_against_conf_dir(tmp_path: Path) -> None:
    folder = tmp_path / "bin"
    folder.mkdir()
    script = folder / "hello"
    script.write_text("#!/bin/sh\necho hello from $0\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    with capture_logs() as logs:
        result = await run_program(["hello"], safe_path=("bin",), conf_dir=tmp_path)
    assert result.ok
    assert output_lines(logs) == [f"hello from {script}"]


async def test_exec_format_error_is_a_failure(tmp_path: Path) -> None:
    script = tmp_path / "broken"
    script.write_bytes(b"\x00\x01garbage")
    script.chmod(0o755)
    result = await run_program(["broken"], safe_path=(str(tmp_path),))
    assert not result.ok
    assert result.error is not None
    assert "cannot start" in result.error


async def test_non_zero_exit_fails() -> None:
    result = await run_program(["sh", "-c", "exit 3"], safe_path=SAFE_PATH)
    assert not result.ok
    assert result.returncode == 3
    assert result.describe() == "sh exited with status 3"


async def test_failure_reason_shows_the_last_stderr_line() -> None:
    # The reason a run failed is often in the program's own words; the
    # output is logged at info, which the shipped log level hides.
    script = (
        "echo checking; echo 'useradd: UID 2001 is not unique' >&2; echo >&2; exit 4"
    )
    result = await run_program(["sh", "-c", script], safe_path=SAFE_PATH)
    assert result.describe() == (
        "sh exited with status 4 (stderr: useradd: UID 2001 is not unique)"
    )


async def test_failure_reason_cuts_a_long_stderr_line() -> None:
    script = "printf '%0500d' 0 >&2; exit 1"
    result = await run_program(["sh", "-c", script], safe_path=SAFE_PATH)
    assert result.describe() == f"sh exited with status 1 (stderr: {'0' * 197}...)"


async def test_failure_reason_hides_secrets_in_stderr() -> None:
    result = await run_program(
        ["sh", "-c", "echo 'bad token hunter2' >&2; exit 1"],
        safe_path=SAFE_PATH,
        redact=lambda text: text.replace("hunter2", "***"),
    )
    assert result.describe() == "sh exited with status 1 (stderr: bad token ***)"


async def test_stdout_and_stderr_logged_line_by_line() -> None:
    with capture_logs() as logs:
        result = await run_program(
            ["sh", "-c", "echo out1; echo err1 >&2; printf 'last'"],
            safe_path=SAFE_PATH,
        )
    assert result.ok
    streams = {
        (entry["stream"], entry["line"])
        for entry in logs
        if entry["event"] == "program_output"
    }
    assert streams == {("stdout", "out1"), ("stderr", "err1"), ("stdout", "last")}
    assert all(entry["log_level"] == "info" for entry in logs)


async def test_long_line_cut_and_counted() -> None:
    size = MAX_LINE_BYTES * 3
    with capture_logs() as logs:
        result = await run_program(
            ["sh", "-c", f"head -c {size} /dev/zero | tr '\\0' a; echo; echo next"],
            safe_path=SAFE_PATH,
        )
    assert result.ok
    entries = [entry for entry in logs if entry["event"] == "program_output"]
    assert len(entries[0]["line"]) == MAX_LINE_BYTES
    assert entries[0]["cut_bytes"] == size - MAX_LINE_BYTES
    assert entries[1]["line"] == "next"


async def test_invalid_utf8_replaced() -> None:
    with capture_logs() as logs:
        result = await run_program(["printf", "caf\\351 ok\\n"], safe_path=SAFE_PATH)
    assert result.ok
    assert output_lines(logs) == ["caf\ufffd ok"]


async def test_large_output_never_blocks_the_program() -> None:
    # 20 MB without newlines would fill any pipe; reading must keep up.
    with anyio.fail_after(30):
        result = await run_program(
            ["head", "-c", "20000000", "/dev/zero"], safe_path=SAFE_PATH
        )
    assert result.ok


async def test_cancellation_kills_the_whole_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    started = time.monotonic()
    async with anyio.create_task_group() as group:

        async def run() -> None:
            await run_program(
                ["sh", "-c", f"sleep 60 & echo $! > {pidfile}; sleep 61"],
                safe_path=SAFE_PATH,
            )

        group.start_soon(run)
        await anyio.to_thread.run_sync(wait_for_file, pidfile)
        group.cancel_scope.cancel()
    grandchild = int(pidfile.read_text())
    assert wait_gone(grandchild)
    assert time.monotonic() - started < 5


async def test_sigterm_ignored_gets_sigkill_after_grace(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    result_pid: list[int] = []
    started = time.monotonic()
    with anyio.move_on_after(1.0):
        with capture_logs() as logs:
            result = await run_program(
                ["sh", "-c", f"trap '' TERM; echo $$ > {ready}; sleep 62; sleep 62"],
                safe_path=SAFE_PATH,
                kill_grace=0.5,
            )
            result_pid.append(result.pid or 0)
    elapsed = time.monotonic() - started
    assert not result_pid  # cancelled: the result never came back
    pid = int(ready.read_text())
    assert process_gone(pid)
    assert 1.4 <= elapsed < 4
    assert any(entry["event"] == "program_killed" for entry in logs)


async def test_program_is_reaped() -> None:
    result = await run_program(["true"], safe_path=SAFE_PATH)
    assert result.pid is not None
    with pytest.raises(ChildProcessError):
        os.waitpid(result.pid, os.WNOHANG)  # noqa: ASYNC222 - WNOHANG never blocks


async def test_leftover_processes_killed_after_exit(tmp_path: Path) -> None:
    pidfile = tmp_path / "left.pid"
    with capture_logs() as logs, anyio.fail_after(10):
        result = await run_program(
            ["sh", "-c", f"sleep 63 & echo $! > {pidfile}"], safe_path=SAFE_PATH
        )
    assert result.ok
    assert wait_gone(int(pidfile.read_text()))
    assert any(entry["event"] == "program_left_processes" for entry in logs)
