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
  grow memory. Past `MAX_LOGGED_BYTES` of output, lines are only counted:
  one `program_output_cut` warning gives the count, and the last
  `CAPTURE_LINES` lines follow it, so a program printing 100 MB cannot
  flood the log or keep the run busy formatting log events. The event loop reads each pipe as data arrives, so a full
  pipe never blocks the program.
- Cancellation (a TIMEOUT, a PARALLEL sibling failing, shutdown) sends
  SIGTERM to the group, then SIGKILL after `kill_grace` seconds, and waits
  for the program in a shielded scope, so it is always reaped. Processes the
  program left behind in its group when it exited are killed the same way,
  as systemd does for a unit's control group. NOTE: a process that left
  the group with setsid() escapes both; its pipes are closed after
  `PIPE_CLOSE_WAIT` seconds so that the run still ends.
- Spawn failures (not found, not executable, NUL in an argument) come back
  as a failed `ProgramResult`; no exception escapes `run_program` other
  than cancellation.

Programs start with `os.posix_spawn` and are watched through a pidfd
(`fleetd.runtime.spawn`), or through `loop.subprocess_exec` where pidfds
are missing. Either way a protocol's callbacks receive the output,
rather than the streams of `anyio.open_process` or
`asyncio.create_subprocess_exec`: those add a reader task per pipe, which
measured slower in scripts/bench/engine.py. On Python 3.11 the Engine
also installs a pidfd child watcher for `loop.subprocess_exec`
(`fleetd.runtime.loop`).
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import msgspec
import structlog

from fleetd.runtime.loop import pidfd_supported
from fleetd.runtime.spawn import SpawnedProgram, start_program

MAX_LINE_BYTES = 8192  # longer output lines are cut
# Output of one program logged line by line, stdout and stderr together;
# past it, only the count and the last CAPTURE_LINES lines are logged.
MAX_LOGGED_BYTES = 1 << 20
READ_CHUNK = 65536
CAPTURE_LINES = 50  # lines of output kept in the result, the last ones
# Characters of the program's last stderr line that a failure's reason shows.
REASON_LINE_CHARS = 200
KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
LEFTOVER_WAIT = 0.2  # seconds the pipes may stay open after the program exits
PIPE_CLOSE_WAIT = 1.0  # seconds to wait for pipes once the group is killed
# Start programs with posix_spawn and a pidfd (fleetd.runtime.spawn) where
# pidfds exist; otherwise through loop.subprocess_exec.
PIDFD_SUPPORTED = pidfd_supported()


class ProgramResult(msgspec.Struct):
    """What became of one program: exit status, or why it never started.

    `returncode` is None when the program did not start (then `error` gives
    the reason) or was cancelled before it exited; a negative value is the signal
    that ended it. `output` contains the last lines of stdout and stderr, and
    `last_error` the last stderr line that is not blank, which the reason
    for a failure shows.
    """

    argv: tuple[str, ...]
    returncode: int | None = None
    error: str | None = None
    pid: int | None = None
    duration_s: float = 0.0
    output: list[str] = msgspec.field(default_factory=list)
    last_error: str | None = None

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
            return f"{self.argv[0]} was killed by {name}{self._stderr_note()}"
        if self.returncode != 0:
            return (
                f"{self.argv[0]} exited with status {self.returncode}"
                f"{self._stderr_note()}"
            )

        return ""

    def _stderr_note(self) -> str:
        line = self.last_error
        if not line:
            return ""
        if len(line) > REASON_LINE_CHARS:
            line = line[: REASON_LINE_CHARS - 3] + "..."
        line = line.replace("\0", "\\x00")
        return f" (stderr: {line})"


class SpawnError(Exception):
    """The program could not be started; the message gives the reason."""


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
        candidate = _candidate(entry, conf_dir, name)
        if os.path.isfile(candidate):
            if os.access(candidate, os.X_OK):
                return candidate
            not_executable = not_executable or candidate
    if not_executable is not None:
        raise SpawnError(f"program is not executable: {not_executable}")
    searched = ":".join(safe_path) or "(empty)"
    raise SpawnError(
        f"program not found in safe_path {searched}: {name}"
        " (add its folder to [daemon] safe_path, or give its absolute path)"
    )


