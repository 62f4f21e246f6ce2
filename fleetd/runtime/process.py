"""Program execution for `EXEC*` commands: no shell, safe_path, group kill.

Design note. The caller passes the argument vector already split into words
and interpolated, one word per argument, so a value never leaves its
argument. This module adds what a shell would otherwise decide:

- A program name without "/" is looked up only in `safe_path`; `$PATH` is
  never consulted. Relative `safe_path` entries resolve against the conf dir.
- The program starts in a new session (`start_new_session=True`), so it
  leads its own process group and everything it forks can be signalled at
  once with `os.killpg`.
- stdout and stderr are read concurrently, line by line, and each line is
  logged at info. A line longer than `MAX_LINE_BYTES` is cut and the number
  of bytes cut is logged, so a program printing without newlines cannot
  grow memory. Reading never stops while the program runs, so a full pipe
  never blocks it.
- Cancellation (a TIMEOUT, a PARALLEL sibling failing, shutdown) sends
  SIGTERM to the group, then SIGKILL after `kill_grace` seconds, and waits
  for the program in a shielded scope, so it is always reaped. Processes the
  program left behind in its group when it exited are killed the same way,
  as systemd does for a unit's control group.
- Spawn failures (not found, not executable, NUL in an argument) come back
  as a failed `ProgramResult`; no exception escapes `run_program` other
  than cancellation.

The stdlib asyncio event loop is used through `asyncio.create_subprocess_exec`
directly: anyio's `open_process` wraps the same call, and the extra stream
wrappers measured slower in scripts/bench/engine.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import structlog

MAX_LINE_BYTES = 8192  # longer output lines are cut
READ_CHUNK = 65536
CAPTURE_LINES = 50  # lines of output kept in the result, the last ones
KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
LEFTOVER_WAIT = 0.2  # seconds the pipes may stay open after the program exits
PIPE_CLOSE_WAIT = 1.0  # seconds to wait for pipes once the group is killed


@dataclass(slots=True)
class ProgramResult:
    """What became of one program: exit status, or why it never started.

    `returncode` is None when the program did not start (then `error` says
    why) or was cancelled before it exited; a negative value is the signal
    that ended it. `output` holds the last lines of stdout and stderr.
    """

    argv: tuple[str, ...]
    returncode: int | None = None
    error: str | None = None
    pid: int | None = None
    duration_s: float = 0.0
    output: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None and self.returncode == 0

    def describe(self) -> str:
        """Return why the program failed, in words, or "" when it did not."""
        if self.error is not None:
            return self.error
        if self.returncode is None:
            return "program did not finish"
        if self.returncode < 0:
            try:
                name = signal.Signals(-self.returncode).name
            except ValueError:
                name = f"signal {-self.returncode}"
            return f"{self.argv[0]} was killed by {name}"
        if self.returncode != 0:
            return f"{self.argv[0]} exited with status {self.returncode}"

        return ""


class SpawnError(Exception):
    """The program could not be started; the message says why."""


def resolve_program(
    name: str, safe_path: Sequence[str], conf_dir: Path | None = None
) -> str:
    """Return the file to execute for `name`, or raise `SpawnError`.

    A name containing "/" is used as given. Any other name is looked up in
    the `safe_path` entries in order; relative entries resolve against
    `conf_dir` (the current directory when it is None).
    """
    if not name:
        raise SpawnError("program name must not be empty")
    if "/" in name:
        if not os.path.isfile(name):
            raise SpawnError(f"program not found: {name}")
        if not os.access(name, os.X_OK):
            raise SpawnError(f"program is not executable: {name}")
        return name

    not_executable: str | None = None
    for entry in safe_path:
        folder = Path(entry)
        if not folder.is_absolute() and conf_dir is not None:
            folder = conf_dir / folder
        candidate = folder / name
        if candidate.is_file():
            if os.access(candidate, os.X_OK):
                return str(candidate)
            not_executable = not_executable or str(candidate)
    if not_executable is not None:
        raise SpawnError(f"program is not executable: {not_executable}")
    searched = ":".join(safe_path) or "(empty)"
    raise SpawnError(f"program not found in safe_path {searched}: {name}")


def check_arguments(argv: Sequence[str]) -> None:
    """Raise `SpawnError` when an argument holds a NUL byte."""
    if not argv:
        raise SpawnError("command line is empty")
    for index, word in enumerate(argv):
        if "\0" in word:
            raise SpawnError(
                f"argument {index} contains a NUL byte, which no program"
                " argument can hold"
            )


class _OutputReader:
    """Split one pipe into lines, log each, keep the last ones."""

    def __init__(self, stream: str, log: Any, capture: deque[str]) -> None:
        self.stream = stream
        self.log = log
        self.capture = capture
        self.pending = bytearray()
        self.cut = 0  # bytes dropped from the current line

    def _emit(self, line: bytes) -> None:
        text = line.decode("utf-8", errors="replace").rstrip("\r")
        if self.cut:
            self.log.info(
                "program_output", stream=self.stream, line=text, cut_bytes=self.cut
            )
            self.cut = 0
        else:
            self.log.info("program_output", stream=self.stream, line=text)
        self.capture.append(text)

    def feed(self, data: bytes) -> None:
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                break
            self._add(data[start:end])
            self._emit(bytes(self.pending))
            self.pending.clear()
            start = end + 1
        self._add(data[start:])

    def _add(self, piece: bytes) -> None:
        room = MAX_LINE_BYTES - len(self.pending)
        if len(piece) > room:
            self.cut += len(piece) - max(room, 0)
            piece = piece[: max(room, 0)]
        self.pending += piece

    def close(self) -> None:
        if self.pending or self.cut:
            self._emit(bytes(self.pending))
            self.pending.clear()

    async def drain(self, pipe: asyncio.StreamReader) -> None:
        while True:
            data = await pipe.read(READ_CHUNK)
            if not data:
                break
            self.feed(data)
        self.close()


def _signal_group(pgid: int, signum: int) -> bool:
    """Send `signum` to the group; return False when no member is left."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:
        # A member changed its user id; the rest of the group still got it.
        return True

    return True


