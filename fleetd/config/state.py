"""Where the state store lives: the `state` URL and its default.

`state` takes SQLAlchemy's URL forms, so that operators can copy URLs
between fleetd and other tools: `sqlite:////abs/path.db` (four slashes,
absolute), `sqlite:///rel/path.db` (relative to the folder of the TOML file
that sets it), a bare file path (SQLite), or a `postgresql://` URL with its
query parameters. Every SQLite form comes out as `sqlite:////abs/path.db`.
"""

from __future__ import annotations

import os
from pathlib import Path

STATE_FORM = (
    "sqlite:////absolute/path.db, sqlite:///relative/path.db, a file path, "
    "or a postgresql:// URL"
)
SYSTEM_STATE_DIR = Path("/var/lib/fleetd")


def resolve_state_url(value: str, base: Path) -> str:
    """Return the canonical form of the `state` URL `value`.

    `base` is the folder relative SQLite paths resolve against. Raises
    ValueError when `value` is none of the accepted forms.
    """
    if value.startswith(("postgresql://", "postgres://")):
        from fleetd.pgurl import connect_arguments

        connect_arguments(value)  # a libpq parameter fleetd cannot honour
        return value
    if value.startswith("sqlite:///"):
        path = value[len("sqlite:///") :]
        if not path or path.endswith("/") or "?" in path:
            raise ValueError(f"invalid SQLite URL {value!r}: expected {STATE_FORM}")
        return sqlite_url(base / path)
    if "://" in value or value.startswith("sqlite:") or not value.strip():
        raise ValueError(f"unsupported state URL {value!r}: expected {STATE_FORM}")

    return sqlite_url(base / Path(value).expanduser())


def sqlite_url(path: Path) -> str:
    """Return the `sqlite:////abs/path.db` URL of `path`."""
    return "sqlite:///" + os.path.normpath(path.absolute())


def default_state_url(
    environ: dict[str, str] | None = None, system_dir: Path = SYSTEM_STATE_DIR
) -> str:
    """Return the state URL used when `state` is unset.

    In order: `$STATE_DIRECTORY/state.db` (systemd sets it, the first entry
    when it lists several), `/var/lib/fleetd/state.db` when that folder is
    writable or can be created, `$XDG_STATE_HOME/fleetd/state.db` (default
    `~/.local/state`).
    """
    env = os.environ if environ is None else environ
    state_directory = env.get("STATE_DIRECTORY", "").split(":")[0]
    if state_directory:
        return sqlite_url(Path(state_directory) / "state.db")
    if _writable_or_creatable(system_dir):
        return sqlite_url(system_dir / "state.db")
    xdg = env.get("XDG_STATE_HOME") or str(Path(env.get("HOME", "~")) / ".local/state")

    return sqlite_url(Path(xdg).expanduser() / "fleetd" / "state.db")


def _writable_or_creatable(folder: Path) -> bool:
    if folder.is_dir():
        return os.access(folder, os.W_OK | os.X_OK)
    parent = folder.parent

    return parent.is_dir() and os.access(parent, os.W_OK | os.X_OK)
