"""Fixtures for the command line tests."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.cli.support import Site


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return Site(tmp_path)


@pytest.fixture
def reports() -> Callable[[str], list[dict[str, Any]]]:
    def parse(stdout: str) -> list[dict[str, Any]]:
        return [
            json.loads(line) for line in stdout.splitlines() if line.startswith("{")
        ]

    return parse
