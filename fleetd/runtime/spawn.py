"""Start programs on a worker thread and watch them from the event loop.

Design note. `loop.subprocess_exec` forks and execs on the event loop's
thread. With vfork that blocks the loop until the child has called exec,
0.5 to 2.5 ms per program on a busy 2-core machine, while every other run
waits. `subprocess.Popen` releases the GIL while it forks, so this module
starts each program on a small thread pool, and the loop goes on with
other runs meanwhile. The loop then reads both pipes with
`connect_read_pipe` and learns of the exit through a pidfd, then reaps
the program with `waitpid` on that pid alone, so no other child is touched.
With 8 programs at once, `run_program` started 1.7 to 3 times as many
/bin/true per second this way in scripts/bench/engine.py (2 CPUs, other
load on the machine).

`start_program` drives the same `asyncio.SubprocessProtocol` callbacks as
`loop.subprocess_exec` (`pipe_data_received`, `pipe_connection_lost`,
`process_exited`, `connection_lost`), and returns a handle with the
transport methods `run_program` uses. It needs `os.pidfd_open` (Linux 5.3
and later) and asyncio's own event loop; `fleetd.runtime.process` falls
back to `loop.subprocess_exec` otherwise. NOTE: on uvloop 0.23 this
module mixed up descriptors under load in scripts/bench/engine.py: some
spawns failed with "Bad file descriptor", and `add_reader` found a new
pidfd's number still registered to a pipe transport. The cause was not
traced, so uvloop keeps `loop.subprocess_exec`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import os
import signal
import subprocess
from collections.abc import Sequence

import structlog

log = structlog.get_logger()

# Spawning is short, but an exec from a slow file system can block its
# thread for a while. With four threads, one slow start stalls no others.
_SPAWN_THREADS = 4
_executor: concurrent.futures.ThreadPoolExecutor | None = None


def can_spawn_on_thread() -> bool:
    """Tell whether the running loop is asyncio's own, where this module works."""
    return isinstance(asyncio.get_running_loop(), asyncio.SelectorEventLoop)


def _spawner() -> concurrent.futures.ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = concurrent.futures.ThreadPoolExecutor(
            _SPAWN_THREADS, thread_name_prefix="fleetd-spawn"
        )
    return _executor


class _PipeReader(asyncio.Protocol):
    """Pass the data and the end of one pipe to the program's protocol."""

    def __init__(self, program: SpawnedProgram, fd: int) -> None:
        self.program = program
        self.fd = fd

    def data_received(self, data: bytes) -> None:
        self.program.protocol.pipe_data_received(self.fd, data)

    def eof_received(self) -> bool:
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.program.pipe_lost(self.fd, exc)


class SpawnedProgram:
    """A started program: its pipe transports and its exit, seen by the loop."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        protocol: asyncio.SubprocessProtocol,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.popen = popen
        self.protocol = protocol
        self.loop = loop
        self.pipes: list[asyncio.BaseTransport] = []
        self.open_pipes = {1, 2}
        self.returncode: int | None = None
        self.closed = False
        # A program that already exited is a zombie until reaped, so the
        # pidfd is valid here whatever the program did meanwhile.
        self.pidfd = os.pidfd_open(popen.pid)
        loop.add_reader(self.pidfd, self._reap)

    async def connect_pipes(self) -> None:
        for fd, pipe in ((1, self.popen.stdout), (2, self.popen.stderr)):
            assert pipe is not None
            transport, _ = await self.loop.connect_read_pipe(
                functools.partial(_PipeReader, self, fd), pipe
            )
            self.pipes.append(transport)

    def _reap(self) -> None:
        try:
            pid, status = os.waitpid(self.popen.pid, os.WNOHANG)
        except ChildProcessError:
            # Someone else reaped it (a waitpid(-1) elsewhere in the
            # process); asyncio's child watchers report 255 then too.
            log.warning("program_reaped_elsewhere", pid=self.popen.pid)
            pid, status = self.popen.pid, 255 << 8
        if pid == 0:
            return
        self.loop.remove_reader(self.pidfd)
        os.close(self.pidfd)
        self.returncode = os.waitstatus_to_exitcode(status)
        # Popen must not wait for it again, nor warn that it still runs.
        self.popen.returncode = self.returncode
        self.protocol.process_exited()
        self._check_closed()

    def pipe_lost(self, fd: int, exc: Exception | None) -> None:
        self.open_pipes.discard(fd)
        self.protocol.pipe_connection_lost(fd, exc)
        self._check_closed()

    def _check_closed(self) -> None:
        if not self.closed and not self.open_pipes and self.returncode is not None:
            self.closed = True
            self.protocol.connection_lost(None)

    def get_pid(self) -> int:
        return self.popen.pid

    def get_returncode(self) -> int | None:
        return self.returncode

    def close(self) -> None:
        """Stop reading the pipes; the exit is still watched until reaped."""
        for transport in self.pipes:
            transport.close()


async def start_program(
    protocol: asyncio.SubprocessProtocol,
    argv: Sequence[str],
    *,
    cwd: str | None,
    env: dict[str, str] | None,
) -> SpawnedProgram:
    """Start `argv` in a new session, stdin from /dev/null, output piped.

    Raises OSError when the program cannot start. The caller shields this
    from cancellation: a program started on the thread must get its handle.
    """
    loop = asyncio.get_running_loop()
    popen = await loop.run_in_executor(
        _spawner(),
        functools.partial(
            subprocess.Popen,
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            cwd=cwd,
            env=env,
        ),
    )
    program = SpawnedProgram(popen, protocol, loop)
    try:
        await program.connect_pipes()
    except BaseException:
        # Without its pipes the program could block on a full one; stop it.
        # The pidfd still reaps it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)
        program.close()
        for pipe in (popen.stdout, popen.stderr):
            if pipe is not None:
                pipe.close()
        raise

    return program
