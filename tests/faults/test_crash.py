"""SIGKILL at random moments loses nothing and runs nothing twice.

A short version of scripts/crash_loop.py: 10 kills of `fleetd run` and 10
of `fleetd once`, each followed by the checks of that script.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "crash_loop.py"


def load_crash_loop() -> ModuleType:
    spec = importlib.util.spec_from_file_location("crash_loop", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["crash_loop"] = module
    spec.loader.exec_module(module)
    return module


crash_loop = load_crash_loop()


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("mode", "seed"), [("run", 11), ("once", 12)])
def test_sigkill_loses_nothing(tmp_path: Path, mode: str, seed: int) -> None:
    result = crash_loop.crash_loop(
        tmp_path, kills=10, records=40, seed=seed, mode=mode, max_delay=1.0
    )

    assert result.kills == 10, result.summary()
    assert result.other == {}, "records neither committed nor interrupted"
    assert result.run_twice == [], "records started twice by one mnemonic"
    assert result.not_applied == [], "committed records without their change"
    assert result.locks_left == [], "locks left after the last once"
    assert result.committed + result.interrupted == result.records
