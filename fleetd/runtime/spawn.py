"""Start programs with posix_spawn and watch them from the event loop.

Design note. `loop.subprocess_exec` and `asyncio.create_subprocess_exec`
go through `subprocess.Popen`, a pipe transport per stream and a child
watcher, which is several hundred microseconds of Python per program.
This module does the least a program needs: two pipes, `os.posix_spawn`
and a pidfd for the program's exit. glibc spawns with CLONE_VFORK, so the
loop waits only until the child has called exec. The three descriptors
go into one epoll instance per event loop, which the loop watches as one
descriptor. In scripts/bench/engine.py on 2 CPUs it started 1.2 times as
many /bin/true per second as `create_subprocess_exec` one at a time, and
1.5 times as many with 8 at once.

Everything happens on the event loop's thread. With spawns on a thread
pool, uvloop once found a descriptor that one thread had closed reused by
another while still registered with the loop. One thread rules that out.

What `subprocess.Popen` would otherwise do is done here too. stdin is
/dev/null, and the program starts in a new session, so its group can be
killed. SIGPIPE and SIGXFSZ are reset to their defaults and no signal is
blocked. Descriptors other than 0, 1 and 2 are not inherited. Python
opens its own with O_CLOEXEC, and so does SQLite; descriptors that
fleetd itself inherited open are marked close-on-exec before the first
program starts. `posix_spawn` has no
working-directory action before Python 3.13, so programs start in the
daemon's directory.

`start_program` drives the callbacks of an `asyncio.SubprocessProtocol`
(`pipe_data_received`, `pipe_connection_lost`, `process_exited`,
`connection_lost`), as `loop.subprocess_exec` does, and returns a handle
with the transport methods `run_program` uses. It needs `os.pidfd_open`
(Linux 5.3 and later); `fleetd.runtime.process` falls back to
`loop.subprocess_exec` without it.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
import select
import signal
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fleetd.logs import get_logger

log = get_logger()

READ_CHUNK = 65536
_DEFAULT_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)


class _Watcher:
    """One epoll instance for the pipes and pidfds of one event loop's programs.

    The loop watches only this instance's descriptor. Registering a pipe
    here is one system call, where `loop.add_reader` builds a handle and a
    selector key for each of the three descriptors of every program.
    Level-triggered: a handler that leaves data unread is called again.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.epoll = select.epoll()
        # Descriptor -> (handler, the context of the run that registered it).
        self.handlers: dict[int, tuple[Callable[[], None], contextvars.Context]] = {}
        loop.add_reader(self.epoll.fileno(), self._dispatch)
        # Closed with the loop's last reference, because a closed loop
        # calls no reader and has no hook that reports its closing.
        weakref.finalize(loop, self.epoll.close)

    def add(
        self, fd: int, handler: Callable[[], None], context: contextvars.Context
    ) -> None:
        """Call `handler` in `context` whenever `fd` is readable.

        The loop runs `_dispatch` in the context of whichever task made this
        watcher, so each handler needs the context of its own run: the
        events it logs carry that run's record and run id.
        """
        self.epoll.register(fd, select.EPOLLIN)
        self.handlers[fd] = (handler, context)

    def remove(self, fd: int) -> None:
        self.epoll.unregister(fd)
        del self.handlers[fd]

    def _dispatch(self) -> None:
        for fd, _events in self.epoll.poll(0):
            entry = self.handlers.get(fd)
            if entry is not None:
                handler, context = entry
                context.run(handler)


_watchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Watcher] = (
    weakref.WeakKeyDictionary()
)


def _watcher(loop: asyncio.AbstractEventLoop) -> _Watcher:
    watcher = _watchers.get(loop)
    if watcher is None:
        watcher = _watchers[loop] = _Watcher(loop)
    return watcher


def _environment() -> Mapping[Any, Any]:
    """Return this process's environment in a form posix_spawn reads fast.

    `os.environ` decodes every name and value on each pass, which took a
    third of the time of posix_spawn for /bin/true. Its dict of bytes
    (`_data`, present since Python 3.2 on POSIX) contains the same entries,
    changes included, and iterates in C.
    """
    return getattr(os.environ, "_data", os.environ)


