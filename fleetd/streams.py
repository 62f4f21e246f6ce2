"""Standard streams that a fleetd process can always write to.

Two faults of the streams fleetd inherits must not reach its runs:

- A standard descriptor that the caller closed (`fleetd once 2>&-`). The
  next file fleetd opens would take its number, so a log line could land
  in a pipe to a program or in the state database. `reopen_closed` points
  each closed one at /dev/null before anything else is opened, as daemons
  do at start.
- A stream that fails on write: a reader that left (EPIPE), a full disk, an
  I/O error. Logging happens inside runs, between a lock and its
  resolution, so a raised error would leave the lock held. `LineStream`
  drops such lines and counts them instead.
"""

from __future__ import annotations

import errno
import io
import os
import sys
from collections.abc import Callable
from typing import TextIO

__all__ = ["LineStream", "reopen_closed", "silence_descriptor", "write_stdout"]


def reopen_closed() -> None:
    """Open /dev/null on each of descriptors 0, 1 and 2 that is closed.

    Python starts with `sys.stdin`, `sys.stdout` or `sys.stderr` set to
    None for a closed descriptor; each gets a text stream on /dev/null.
    """
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        try:
            os.fstat(fd)
            continue
        except OSError as error:
            if error.errno != errno.EBADF:
                continue
        devnull = os.open(os.devnull, os.O_RDWR)
        if devnull != fd:
            os.dup2(devnull, fd)
            os.close(devnull)
        if getattr(sys, name) is None:
            stream = open(  # noqa: SIM115 - lives as long as the process
                fd, mode, encoding="utf-8", errors="backslashreplace", closefd=False
            )
            setattr(sys, name, stream)


def silence_descriptor(stream: TextIO) -> None:
    """Point the descriptor of `stream` at /dev/null.

    For a stream whose writes failed: the interpreter flushes it at exit,
    and when that flush fails too, Python prints "Exception ignored" and
    exits with status 120.
    """
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not backed by a descriptor, so nothing is flushed to one
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


class LineStream:
    """A file-like output that drops the lines it cannot write.

    A plain file stream is written with `os.write` on its descriptor, so a
    line that fails leaves nothing in a buffer for a later write or for the
    flush at exit. Other streams (`io.StringIO` in tests, a wrapper that
    draws a progress line) are written and flushed as usual. When writing
    works again after some lines were dropped, `dropped_line(count)` is
    written first. `on_failure(error)` is called at the first failure after
    a line that was written.
    """

    def __init__(
        self,
        stream: TextIO,
        dropped_line: Callable[[int], str] | None = None,
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.stream = stream
        self.dropped = 0
        self.error: BaseException | None = None
        self._dropped_line = dropped_line
        self._on_failure = on_failure
        self._encoding = getattr(stream, "encoding", None) or "utf-8"
        self._fd: int | None = None
        if isinstance(stream, io.TextIOWrapper):
            try:
                self._fd = stream.fileno()
                stream.flush()  # lines buffered in the stream go out before ours
            except (OSError, ValueError):
                self._fd = None

    def write(self, text: str) -> bool:
        """Write `text`; return False when it was dropped."""
        if self.dropped and self._dropped_line is not None:
            if not self._write(self._dropped_line(self.dropped)):
                self.dropped += 1
                return False
            self.dropped = 0
        if self._write(text):
            self.dropped = 0
            return True
        self.dropped += 1
        if self.dropped == 1 and self._on_failure is not None:
            assert self.error is not None
            self._on_failure(self.error)

        return False

    def flush(self) -> None:
        """Do nothing: each line goes out in its `write`."""

    def _write(self, text: str) -> bool:
        try:
            if self._fd is None:
                self.stream.write(text)
                self.stream.flush()
                return True
            data = text.encode(self._encoding, "backslashreplace")
            while data:
                data = data[os.write(self._fd, data) :]
        except (OSError, ValueError) as error:
            # OSError: EPIPE, ENOSPC, EIO, EAGAIN. ValueError: a closed stream.
            self.error = error
            return False

        return True


_stdout: LineStream | None = None


def write_stdout(text: str) -> bool:
    """Write `text` to standard output; return False when it was dropped.

    ECHO lines and `once` reports go here. A reader that left or a full
    disk must not fail the runs in progress, so a line that cannot be
    written is dropped, and the first of a series logs `stdout_failed`.
    """
    global _stdout
    stream = sys.stdout
    if stream is None:
        return False  # descriptor 1 was closed when Python started
    if _stdout is None or _stdout.stream is not stream:
        _stdout = LineStream(stream, on_failure=_log_stdout_failure)

    return _stdout.write(text)


def _log_stdout_failure(error: BaseException) -> None:
    from fleetd.logs import get_logger

    get_logger().warning(
        "stdout_failed",
        error=getattr(error, "strerror", None) or str(error),
        effect="ECHO lines and reports are dropped until writing works again",
    )
