"""AgentCache parses a file again only when its content changed."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from fleetd.lang import AgentCache, AgentError, Location, Registry

AGENT = "NAME A\nMNEMONIC a\nCHECK this.x = 1\nECHO ${this.x}\n"


def test_unchanged_file_is_not_parsed_again(tmp_path: Path) -> None:
    path = tmp_path / "a.agent"
    path.write_text(AGENT)
    cache = AgentCache(Registry.default())
    first = cache.load(path)
    second = cache.load(path)
    assert second is first
    assert (cache.misses, cache.hits) == (1, 1)
    path.write_text(AGENT + "ECHO more\n")
    third = cache.load(path)
    assert third is not first
    assert third.digest != first.digest
    assert cache.misses == 2


def test_errors_are_cached_too(tmp_path: Path) -> None:
    path = tmp_path / "bad.agent"
    path.write_text("NAME A\n")
    cache = AgentCache()
    with pytest.raises(AgentError) as first:
        cache.load(path)
    with pytest.raises(AgentError) as second:
        cache.load(path)
    assert second.value is first.value
    assert cache.misses == 1


def test_same_line_in_two_files_keeps_each_location(tmp_path: Path) -> None:
    first_path = tmp_path / "one.agent"
    second_path = tmp_path / "two.agent"
    first_path.write_text(AGENT)
    second_path.write_text("NAME B\nMNEMONIC b\n\n\n" + AGENT.split("\n", 2)[2])
    cache = AgentCache()
    one = cache.load(first_path)
    two = cache.load(second_path)
    check_one, check_two = one.commands[0], two.commands[0]
    assert check_one.expr.op == check_two.expr.op
    assert check_one.expr.left.path == check_two.expr.left.path
    assert check_one.loc.file == str(first_path)
    assert check_two.loc.file == str(second_path)
    assert check_two.loc.line == 5
    left_two = check_two.loc.with_column(check_two.expr.left.column)
    assert left_two == Location(str(second_path), 5, 7)
    echo_two = two.commands[1]
    assert echo_two.loc.line == 6
    assert echo_two.text.parts[0].column == 6


def test_prune_drops_removed_files(tmp_path: Path) -> None:
    path = tmp_path / "a.agent"
    path.write_text(AGENT)
    cache = AgentCache()
    cache.load(path)
    assert len(cache) == 1
    cache.prune(set())
    assert len(cache) == 0


def test_load_many_returns_agents_and_errors(tmp_path: Path) -> None:
    good = tmp_path / "good.agent"
    good.write_text(AGENT)
    bad = tmp_path / "bad.agent"
    bad.write_text("NAME only\n")
    missing = tmp_path / "missing.agent"
    cache = AgentCache()
    results = cache.load_many([good, bad, missing])
    assert results[str(good)].name == "A"  # type: ignore[union-attr]
    assert isinstance(results[str(bad)], AgentError)
    assert isinstance(results[str(missing)], FileNotFoundError)
    assert gc.isenabled()