# Program name, safe_path and conf dir -> (path found, monotonic time until
# which it is used without looking again).
_found: dict[tuple[str, tuple[str, ...], Path | None], tuple[str, float]] = {}
#: Seconds a program found in safe_path is started without a new lookup.
FOUND_TTL = 1.0
_FOUND_MAX = 1024


def find_program(
    name: str, safe_path: Sequence[str], conf_dir: Path | None = None
) -> tuple[str, bool]:
    """Return `resolve_program`'s path, and whether it came from the cache.

    A lookup is reused for `FOUND_TTL` seconds, because two file checks
    per program were a visible part of starting /bin/true. A program
    installed meanwhile earlier in safe_path is picked up within that time;
    one removed makes the start fail, and the caller then looks again.
    """
    key = (name, tuple(safe_path), conf_dir)
    now = time.monotonic()
    hit = _found.get(key)
    if hit is not None and hit[1] > now:
        return hit[0], True
    path = resolve_program(name, safe_path, conf_dir)
    if len(_found) >= _FOUND_MAX:
        _found.clear()
    _found[key] = (path, now + FOUND_TTL)

    return path, False


@functools.lru_cache(maxsize=1024)
def _candidate(entry: str, conf_dir: Path | None, name: str) -> str:
    """Return the path of `name` in the `safe_path` entry `entry`.

    Cached: the text depends only on the arguments, and building Path
    objects for every program measured as a visible part of spawning
    /bin/true. Whether the file exists is checked on every call.
    """
    folder = Path(entry)
    if not folder.is_absolute() and conf_dir is not None:
        folder = conf_dir / folder

    return str(folder / name)


def check_arguments(argv: Sequence[str]) -> None:
    """Raise `SpawnError` when an argument contains a NUL byte."""
    if not argv:
        raise SpawnError("command line is empty")
    for index, word in enumerate(argv):
        if "\0" in word:
            raise SpawnError(
                f"argument {index} contains a NUL byte, which no program"
                " argument can hold"
            )


class _LogBudget:
    """Bytes of output one program may still have logged, for both pipes."""

    def __init__(self, size: int) -> None:
        self.remaining = size


class _OutputReader:
    """Split one pipe into lines, log each, keep the last ones.

    Once the program's output exceeds its `_LogBudget`, lines are no longer
    decoded or logged one by one: they are counted, and only the last
    `CAPTURE_LINES` are kept. `close` then logs `program_output_cut` with
    the count of lines and bytes past the budget, followed by those last
    lines, so the end of the output, where errors usually are, is logged.
    """

    def __init__(
        self,
        stream: str,
        log: Any,
        capture: deque[str],
        redact: Callable[[str], str] | None = None,
        budget: _LogBudget | None = None,
    ) -> None:
        self.stream = stream
        self.log = log
        self.capture = capture
        self.redact = redact
        self.budget = budget if budget is not None else _LogBudget(MAX_LOGGED_BYTES)
        self.pending = bytearray()
        self.cut = 0  # bytes dropped from the current line
        self.tail: deque[bytes] | None = None  # the last lines, once over budget
        self.skipped_lines = 0
        self.skipped_bytes = 0
        self.last_line: str | None = None  # the last one that is not blank

    def _emit(self, line: bytes) -> None:
        text = line.decode("utf-8", errors="replace").rstrip("\r")
        if self.redact is not None:
            text = self.redact(text)
        if self.cut:
            self.log.info(
                "program_output", stream=self.stream, line=text, cut_bytes=self.cut
            )
            self.cut = 0
        else:
            self.log.info("program_output", stream=self.stream, line=text)
        self.capture.append(text)
        if text and not text.isspace():
            self.last_line = text

    def feed(self, data: bytes) -> None:
        if self.tail is not None:
            self._feed_over_budget(data)
            return
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                break
            self._add(data[start:end])
            self.budget.remaining -= len(self.pending) + self.cut + 1
            self._emit(bytes(self.pending))
            self.pending.clear()
            start = end + 1
            if self.budget.remaining <= 0:
                self.tail = deque(maxlen=CAPTURE_LINES)
                self._feed_over_budget(data[start:])
                return
        self._add(data[start:])

    def _feed_over_budget(self, data: bytes) -> None:
        """Count the lines of `data` and keep the last ones, without logging."""
        assert self.tail is not None
        self.skipped_bytes += len(data)
        last = data.rfind(b"\n")
        if last < 0:
            self._add(data)
            return
        lines = data[:last].split(b"\n")
        self.skipped_lines += len(lines)
        self._add(lines[0])
        lines[0] = bytes(self.pending)
        self.pending.clear()
        self.tail.extend(line[:MAX_LINE_BYTES] for line in lines[-CAPTURE_LINES:])
        self._add(data[last + 1 :])

    def _add(self, piece: bytes) -> None:
        room = MAX_LINE_BYTES - len(self.pending)
        if len(piece) > room:
            self.cut += len(piece) - max(room, 0)
            piece = piece[: max(room, 0)]
        self.pending += piece

    def close(self) -> None:
        if self.tail is not None:
            if self.pending:
                self.skipped_lines += 1
                self.tail.append(bytes(self.pending))
                self.pending.clear()
            # `lines` and `bytes` count all output past the budget, the
            # last `tail_lines` of which are logged after this event.
            self.log.warning(
                "program_output_cut",
                stream=self.stream,
                lines=self.skipped_lines,
                bytes=self.skipped_bytes,
                tail_lines=len(self.tail),
                max_logged_bytes=MAX_LOGGED_BYTES,
            )
            self.cut = 0
            for line in self.tail:
                self._emit(line[:MAX_LINE_BYTES])
            self.tail.clear()
            return
        if self.pending or self.cut:
            self._emit(bytes(self.pending))
            self.pending.clear()


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


