"""Structured logging for every fleetd command: console, JSON lines or journald.

`configure_logging` sets up structlog once per process and picks one of
three outputs:

- journald, when stderr is the journal stream systemd gave the service
  (`JOURNAL_STREAM` holds the `st_dev:st_ino` of stderr) or when asked for
  with `--log-target journal`. Each event becomes one native journal entry
  with `MESSAGE`, a syslog `PRIORITY`, `SYSLOG_IDENTIFIER=fleetd`, `EVENT`
  and every bound key as an upper-case field (`AGENT`, `MNEMONIC`,
  `WORKFLOW`, `RECORD`, `PHASE`, `RUN_ID`, ...), so `journalctl AGENT=x`
  filters on them.
- readable console lines when stderr is a terminal;
- JSON lines otherwise.

The journal entries go through `logging_journald.JournaldTransport`, a
maintained pure-Python client of journald's native protocol: it writes the
binary length-prefixed form for values that contain newlines and passes an
entry too large for one datagram as a sealed memfd. `systemd-python` would
do the same but needs the libsystemd headers and a C compiler to install.
What is written here by hand is only the structlog side, because no
maintained package offers it: the processor that turns an event dict into
journal fields, a bound logger with the syslog levels (structlog's own
filtering loggers stop at the stdlib levels, and agents log at `notice`,
`alert` and `emergency`), and the redaction of secrets.

Secrets: any key ending in `_secret` or `_password`, at any depth of dicts
and lists, is rendered as `***` by every output.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

import structlog
from logging_journald import JournaldTransport
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = [
    "LEVELS",
    "SYSLOG_PRIORITY",
    "FleetdLogger",
    "JournaldRenderer",
    "configure_logging",
    "journal_stream_matches",
    "redact_secrets",
    "shift_level",
]

# Syslog severities, lowest first. The numbers extend the stdlib ones so the
# stdlib bridge and `log(level, ...)` can mix both.
LEVELS: Mapping[str, int] = {
    "debug": 10,
    "info": 20,
    "notice": 25,
    "warning": 30,
    "error": 40,
    "critical": 50,
    "alert": 60,
    "emergency": 70,
}

# Alternative spellings that agents' LOG lines and stdlib code use.
_ALIASES: Mapping[str, str] = {
    "warn": "warning",
    "err": "error",
    "crit": "critical",
    "fatal": "critical",
    "emerg": "emergency",
    "exception": "error",
}

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
TARGETS = ("auto", "console", "json", "journal")

# Only events at or above this level are processed; FleetdLogger reads it
# on every call, so reconfiguring takes effect for loggers already bound.
_min_level = LEVELS["info"]


def canonical_level(name: str) -> str:
    """Return the level name for `name`, which may be an alias, in any case.

    Raises:
        ValueError: `name` is no syslog level.
    """
    lowered = name.lower()
    lowered = _ALIASES.get(lowered, lowered)
    if lowered not in LEVELS:
        msg = f"log level must be one of {', '.join(LEVELS)}, not {name!r}"
        raise ValueError(msg)

    return lowered


def shift_level(level: str, verbosity: int) -> str:
    """Return `level` made more verbose by `verbosity` steps (negative: quieter)."""
    names = list(LEVELS)
    index = names.index(canonical_level(level)) - verbosity
    index = min(max(index, 0), len(names) - 1)

    return names[index]


# -- bound logger -----------------------------------------------------------


class FleetdLogger(structlog.BoundLoggerBase):
    """Bound logger with one method per syslog level.

    Events below the configured level are dropped before any processor
    runs. Every method takes the event name, optional %-style arguments and
    the keys to bind for this event only.
    """

    def _emit(
        self, level: str, event: str | None, args: tuple[Any, ...], kw: Any
    ) -> Any:
        if LEVELS[level] < _min_level:
            return None
        if args and isinstance(event, str):
            event = event % args
        args_out, kw_out = self._process_event(level, event, kw)

        return self._logger.msg(*args_out, **kw_out)

    def debug(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        return self._emit("debug", event, args, kw)

    def info(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        return self._emit("info", event, args, kw)

    def notice(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        return self._emit("notice", event, args, kw)

    def warning(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        return self._emit("warning", event, args, kw)

    def error(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        return self._emit("error", event, args, kw)

    def critical(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        return self._emit("critical", event, args, kw)

    def alert(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        return self._emit("alert", event, args, kw)

    def emergency(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        return self._emit("emergency", event, args, kw)

    def exception(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        """Log at `error` with the exception being handled."""
        kw.setdefault("exc_info", True)
        return self._emit("error", event, args, kw)

    def log(
        self, level: int | str, event: str | None = None, *args: Any, **kw: Any
    ) -> Any:
        """Log at `level`: a name or alias (any case) or a stdlib number."""
        if isinstance(level, int):
            name = _name_for_number(level)
        else:
            name = canonical_level(level)
        return self._emit(name, event, args, kw)

    def is_enabled_for(self, level: str) -> bool:
        """Whether an event at `level` would be logged."""
        return LEVELS[canonical_level(level)] >= _min_level

    warn = warning
    err = error
    crit = critical
    fatal = critical
    emerg = emergency
    msg = info


def _name_for_number(number: int) -> str:
    name = "debug"
    for candidate, value in LEVELS.items():
        if number >= value:
            name = candidate

    return name


# -- processors -------------------------------------------------------------


def _is_secret_key(key: object) -> bool:
    if not isinstance(key, str):
        return False
    lowered = key.lower()

    return lowered.endswith(("_secret", "_password")) or lowered in (
        "secret",
        "password",
    )


def _redact(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: "***" if _is_secret_key(k) else _redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact(item) for item in value]

    return value


def redact_secrets(
    logger: WrappedLogger, method_name: str, event_dict: EventDict
) -> EventDict:
    """Replace the value of every `*_secret` or `*_password` key with `***`."""
    for key, value in event_dict.items():
        if _is_secret_key(key):
            event_dict[key] = "***"
        elif isinstance(value, (Mapping, list, tuple)):
            event_dict[key] = _redact(value)

    return event_dict


def add_level(
    logger: WrappedLogger, method_name: str, event_dict: EventDict
) -> EventDict:
    """Store the level name, which FleetdLogger passes as the method name.

    An event that carries a `syslog_level` key (logged through the nearest
    stdlib-named method by code that does not rely on FleetdLogger) takes
    its level from that key instead.
    """
    level = event_dict.pop("syslog_level", None)
    if not (isinstance(level, str) and level.lower() in LEVELS):
        level = _ALIASES.get(method_name, method_name)
    event_dict["level"] = level.lower()

    return event_dict


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


# -- wrapped loggers --------------------------------------------------------


class JournalLogger:
    """Send entries to journald; falls back to `fallback` when it cannot.

    A failed send (journald not running, socket full) writes the entry as
    one JSON line to `fallback` so no event is lost silently, and the first
    failure says so on that stream.
    """

    def __init__(
        self, socket_path: Path = JOURNAL_SOCKET, fallback: TextIO | None = None
    ) -> None:
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


class _StdlibBridge(logging.Handler):
    """Pass records of stdlib loggers (asyncio, asyncpg, ...) to structlog."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            log = structlog.get_logger().bind(logger=record.name)
            kw: dict[str, Any] = {}
            if record.exc_info:
                kw["exc_info"] = record.exc_info
            log.log(record.levelno, record.getMessage(), **kw)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


