"""Helpers to write drop-in directories for the configuration tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture
def conf_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "conf.d"
    folder.mkdir()
    folder.chmod(0o755)
    return folder


@pytest.fixture
def write(conf_dir: Path) -> Callable[[str, str], Path]:
    def write_file(name: str, text: str) -> Path:
        path = conf_dir / name
        path.write_text(text)
        path.chmod(0o644)
        return path

    return write_file