def _open_pidfd(process: asyncio.subprocess.Process) -> int | None:
    """Return a pidfd for the program, or None when it is already reaped."""
    if process.returncode is not None:
        return None
    try:
        return os.pidfd_open(process.pid)
    except (ProcessLookupError, AttributeError, OSError):
        return None


async def _leader_exit(process: asyncio.subprocess.Process, pidfd: int | None) -> None:
    """Wait until the program itself has exited, whatever holds its pipes.

    `Process.wait()` of Python 3.11 also waits for the pipes to close, which
    a process the program left behind can keep open forever; a pidfd turns
    readable when the program exits.
    """
    if pidfd is not None:
        await anyio.wait_readable(pidfd)
        return
    while process.returncode is None:
        await anyio.sleep(0.01)


async def _stop_group(
    process: asyncio.subprocess.Process, pidfd: int | None, grace: float, log: Any
) -> None:
    """SIGTERM the group, SIGKILL it after `grace`, kill what the leader left.

    Once the leader has exited, the rest of its group gets SIGKILL at once:
    those are processes it forked and did not wait for.
    """
    pgid = process.pid
    if _signal_group(pgid, signal.SIGTERM):
        with anyio.move_on_after(grace) as scope:
            await _leader_exit(process, pidfd)
        if scope.cancelled_caught:
            log.warning("program_killed", pid=pgid, grace_s=grace)
    _signal_group(pgid, signal.SIGKILL)


async def _reap(process: asyncio.subprocess.Process) -> None:
    """Wait for the program's exit status; close pipes nobody will close."""
    with anyio.move_on_after(PIPE_CLOSE_WAIT):
        await process.wait()
        return
    # A process that left the group (setsid) still holds a pipe. Closing
    # the transport stops reading it; the exit status is already known.
    # NOTE: `_transport` is private to asyncio; Process has no public close.
    process._transport.close()  # type: ignore[attr-defined]
    await process.wait()


async def run_program(
    argv: Sequence[str],
    *,
    safe_path: Sequence[str],
    conf_dir: Path | None = None,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    kill_grace: float = KILL_GRACE,
    log: Any = None,
) -> ProgramResult:
    """Run one program to its end and return its `ProgramResult`.

    When the caller's scope is cancelled, the program's process group gets
    SIGTERM, then SIGKILL after `kill_grace` seconds; the program is reaped
    before the cancellation propagates. Nothing else raises: a program that
    cannot start is a result with `error` set.
    """
    log = log if log is not None else structlog.get_logger()
    words = tuple(argv)
    result = ProgramResult(argv=words)
    started = time.monotonic()
    try:
        check_arguments(words)
        executable = resolve_program(words[0], safe_path, conf_dir)
    except SpawnError as error:
        result.error = str(error)
        return result

    try:
        process = await asyncio.create_subprocess_exec(
            executable,
            *words[1:],
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            cwd=cwd,
            env=env,
        )
    except OSError as error:
        result.error = f"cannot start {words[0]}: {error.strerror or error}"
        return result

    result.pid = process.pid
    pidfd = _open_pidfd(process)
    capture: deque[str] = deque(maxlen=CAPTURE_LINES)
    program_log = log.bind(pid=process.pid)
    drained = anyio.Event()

    async def drain() -> None:
        assert process.stdout is not None and process.stderr is not None
        async with anyio.create_task_group() as readers:
            readers.start_soon(
                _OutputReader("stdout", program_log, capture).drain, process.stdout
            )
            readers.start_soon(
                _OutputReader("stderr", program_log, capture).drain, process.stderr
            )
        drained.set()

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(drain)
            try:
                await _leader_exit(process, pidfd)
                with anyio.move_on_after(LEFTOVER_WAIT):
                    await drained.wait()
                if not drained.is_set():
                    # Processes the program left in its group hold the pipes.
                    program_log.warning("program_left_processes", pid=process.pid)
                    with anyio.CancelScope(shield=True):
                        await _stop_group(process, pidfd, kill_grace, program_log)
                    with anyio.move_on_after(PIPE_CLOSE_WAIT):
                        await drained.wait()
                    group.cancel_scope.cancel()
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await _stop_group(process, pidfd, kill_grace, program_log)
                raise
    finally:
        with anyio.CancelScope(shield=True):
            await _reap(process)
        if pidfd is not None:
            os.close(pidfd)
        result.returncode = process.returncode
        result.duration_s = time.monotonic() - started
        result.output = list(capture)

    return result