# -- configuration ----------------------------------------------------------


def journal_stream_matches(stream: TextIO) -> bool:
    """Whether `stream` is the journal stream systemd connected (JOURNAL_STREAM)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        stat = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False

    return stat.st_dev == int(device) and stat.st_ino == int(inode)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (ValueError, AttributeError):
        return False


def resolve_target(target: str, stream: TextIO) -> str:
    """Return the output `auto` stands for on `stream`, or `target` itself."""
    if target not in TARGETS:
        msg = f"log target must be one of {', '.join(TARGETS)}, not {target!r}"
        raise ValueError(msg)
    if target != "auto":
        return target
    if journal_stream_matches(stream):
        return "journal"
    if _is_terminal(stream):
        return "console"

    return "json"


def configure_logging(
    *,
    level: str = "info",
    target: str = "auto",
    stream: TextIO | None = None,
    journal_socket: Path = JOURNAL_SOCKET,
) -> str:
    """Configure structlog and the stdlib root logger for this process.

    Calling it again replaces the previous configuration; loggers already
    bound pick up the new level and output at their next event.

    Args:
        level: lowest level logged, a syslog level name or alias.

        target: `auto`, `console`, `json` or `journal`. `auto` picks the
            journal when `JOURNAL_STREAM` matches `stream`, the console when
            `stream` is a terminal, else JSON lines.

        stream: where console and JSON output go; default `sys.stderr`.

        journal_socket: journald's native socket.

    Returns:
        The output chosen: `console`, `json` or `journal`.

    Raises:
        ValueError: `level` or `target` is not one of the allowed names.
    """
    global _min_level
    out = stream if stream is not None else sys.stderr
    chosen = resolve_target(target, out)
    _min_level = LEVELS[canonical_level(level)]

    processors: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        add_level,
        redact_secrets,
    ]
    logger_factory: Callable[..., Any]
    if chosen == "journal":
        journal = JournalLogger(journal_socket, fallback=out)
        processors += [structlog.processors.format_exc_info, JournaldRenderer()]

        def logger_factory(*args: Any) -> JournalLogger:
            return journal  # one sender shared by every logger

    elif chosen == "console":
        processors += [
            structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=False),
            structlog.dev.ConsoleRenderer(colors=_is_terminal(out)),
        ]
        logger_factory = structlog.WriteLoggerFactory(file=out)
    else:
        processors += [
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(default=str, ensure_ascii=False),
        ]
        logger_factory = structlog.WriteLoggerFactory(file=out)

    structlog.configure(
        processors=processors,
        wrapper_class=FleetdLogger,
        context_class=dict,
        logger_factory=logger_factory,
        cache_logger_on_first_use=False,
    )
    _bridge_stdlib_logging()

    return chosen


def _bridge_stdlib_logging() -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _StdlibBridge):
            root.removeHandler(handler)
    root.addHandler(_StdlibBridge())
    # The bridge filters by fleetd's level; the stdlib numbers line up.
    root.setLevel(min(_min_level, logging.CRITICAL))