class _ProgramProtocol(asyncio.SubprocessProtocol):
    """Feed each pipe's data to its line reader; note exit and close.

    Callbacks instead of reader tasks: the event loop hands over output as
    it arrives, so capturing it costs no task per pipe. `exited` is set
    when the program has exited (the child watcher reaped it), `closed`
    once it has exited and both pipes are closed.
    """

    def __init__(self, out: _OutputReader, err: _OutputReader) -> None:
        self.readers = {1: out, 2: err}
        self.exited = asyncio.Event()
        self.closed = asyncio.Event()

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        assert isinstance(data, bytes)
        self.readers[fd].feed(data)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self.readers[fd].close()

    def process_exited(self) -> None:
        self.exited.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()


async def _stop_group(
    pid: int, protocol: _ProgramProtocol, grace: float, log: Any
) -> None:
    """SIGTERM the group, SIGKILL it after `grace`, kill what the leader left.

    Once the leader has exited, the rest of its group gets SIGKILL at once:
    those are processes it forked and did not wait for.
    """
    if not protocol.exited.is_set() and _signal_group(pid, signal.SIGTERM):
        with anyio.move_on_after(grace) as scope:
            await protocol.exited.wait()
        if scope.cancelled_caught:
            log.warning("program_killed", pid=pid, grace_s=grace)
    _signal_group(pid, signal.SIGKILL)


async def _finish(
    transport: asyncio.SubprocessTransport | SpawnedProgram,
    protocol: _ProgramProtocol,
) -> None:
    """Wait for the exit status, and stop reading pipes that stay open."""
    if not protocol.closed.is_set():
        with anyio.move_on_after(PIPE_CLOSE_WAIT):
            await protocol.closed.wait()
    # A process that left the group (setsid) may still hold a pipe; closing
    # the transport stops reading it.
    transport.close()
    await protocol.exited.wait()


