"""journald output: native journal entries from structlog event dicts.

Each event becomes one entry sent to journald's native socket with
`MESSAGE`, a syslog `PRIORITY`, `SYSLOG_IDENTIFIER=fleetd`, `EVENT` and
every bound key as an upper-case field (`AGENT`, `MNEMONIC`, `WORKFLOW`,
`RECORD`, `PHASE`, `RUN_ID`, ...), so `journalctl AGENT=x` filters on them.

The entries go through `logging_journald.JournaldTransport`, a maintained
pure-Python client of journald's native protocol: it writes the binary
length-prefixed form for values that contain newlines and passes an entry
too large for one datagram as a sealed memfd. `systemd-python` would do the
same but needs the libsystemd headers and a C compiler to install. What is
written here by hand is the structlog side, which no maintained package
offers: the renderer that turns an event dict into journal fields and the
wrapped logger that sends them.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from structlog.typing import EventDict, WrappedLogger

__all__ = [
    "JOURNAL_SOCKET",
    "SYSLOG_PRIORITY",
    "JournalLogger",
    "JournaldRenderer",
    "journal_stream_matches",
]

# syslog(3) priority numbers, as the journal's PRIORITY field takes them.
SYSLOG_PRIORITY: Mapping[str, int] = {
    "emergency": 0,
    "alert": 1,
    "critical": 2,
    "error": 3,
    "warning": 4,
    "notice": 5,
    "info": 6,
    "debug": 7,
}

JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
SYSLOG_IDENTIFIER = "fleetd"


class JournaldRenderer:
    """Turn an event dict into the fields of one native journal entry.

    `MESSAGE` is the event name followed by the other keys as `key=value`,
    so `journalctl` without `-o json` still shows everything; each key is
    also its own upper-case field. Keys that are not valid journal field
    names are rewritten (`-` and other characters become `_`, a leading
    digit or underscore gets a `F` in front), and keys that would collide
    with the fields set here get a `FLEETD_` prefix. Values of None are
    left out; dicts and lists are sent as JSON.

    Args:
        identifier: the `SYSLOG_IDENTIFIER` field.
    """

    _RESERVED = frozenset(
        {
            "MESSAGE",
            "MESSAGE_ID",
            "PRIORITY",
            "SYSLOG_IDENTIFIER",
            "SYSLOG_FACILITY",
            "SYSLOG_PID",
            "EVENT",
            "CODE_FILE",
            "CODE_LINE",
            "CODE_FUNC",
            "ERRNO",
            "TRACEBACK",
        }
    )

    def __init__(self, identifier: str = SYSLOG_IDENTIFIER) -> None:
        self._identifier = identifier
        self._names: dict[str, str] = {}

    def __call__(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> tuple[tuple[list[tuple[str, Any]]], dict[str, Any]]:
        level = event_dict.pop("level", method_name)
        event = str(event_dict.pop("event", ""))
        event_dict.pop("timestamp", None)
        traceback = event_dict.pop("exception", None)

        fields: list[tuple[str, Any]] = []
        words = [event]
        for key, value in event_dict.items():
            if value is None:
                continue
            text = _field_text(value)
            fields.append((self._field_name(key), text))
            words.append(f"{key}={_logfmt_quote(text)}")
        message = " ".join(words)
        if traceback:
            message = f"{message}\n{traceback}"
            fields.append(("TRACEBACK", traceback))

        head = [
            ("MESSAGE", message),
            ("PRIORITY", SYSLOG_PRIORITY.get(level, SYSLOG_PRIORITY["info"])),
            ("SYSLOG_IDENTIFIER", self._identifier),
            ("EVENT", event),
        ]

        return (head + fields,), {}

    def _field_name(self, key: str) -> str:
        name = self._names.get(key)
        if name is None:
            name = "".join(
                c if c.isascii() and c.isalnum() else "_" for c in key.upper()
            )
            if not name or not name[0].isalpha():
                name = "F" + name
            if name in self._RESERVED:
                name = "FLEETD_" + name
            # journald drops fields whose name is longer than 64 characters.
            name = name[:64]
            self._names[key] = name

        return name


def _field_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (Mapping, list, tuple)):
        return json.dumps(value, default=str, ensure_ascii=False)

    return str(value)


def _logfmt_quote(text: str) -> str:
    if text and not any(c.isspace() or c in '"=' for c in text):
        return text

    return json.dumps(text, ensure_ascii=False)


# -- sending ----------------------------------------------------------------


class JournalLogger:
    """Sender of entries to journald, or to `fallback` when that fails.

    A failed send (journald not running, socket full) writes the entry as
    one JSON line to `fallback` so no event is lost silently; the line of
    the first failure carries the error in `journal_error`.
    """

    def __init__(
        self, socket_path: Path = JOURNAL_SOCKET, fallback: TextIO | None = None
    ) -> None:
        # Only the journal target imports logging_journald, which imports
        # tempfile and random.
        from logging_journald import JournaldTransport

        # Unconnected: each send addresses the path, as sd_journal_sendv()
        # does, so a restarted journald (a new socket at the path) is reached.
        self._transport = JournaldTransport(socket_path=socket_path, connected=False)
        self._fallback = fallback if fallback is not None else sys.stderr
        self.failures = 0

    def msg(self, fields: list[tuple[str, Any]]) -> None:
        try:
            self._transport.send(fields)
        except OSError as exc:
            self.failures += 1
            entry = {key.lower(): value for key, value in fields}
            if self.failures == 1:
                entry["journal_error"] = str(exc)
            self._fallback.write(json.dumps(entry, default=str) + "\n")
            self._fallback.flush()


def journal_stream_matches(stream: TextIO) -> bool:
    """Return whether `stream` is the journal stream systemd connected (JOURNAL_STREAM)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        stat = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False

    return stat.st_dev == int(device) and stat.st_ino == int(inode)
