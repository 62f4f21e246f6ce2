"""A drop-in directory per test, and the real `fleetd` command to run on it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def fleetd_command() -> list[str]:
    script = Path(sys.executable).parent / "fleetd"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "fleetd"]


class Site:
    """A conf dir with its state store and spool under one temporary folder."""

    def __init__(self, root: Path, *, spool: Path | None = None) -> None:
        """Use `root`; with `spool`, an existing conf.d and spool are used as is."""
        self.root = root
        self.conf_dir = root / "conf.d"
        if spool is not None:
            self.spool = spool
            return
        self.spool = root / "spool"
        self.conf_dir.mkdir()
        self.spool.mkdir()
        self.write(
            "00-site.toml",
            f'[daemon]\nstate = "sqlite:///{root}/state.db"\n'
            'safe_path = ["/usr/bin", "/bin"]\n'
            '[workflows.requests]\nkind = "spool"\npath = "../spool"\n',
        )

    def write(self, name: str, text: str) -> Path:
        path = self.conf_dir / name
        path.write_text(text.replace("@ROOT@", str(self.root)))
        path.chmod(0o644)
        return path

    def request(self, record: str, **fields: Any) -> Path:
        path = self.spool / f"{record}.json"
        path.write_text(json.dumps(fields))
        return path

    def run(self, *args: str, **options: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            fleetd_command() + ["--conf-dir", str(self.conf_dir), *args],
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=options.pop("timeout", 60),
            check=False,
            stdin=subprocess.DEVNULL,
            **options,
        )
