"""Resolved configuration: what the drop-in directory amounts to.

The loader (`fleetd.config.load_config`) validates the TOML drop-ins and
produces these objects with every path made absolute and every duration in
seconds, so no other package parses configuration text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec


class DaemonSettings(msgspec.Struct, frozen=True):
    """The `[daemon]` table. Durations are seconds."""

    state: str  # "sqlite:////abs/path.db" or a postgresql:// URL
    max_concurrency: int = 64
    interval: float = 300.0
    splay: float = 30.0
    shutdown_grace: float = 30.0
    cleanup_timeout: float = 60.0
    lease: float = 60.0
    safe_path: tuple[str, ...] = ("/usr/local/bin", "/usr/bin", "/bin")
    plugin_dirs: tuple[str, ...] = ()
    log_level: str = "info"
    loop: str = "asyncio"  # "asyncio" or "uvloop"


class WorkflowSettings(msgspec.Struct, frozen=True):
    """One `[workflows.NAME]` table; `options` holds the kind's own keys.

    Paths among the options are absolute. Keys by kind: spool `path`;
    sqlite `path`, `table`, `id_column`, `where`; postgresql `dsn`,
    `table`, `id_column`, `where`; command `list_command`,
    `update_command` (lists of words), `timeout`.
    """

    name: str
    kind: str
    options: dict[str, Any] = msgspec.field(default_factory=dict)


class Config(msgspec.Struct, frozen=True):
    """The whole drop-in directory."""

    conf_dir: Path
    daemon: DaemonSettings
    globals: dict[str, Any] = msgspec.field(default_factory=dict)
    workflows: dict[str, WorkflowSettings] = msgspec.field(default_factory=dict)
    agent_files: tuple[Path, ...] = ()  # in lexical order
    ignored: tuple[tuple[Path, str], ...] = ()  # files reported and skipped
    # Agent files rejected before parsing (as root: insecure owner or mode),
    # one "path: message" each; they are not in `agent_files`.
    errors: tuple[str, ...] = ()
