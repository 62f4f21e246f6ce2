"""Standard streams that a fleetd process can always write to.

Two faults of the streams fleetd inherits must not reach its runs:

- A standard descriptor that the caller closed (`fleetd once 2>&-`). The
  next file fleetd opens would take its number, so a log line could land
  in a pipe to a program or in the state database. `reopen_closed` points
  each closed one at /dev/null before anything else is opened, as daemons
  do at start.
- A stream that fails on write: a reader that left (EPIPE), a full disk, an
  I/O error. Logging happens inside runs, between a lock and its
  resolution, so a raised error would leave the lock held. `LogStream`
  drops such lines and counts them instead.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable
from typing import TextIO

__all__ = ["LogStream", "reopen_closed", "silence_descriptor"]


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
    and a flush that fails again prints a traceback and exits with 120.
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


class LogStream:
    """A file-like log output that drops the lines it cannot write.

    Lines go straight to the stream's descriptor with `os.write`, so a
    line that fails leaves nothing in a buffer for a later write or for the
    flush at exit. Streams without a descriptor (`io.StringIO` in tests)
    are written and flushed as usual. When writing works again after some
    lines were dropped, `dropped_line(count)` is written first.
    """

    def __init__(
        self, stream: TextIO, dropped_line: Callable[[int], str] | None = None
    ) -> None:
        self.stream = stream
        self.dropped = 0
        self._dropped_line = dropped_line
        self._encoding = getattr(stream, "encoding", None) or "utf-8"
        try:
            self._fd: int | None = stream.fileno()
            stream.flush()  # lines buffered in the stream go out before ours
        except (AttributeError, OSError, ValueError):
            self._fd = None

    def write(self, text: str) -> None:
        if self.dropped and self._dropped_line is not None:
            if not self._write(self._dropped_line(self.dropped)):
                self.dropped += 1
                return
            self.dropped = 0
        if not self._write(text):
            self.dropped += 1

    def flush(self) -> None:
        """Do nothing: every line is written when it is logged."""

    def _write(self, text: str) -> bool:
        try:
            if self._fd is None:
                self.stream.write(text)
                self.stream.flush()
                return True
            data = text.encode(self._encoding, "backslashreplace")
            while data:
                data = data[os.write(self._fd, data) :]
        except (OSError, ValueError):
            # OSError: EPIPE, ENOSPC, EIO, EAGAIN. ValueError: a closed stream.
            return False

        return True