class SpawnedProgram:
    """A started program: its output pipes and its exit, seen by the loop."""

    __slots__ = ("closed", "pid", "pidfd", "pipes", "protocol", "returncode", "watcher")

    def __init__(
        self,
        watcher: _Watcher,
        protocol: asyncio.SubprocessProtocol,
        pid: int,
        pidfd: int,
        pipes: dict[int, int],
    ) -> None:
        self.watcher = watcher
        self.protocol = protocol
        self.pid = pid
        # Stream number (1 or 2) to the read end of its pipe, while open.
        self.pipes = pipes
        self.returncode: int | None = None
        self.closed = False
        self.pidfd = pidfd
        context = contextvars.copy_context()
        watcher.add(pidfd, self._reap, context)
        for stream, fd in pipes.items():
            watcher.add(fd, functools.partial(self._read, stream, fd), context)

    def _read(self, stream: int, fd: int) -> None:
        try:
            data = os.read(fd, READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            self._close_pipe(stream, error)
            return
        if data:
            self.protocol.pipe_data_received(stream, data)
        else:
            self._close_pipe(stream, None)

    def _close_pipe(self, stream: int, error: Exception | None) -> None:
        fd = self.pipes.pop(stream, None)
        if fd is None:
            return
        self.watcher.remove(fd)
        os.close(fd)
        self.protocol.pipe_connection_lost(stream, error)
        self._check_closed()

    def _reap(self) -> None:
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            # Someone else reaped it (a waitpid(-1) elsewhere in the
            # process); asyncio's child watchers report 255 then too.
            log.warning("program_reaped_elsewhere", pid=self.pid)
            pid, status = self.pid, 255 << 8
        if pid == 0:
            return
        self.watcher.remove(self.pidfd)
        os.close(self.pidfd)
        self.returncode = os.waitstatus_to_exitcode(status)
        self.protocol.process_exited()
        self._check_closed()

    def _check_closed(self) -> None:
        if not self.closed and not self.pipes and self.returncode is not None:
            self.closed = True
            self.protocol.connection_lost(None)

    def get_pid(self) -> int:
        return self.pid

    def get_returncode(self) -> int | None:
        return self.returncode

    def close(self) -> None:
        """Stop reading the pipes; the exit is still watched until reaped."""
        for stream in list(self.pipes):
            self._close_pipe(stream, None)


_inherited_closed = False


def _close_inherited_on_exec() -> None:
    """Mark every descriptor above 2 close-on-exec, once per process.

    `subprocess.Popen` closes them in the child (`close_fds`), which
    posix_spawn cannot do. Without this, a descriptor that fleetd's parent
    left open (a pipe to a supervisor, say) would reach every program, and
    a program that stays in the background would keep it open.
    """
    global _inherited_closed
    if _inherited_closed:
        return
    _inherited_closed = True
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return
    for name in names:
        fd = int(name)
        if fd > 2:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass  # closed meanwhile (the listing's own descriptor)


def start_program(
    protocol: asyncio.SubprocessProtocol,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
) -> SpawnedProgram:
    """Start `argv[0]` (a path) in a new session, stdin from /dev/null.

    Raises OSError when the program cannot start (the error of its exec).
    The caller must be on the running event loop's thread.
    """
    loop = asyncio.get_running_loop()
    _close_inherited_on_exec()
    out_read, out_write = os.pipe()
    try:
        err_read, err_write = os.pipe()
    except BaseException:
        os.close(out_read)
        os.close(out_write)
        raise
    try:
        pid = os.posix_spawn(
            argv[0],
            list(argv),
            _environment() if env is None else env,
            file_actions=[
                # Opened for each program, read-write as subprocess.DEVNULL
                # is: file status flags that one program sets on its stdin
                # (O_NONBLOCK) must not reach the next.
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDWR, 0),
                (os.POSIX_SPAWN_DUP2, out_write, 1),
                (os.POSIX_SPAWN_DUP2, err_write, 2),
            ],
            setsid=True,
            setsigdef=_DEFAULT_SIGNALS,
            setsigmask=(),
        )
    except BaseException:
        for fd in (out_read, err_read):
            os.close(fd)
        raise
    finally:
        os.close(out_write)
        os.close(err_write)
    try:
        # A program that already exited is a zombie until reaped, so the
        # pidfd is valid here whatever the program did meanwhile.
        pidfd = os.pidfd_open(pid)
    except BaseException:
        # Without a pidfd the program would never be reaped: kill and reap it.
        os.killpg(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        for fd in (out_read, err_read):
            os.close(fd)
        raise
    os.set_blocking(out_read, False)
    os.set_blocking(err_read, False)

    pipes = {1: out_read, 2: err_read}

    return SpawnedProgram(_watcher(loop), protocol, pid, pidfd, pipes)
