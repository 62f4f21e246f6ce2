"""Structured logging for every fleetd command: console, JSON lines or journald.

`configure_logging` sets up structlog once per process and picks one of
three outputs:

- journald, when stderr is the journal stream systemd gave the service
  (`JOURNAL_STREAM` contains the `st_dev:st_ino` of stderr) or when asked for
  with `--log-target journal`. Each event becomes one native journal entry
  with `MESSAGE`, a syslog `PRIORITY`, `SYSLOG_IDENTIFIER=fleetd`, `EVENT`
  and every bound key as an upper-case field (`AGENT`, `MNEMONIC`,
  `WORKFLOW`, `RECORD`, `PHASE`, `RUN_ID`, ...), so `journalctl AGENT=x`
  filters on them.
- readable console lines when stderr is a terminal;
- JSON lines otherwise.

The journal side lives in `fleetd.daemon.journal`. Written here by hand,
because no maintained package offers them: a bound logger with the syslog
levels (structlog's own filtering loggers stop at the stdlib levels, and
agents log at `notice`, `alert` and `emergency`) and the redaction of
secrets.

Secrets: any key ending in `_secret` or `_password`, at any depth of dicts
and lists, is rendered as `***` by every output.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from fleetd.daemon.journal import (
    JOURNAL_SOCKET,
    SYSLOG_PRIORITY,
    JournaldRenderer,
    JournalLogger,
    journal_stream_matches,
)
from fleetd.logs import set_threshold
from fleetd.streams import LineStream

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
        try:
            args_out, kw_out = self._process_event(level, event, kw)
        except structlog.DropEvent:
            # A filtering processor dropped the event, as structlog's own
            # bound loggers allow.
            return None

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


# -- wrapped loggers --------------------------------------------------------


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
    stream = stream if stream is not None else sys.stderr
    chosen = resolve_target(target, stream)
    out = LineStream(
        stream, _dropped_line_text if chosen == "console" else _dropped_line_json
    )
    _min_level = LEVELS[canonical_level(level)]
    set_threshold(_min_level)

    processors: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        add_level,
        redact_secrets,
    ]
    logger_factory: Callable[..., Any]
    if chosen == "journal":
        journal = JournalLogger(journal_socket, fallback=out)  # type: ignore[arg-type]
        processors += [structlog.processors.format_exc_info, JournaldRenderer()]

        def logger_factory(*args: Any) -> JournalLogger:
            return journal  # one sender shared by every logger

    elif chosen == "console":
        processors += [
            structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=False),
            structlog.dev.ConsoleRenderer(colors=_is_terminal(stream)),
        ]
        logger_factory = structlog.WriteLoggerFactory(file=out)  # type: ignore[arg-type]
    else:
        processors += [
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(default=str, ensure_ascii=False),
        ]
        logger_factory = structlog.WriteLoggerFactory(file=out)  # type: ignore[arg-type]

    structlog.configure(
        processors=processors,
        wrapper_class=FleetdLogger,
        context_class=dict,
        logger_factory=logger_factory,
        cache_logger_on_first_use=False,
    )
    _bridge_stdlib_logging()

    return chosen


def _dropped_line_json(count: int) -> str:
    """Return the JSON line that reports `count` log lines lost to write errors."""
    at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    event = {"count": count, "event": "log_lines_dropped", "level": "warning"}

    return json.dumps({**event, "timestamp": at}) + "\n"


def _dropped_line_text(count: int) -> str:
    """Return the console line that reports `count` log lines lost to write errors."""
    at = datetime.now().strftime("%Y-%m-%d %H:%M:%S")

    return f"{at} [warning  ] log_lines_dropped count={count}\n"


def _bridge_stdlib_logging() -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _StdlibBridge):
            root.removeHandler(handler)
    root.addHandler(_StdlibBridge())
    # The bridge filters by fleetd's level; the stdlib numbers line up.
    root.setLevel(min(_min_level, logging.CRITICAL))
