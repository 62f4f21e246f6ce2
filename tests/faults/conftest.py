"""Fixtures of the fault tests: a site whose leftover processes are killed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.support import Site


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    created = Site(tmp_path)
    yield created
    created.kill_leftovers()
