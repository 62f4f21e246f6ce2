"""Fixtures shared by every test package."""

from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from structlog.testing import LogCapture

from fleetd.logs import set_threshold

pytest_plugins = ["tests.pgserver"]


@pytest.fixture(autouse=True)
def reset_log_threshold() -> Iterator[None]:
    """Let every event through again after a test that configured logging."""
    yield
    set_threshold(0)


@pytest.fixture
def events() -> Iterator[list[dict[str, Any]]]:
    """Capture log events with the context variables merged in."""
    capture = LogCapture()
    old = structlog.get_config()
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, capture],
        wrapper_class=structlog.make_filtering_bound_logger(0),
        cache_logger_on_first_use=False,
    )
    try:
        yield capture.entries
    finally:
        structlog.configure(**old)
