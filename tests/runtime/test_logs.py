"""Syslog levels on structlog loggers."""

from __future__ import annotations

import io
import json

import pytest
import structlog
from structlog.testing import capture_logs

from fleetd.daemon.logging import configure_logging
from fleetd.logs import WARNING, get_logger, set_threshold
from fleetd.runtime.logs import log_at

LEVELS = [
    ("emergency", "critical", "emergency"),
    ("alert", "critical", "alert"),
    ("critical", "critical", None),
    ("error", "error", None),
    ("warning", "warning", None),
    ("notice", "info", "notice"),
    ("info", "info", None),
    ("debug", "debug", None),
]


@pytest.mark.parametrize(("level", "method", "syslog_level"), LEVELS)
def test_log_at_maps_syslog_level(
    level: str, method: str, syslog_level: str | None
) -> None:
    with capture_logs() as logs:
        log_at(structlog.get_logger(), level, "agent_log", message="hi")
    [entry] = logs
    assert entry["log_level"] == method
    assert entry["message"] == "hi"
    assert entry.get("syslog_level") == syslog_level


def test_log_at_uses_own_syslog_method() -> None:
    # fleetd's logger has a `notice` method, and filtering by level must
    # see `notice`, not the `info` that carries it on other loggers.
    stream = io.StringIO()
    configure_logging(level="notice", target="json", stream=stream)
    try:
        log_at(get_logger(), "notice", "agent_log", message="shown")
        log_at(get_logger(), "info", "agent_log", message="dropped")
    finally:
        structlog.reset_defaults()

    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [event["message"] for event in events] == ["shown"]
    assert events[0]["level"] == "notice"


def test_gated_logger_drops_below_threshold() -> None:
    set_threshold(WARNING)
    with capture_logs() as logs:
        log = get_logger().bind(agent="a")
        log.info("dropped")
        log.notice("dropped too")
        log.warning("kept")
        log.alert("kept too")

    assert [entry["event"] for entry in logs] == ["kept", "kept too"]
    assert logs[1]["syslog_level"] == "alert"
    assert logs[0]["agent"] == "a"
