"""Locating keys in TOML files for error messages."""

from __future__ import annotations

from pathlib import Path

from fleetd.config.positions import locate_key, split_key


def test_split_key_handles_quotes() -> None:
    assert split_key('workflows."a b".path') == ("workflows", "a b", "path")
    assert split_key("workflows . x") == ("workflows", "x")
    assert split_key("'lit.eral'") == ("lit.eral",)


def test_locate_dotted_and_header_keys(tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    path.write_text(
        "[daemon]\n  interval = 1\n\n[workflows.req]\nkind = 'spool'\n"
        "daemon.splay = 2\n"
    )
    assert locate_key(path, ("daemon", "interval")) == (2, 3)
    assert locate_key(path, ("workflows", "req")) == (4, 1)
    assert locate_key(path, ("workflows", "req", "kind")) == (5, 1)
    assert locate_key(path, ("workflows", "req", "daemon", "splay")) == (6, 1)


def test_locate_falls_back_to_enclosing_key(tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    path.write_text('[workflows]\nreq = { kind = "spool", path = 5 }\n')
    assert locate_key(path, ("workflows", "req", "path")) == (2, 1)
    assert locate_key(path, ("globals", "x")) is None
    assert locate_key(tmp_path / "missing.toml", ("daemon",)) is None


def test_locate_table_only_a_dotted_header_names(tmp_path: Path) -> None:
    # A misspelt [workflow.requests] defines the unknown table `workflow`,
    # whose error must still point at that header.
    path = tmp_path / "a.toml"
    path.write_text("[daemon]\ninterval = 1\n\n[workflow.requests]\nkind = 'spool'\n")
    assert locate_key(path, ("workflow",)) == (4, 1)
    assert locate_key(path, ("daemon",)) == (1, 1)
