"""Syslog levels on structlog loggers."""

from __future__ import annotations

import pytest
import structlog
from structlog.testing import capture_logs

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
