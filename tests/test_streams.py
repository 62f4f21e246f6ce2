"""Standard descriptors reopened at start, and log lines that cannot be written."""

from __future__ import annotations

import fcntl
import io
import os
import subprocess
import sys

from fleetd.streams import LineStream


def dropped_line(count: int) -> str:
    return f"dropped {count}\n"


def test_reopen_closed_points_at_devnull() -> None:
    script = (
        "import os, sys;"
        "from fleetd.streams import reopen_closed;"
        "reopen_closed();"
        "print(os.readlink('/proc/self/fd/2'));"
        "print(os.readlink('/proc/self/fd/0'));"
        "print(sys.stderr is not None, sys.stdin is not None);"
        "sys.stderr.write('to devnull\\n')"
    )
    result = subprocess.run(
        ["sh", "-c", 'exec "$@" 2>&- <&-', "sh", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [os.devnull, os.devnull, "True True"]


def test_log_stream_drops_line_on_broken_pipe() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    with open(write_end, "w") as stream:
        log = LineStream(stream, dropped_line)
        log.write("lost\n")
        log.write("lost too\n")

        assert log.dropped == 2


def test_log_stream_reports_dropped_lines() -> None:
    read_end, write_end = os.pipe()
    flags = fcntl.fcntl(write_end, fcntl.F_GETFL)
    fcntl.fcntl(write_end, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    capacity = fcntl.fcntl(write_end, fcntl.F_GETPIPE_SZ)
    with open(write_end, "w") as stream, open(read_end, "rb") as reader:
        log = LineStream(stream, dropped_line)
        log.write("x" * capacity)  # fills the pipe
        log.write("lost\n")  # EAGAIN
        assert log.dropped == 1
        assert len(reader.read(capacity)) == capacity

        log.write("kept\n")

        assert log.dropped == 0
        assert os.read(read_end, 100) == b"dropped 1\nkept\n"


def test_log_stream_without_descriptor() -> None:
    stream = io.StringIO()
    log = LineStream(stream, dropped_line)
    log.write("kept\n")
    stream.close()
    log.write("lost\n")

    assert log.dropped == 1
