"""The default state store location."""

from __future__ import annotations

from pathlib import Path

from fleetd.config import default_state_url


def test_state_directory_wins(tmp_path: Path) -> None:
    environ = {"STATE_DIRECTORY": f"{tmp_path}/a:{tmp_path}/b"}
    url = default_state_url(environ, system_dir=tmp_path / "sys")
    assert url == f"sqlite:///{tmp_path}/a/state.db"


def test_system_dir_when_writable(tmp_path: Path) -> None:
    system_dir = tmp_path / "var-lib-fleetd"
    assert default_state_url({}, system_dir=system_dir) == (
        f"sqlite:///{system_dir}/state.db"
    )


def test_xdg_state_home_otherwise(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir"
    environ = {"XDG_STATE_HOME": str(tmp_path / "xdg")}
    assert default_state_url(environ, system_dir=missing) == (
        f"sqlite:///{tmp_path}/xdg/fleetd/state.db"
    )


def test_home_local_state_last(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir"
    environ = {"HOME": str(tmp_path)}
    assert default_state_url(environ, system_dir=missing) == (
        f"sqlite:///{tmp_path}/.local/state/fleetd/state.db"
    )