async def run_program(
    argv: Sequence[str],
    *,
    safe_path: Sequence[str],
    conf_dir: Path | None = None,
    env: dict[str, str] | None = None,
    kill_grace: float = KILL_GRACE,
    log: Any = None,
    redact: Callable[[str], str] | None = None,
) -> ProgramResult:
    """Run one program to its end and return its `ProgramResult`.

    `redact`, when given, is applied to each output line before it is
    logged or kept (to mask secrets).

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
        executable, cached = find_program(words[0], safe_path, conf_dir)
    except SpawnError as error:
        result.error = str(error)
        return result

    capture: deque[str] = deque(maxlen=CAPTURE_LINES)
    program_log = _LazyBound(log)
    budget = _LogBudget(MAX_LOGGED_BYTES)
    errors = _OutputReader("stderr", program_log, capture, redact, budget)
    protocol = _ProgramProtocol(
        _OutputReader("stdout", program_log, capture, redact, budget), errors
    )
    transport: asyncio.SubprocessTransport | SpawnedProgram
    try:
        if PIDFD_SUPPORTED:
            # Synchronous, so no cancellation can come between the start
            # and the handle that reaps the program and kills its group.
            try:
                transport = start_program(protocol, (executable, *words[1:]), env=env)
            except (FileNotFoundError, PermissionError):
                if not cached:
                    raise
                # Gone or changed since it was found: look it up again.
                _found.pop((words[0], tuple(safe_path), conf_dir), None)
                executable = resolve_program(words[0], safe_path, conf_dir)
                transport = start_program(protocol, (executable, *words[1:]), env=env)
        else:
            # Shielded: cancelled half-way, the program would run on without
            # anyone to reap it or to kill its group.
            with anyio.CancelScope(shield=True):
                loop = asyncio.get_running_loop()
                transport, _ = await loop.subprocess_exec(
                    lambda: protocol,
                    executable,
                    *words[1:],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    start_new_session=True,
                    env=env,
                )
    except SpawnError as error:
        result.error = str(error)
        return result
    except OSError as error:
        result.error = f"cannot start {words[0]}: {error.strerror or error}"
        missing = _missing_interpreter(executable, error)
        if missing is not None:
            result.error += f" (its interpreter {missing} was not found)"
        return result

    pid = transport.get_pid()
    result.pid = program_log.pid = pid
    try:
        try:
            await protocol.exited.wait()
            if not protocol.closed.is_set():
                with anyio.move_on_after(LEFTOVER_WAIT):
                    await protocol.closed.wait()
            if not protocol.closed.is_set():
                # Processes the program left in its group hold the pipes.
                program_log.warning("program_left_processes")
                with anyio.CancelScope(shield=True):
                    await _stop_group(pid, protocol, kill_grace, program_log)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await _stop_group(pid, protocol, kill_grace, program_log)
            raise
    finally:
        if protocol.exited.is_set() and protocol.closed.is_set():
            # The usual end: nothing to wait for, so no cancel scope either.
            transport.close()
        else:
            with anyio.CancelScope(shield=True):
                await _finish(transport, protocol)
        result.returncode = transport.get_returncode()
        result.duration_s = time.monotonic() - started
        result.output = list(capture)
        result.last_error = errors.last_line

    return result


def _missing_interpreter(executable: str, error: OSError) -> str | None:
    """Return the `#!` interpreter that made exec fail with ENOENT, if any.

    The kernel reports a script whose interpreter is missing as "No such
    file or directory", although the script itself exists.
    """
    if not isinstance(error, FileNotFoundError) or not os.path.isfile(executable):
        return None
    try:
        with open(executable, "rb") as script:
            first = script.readline(256)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].split()
    if not words:
        return None
    interpreter = os.fsdecode(words[0])

    return None if os.path.exists(interpreter) else interpreter


class _LazyBound:
    """The caller's logger with `pid=` added, bound only when first used.

    Most programs print nothing, and binding a structlog logger for each
    one measured as a noticeable part of spawning /bin/true.
    """

    def __init__(self, log: Any) -> None:
        self._log = log
        self._bound: Any = None
        self.pid: int | None = None

    def _get(self) -> Any:
        if self._bound is None:
            if self.pid is None:
                # Output can arrive before the spawn returns the pid; bind
                # once the pid is known, so later lines carry it.
                return self._log
            self._bound = self._log.bind(pid=self.pid)
        return self._bound

    def info(self, event: str, **fields: Any) -> None:
        self._get().info(event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._get().warning(event, **fields)
