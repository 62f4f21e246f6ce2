"""A sandboxed conf dir with a spool workflow and a real SQLite state file."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from fleetd.config import load_config
from fleetd.config.model import Config
from fleetd.lang import Registry
from fleetd.runtime import AgentLoader, AgentSet, Engine, RunReport


class Fleet:
    """Files of one test: conf.d, spool, state.db, and what agents echo."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "conf.d"
        self.spool = root / "spool"
        self.conf.mkdir(mode=0o755)
        self.spool.mkdir(mode=0o755)
        self.registry = Registry.default()
        self.loader = AgentLoader(self.registry)
        self.echoed: list[str] = []
        self.agents: AgentSet | None = None
        self.settings()

    def settings(self, daemon: str = "", extra: str = "") -> None:
        """Write the TOML drop-in; `daemon` adds keys to [daemon]."""
        text = f"""
            [daemon]
            state = "sqlite:///{self.root}/state.db"
            safe_path = ["/usr/bin", "/bin"]
            {daemon}

            [workflows.requests]
            kind = "spool"
            path = "{self.spool}"
            """
        self.write("00-test.toml", textwrap.dedent(text) + extra)

    def write(self, name: str, text: str) -> Path:
        path = self.conf / name
        path.write_text(textwrap.dedent(text).lstrip())
        path.chmod(0o644)
        return path

    def agent(self, text: str, name: str = "test.agent") -> Path:
        """Write an agent file; the text is dedented."""
        return self.write(name, text)

    def record(self, record_id: str, **fields: Any) -> Path:
        path = self.spool / f"{record_id}.json"
        path.write_text(json.dumps(fields))
        return path

    def fields(self, record_id: str) -> dict[str, Any]:
        return json.loads((self.spool / f"{record_id}.json").read_text())

    def config(self) -> Config:
        return load_config(self.conf)

    def load(self) -> AgentSet:
        self.agents = self.loader.load(self.config(), self.agents)
        return self.agents

    def engine(self, *, pretend: bool = False, config: Config | None = None) -> Engine:
        return Engine(
            config or self.config(),
            pretend=pretend,
            echo=self.echoed.append,
            registry=self.registry,
        )

    async def cycle(self, *, pretend: bool = False) -> list[RunReport]:
        """Load the agents and run one cycle of each, in a fresh engine."""
        agents = self.load()
        reports: list[RunReport] = []
        async with self.engine(pretend=pretend) as engine:
            for loaded in agents.agents.values():
                reports.extend(await engine.run_cycle(loaded))
        return reports


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return Fleet(tmp_path)
