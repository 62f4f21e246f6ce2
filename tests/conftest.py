"""Fixtures shared by every test package."""

from collections.abc import Iterator

import pytest

from fleetd.logs import set_threshold

pytest_plugins = ["tests.pgserver"]


@pytest.fixture(autouse=True)
def reset_log_threshold() -> Iterator[None]:
    """Let every event through again after a test that configured logging."""
    yield
    set_threshold(0)
