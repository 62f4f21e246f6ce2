"""Fixtures of the daemon tests: listening datagram sockets and their parsers."""

from __future__ import annotations

import array
import logging
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog


class DatagramListener:
    """A unix datagram socket in a temporary folder that a test reads from."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(str(path))
        self.socket.settimeout(5.0)

    def receive(self, timeout: float = 5.0) -> bytes:
        """Return the next datagram; a datagram carrying a file (memfd) returns its content."""
        self.socket.settimeout(timeout)
        fds = array.array("i")
        data, ancillary, _flags, _addr = self.socket.recvmsg(
            1 << 20, socket.CMSG_SPACE(fds.itemsize)
        )
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
        for fd in fds:
            with os.fdopen(fd, "rb") as file:
                file.seek(0)
                data = file.read()

        return data

    def close(self) -> None:
        self.socket.close()


def parse_journal_entry(data: bytes) -> dict[str, str]:
    """Parse one datagram of journald's native protocol into its fields."""
    fields: dict[str, str] = {}
    position = 0
    while position < len(data):
        newline = data.index(b"\n", position)
        line = data[position:newline]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            fields[key.decode()] = value.decode()
            position = newline + 1
        else:
            # Binary form: NAME \n little-endian u64 length, value, \n.
            (length,) = struct.unpack_from("<Q", data, newline + 1)
            start = newline + 1 + 8
            fields[line.decode()] = data[start : start + length].decode()
            position = start + length + 1

    return fields


def parse_notify_message(data: bytes) -> dict[str, str]:
    """Parse one sd_notify datagram into its assignments."""
    message: dict[str, str] = {}
    for line in data.decode().splitlines():
        key, _, value = line.partition("=")
        message[key] = value

    return message


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[DatagramListener]:
    # Unix socket paths are limited to 108 bytes; tmp_path can be long.
    path = tmp_path / "s.sock"
    if len(str(path)) > 100:
        pytest.skip("temporary folder path too long for a unix socket")
    sock = DatagramListener(path)
    yield sock
    sock.close()


@pytest.fixture(autouse=True)
def reset_structlog() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def parse_journal() -> object:
    return parse_journal_entry


@pytest.fixture
def parse_notify() -> object:
    return parse_notify_message
