"""Module loggers that drop events below the configured level at once.

`structlog.get_logger()` returns a lazy proxy that builds a new bound
logger on every call, before the level is known to be filtered. On a run
of /bin/true that building was a few percent of the event loop's time,
for events (debug, and info under the default `notice` level) that were
then dropped. `get_logger` wraps the proxy: a call below the threshold
returns before structlog is touched. `fleetd.daemon.logging` sets the
threshold when it configures structlog; until then every event passes,
as with structlog's defaults.
"""

from __future__ import annotations

from typing import Any

import structlog

# Numeric levels, as in fleetd.daemon.logging.LEVELS.
DEBUG, INFO, NOTICE, WARNING, ERROR, CRITICAL, ALERT, EMERGENCY = (
    10,
    20,
    25,
    30,
    40,
    50,
    60,
    70,
)
# The stdlib-named method that carries each syslog level without its own.
_NEAREST = {"notice": "info", "alert": "critical", "emergency": "critical"}

_threshold = 0


def set_threshold(level: int) -> None:
    """Drop events below `level` (a number of fleetd.daemon.logging.LEVELS)."""
    global _threshold
    _threshold = level


def enabled(level: int) -> bool:
    """Tell whether an event at `level` passes the threshold."""
    return level >= _threshold


class GatedLogger:
    """A structlog logger whose methods return early below the threshold.

    `bind` returns another gated logger; any other attribute is the
    wrapped logger's.
    """

    __slots__ = ("_logger",)

    def __init__(self, logger: Any) -> None:
        self._logger = logger

    def debug(self, event: str, **fields: Any) -> None:
        if _threshold <= DEBUG:
            self._logger.debug(event, **fields)

    def info(self, event: str, **fields: Any) -> None:
        if _threshold <= INFO:
            self._logger.info(event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        if _threshold <= WARNING:
            self._logger.warning(event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        if _threshold <= ERROR:
            self._logger.error(event, **fields)

    def exception(self, event: str, **fields: Any) -> None:
        if _threshold <= ERROR:
            self._logger.exception(event, **fields)

    def critical(self, event: str, **fields: Any) -> None:
        if _threshold <= CRITICAL:
            self._logger.critical(event, **fields)

    def notice(self, event: str, **fields: Any) -> None:
        if _threshold <= NOTICE:
            emit_syslog(self._logger, "notice", event, fields)

    def alert(self, event: str, **fields: Any) -> None:
        if _threshold <= ALERT:
            emit_syslog(self._logger, "alert", event, fields)

    def emergency(self, event: str, **fields: Any) -> None:
        if _threshold <= EMERGENCY:
            emit_syslog(self._logger, "emergency", event, fields)

    def bind(self, **fields: Any) -> GatedLogger:
        return GatedLogger(self._logger.bind(**fields))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._logger, name)


def emit_syslog(logger: Any, level: str, event: str, fields: dict[str, Any]) -> None:
    """Log at `notice`, `alert` or `emergency` on any structlog logger.

    fleetd's own bound logger has a method per syslog level. Another one
    (structlog's defaults, a test's) gets the nearest stdlib-named method,
    with the syslog level itself in the `syslog_level` key.
    """
    try:
        method = getattr(logger, level)
    except AttributeError:
        method = getattr(logger, _NEAREST[level])
        fields = {**fields, "syslog_level": level}
    method(event, **fields)


def get_logger() -> GatedLogger:
    """Return a gated module logger (see the module docstring)."""
    return GatedLogger(structlog.get_logger())
