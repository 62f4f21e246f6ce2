"""Loading agents: parse with a cache, validate names, run Initialize.

A file is parsed again only when its content changed (`AgentCache` keys
its entries by path and SHA-256 of the bytes), and Initialize runs again only for new
or changed agents, or for every agent when the globals changed. With the
previous `AgentSet`, an agent whose file no longer parses keeps its
previous version, and the parse error is still listed.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from pathlib import Path

import msgspec
import structlog

from fleetd.config.model import Config
from fleetd.config.trust import untrusted_reasons
from fleetd.lang import AgentCache, AgentError, Registry, Scope, Value
from fleetd.lang.ast import Agent, Phase
from fleetd.lang.scope import BlockKey
from fleetd.lang.tree import suggest_name
from fleetd.runtime.interpreter import RunState
from fleetd.runtime.logs import log_at
from fleetd.runtime.phases import evaluate_conditions

logger = structlog.get_logger()


class LoadedAgent(msgspec.Struct, frozen=True):
    """A parsed agent after Initialize."""

    agent: Agent
    variables: Mapping[str, Value]  # globals + PREREQUISITE_SET values
    scheduled: bool
    # Why not scheduled: "file:line: source text" of the failed prerequisite,
    # or the error that keeps the agent from running.
    reason: str | None = None
    # PREREQUISITE_SET values inside WHEN and FOREACH blocks, by block.
    blocks: Mapping[BlockKey, Mapping[str, Value]] = msgspec.field(default_factory=dict)


class AgentSet(msgspec.Struct, frozen=True):
    """Every agent of a conf dir that parsed, and the errors of the others."""

    agents: dict[str, LoadedAgent]  # by NAME
    errors: tuple[str, ...] = ()  # "file:line:col: message"


def _globals_key(values: Mapping[str, Value]) -> str:
    return json.dumps(values, sort_keys=True, default=str)


def initialize(
    agent: Agent, global_values: Mapping[str, Value], registry: Registry
) -> LoadedAgent:
    """Run the Initialize phase of `agent`: PREREQUISITE commands in order.

    The first false or failing prerequisite leaves the agent unscheduled,
    logged at notice with that prerequisite's source text.
    """
    scope = Scope(copy.deepcopy(dict(global_values)))
    log = logger.bind(agent=agent.name, mnemonic=agent.mnemonic, phase="initialize")
    state = RunState(
        agent=agent,
        registry=registry,
        workflow=agent.workflow,
        record_id=None,
        this={},
        log=log,
        echo=lambda text: None,
    )
    unmet = evaluate_conditions(
        agent.phase(Phase.INITIALIZE), scope, state, stop_at_first=True
    )
    variables = scope.flatten()
    if unmet:
        log_at(log, "notice", "agent_unscheduled", reason=unmet[0], file=agent.path)
        return LoadedAgent(agent, variables, scheduled=False, reason=unmet[0])

    return LoadedAgent(agent, variables, scheduled=True, blocks=scope.blocks)


class AgentLoader:
    """Parses agent files with a cache and runs their Initialize phase."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.cache = AgentCache(registry)
        # (path, digest, globals key) -> the agent after Initialize
        self._initialized: dict[tuple[Path, str, str], LoadedAgent] = {}

    def _parse(self, path: Path) -> Agent | tuple[str, ...]:
        """Return the agent in `path`, or its errors as `file:line:col: ...`."""
        try:
            return self.cache.load(path)
        except OSError as error:
            return (f"{path}:1:1: cannot read agent file: {error.strerror}",)
        except AgentError as error:
            return tuple(str(error).splitlines()) or (f"{path}:1:1: invalid agent",)

    def load(self, config: Config, previous: AgentSet | None = None) -> AgentSet:
        """Load every agent file of `config`; see the module docstring.

        As root, a file that `untrusted_reasons` rejects is not read, and
        its reasons are listed in the errors.
        """
        globals_key = _globals_key(config.globals)
        agents: dict[str, LoadedAgent] = {}
        errors: list[str] = []
        previous_by_path: dict[str, LoadedAgent] = {}
        if previous is not None:
            previous_by_path = {
                loaded.agent.path: loaded for loaded in previous.agents.values()
            }
        live: set[tuple[Path, str, str]] = set()
        as_root = os.geteuid() == 0
        for path in config.agent_files:
            # `load_config` checks the conf dir's agents, but `once -f` adds
            # files from anywhere, so every file is checked here.
            reasons = untrusted_reasons(path) if as_root else []
            if reasons:
                errors.extend(reasons)
                logger.error("agent_invalid", file=str(path), errors=reasons)
                continue
            parsed = self._parse(path)
            if isinstance(parsed, tuple):
                errors.extend(parsed)
                logger.error("agent_invalid", file=str(path), errors=list(parsed))
                kept = previous_by_path.get(str(path))
                if kept is not None and kept.agent.name not in agents:
                    logger.warning("agent_kept", agent=kept.agent.name, file=str(path))
                    agents[kept.agent.name] = kept
                continue
            agent = parsed
            if agent.name in agents:
                other = agents[agent.name].agent.path
                where = agent.header_locations.get("NAME", f"{path}:1:1")
                message = (
                    f"{where}: duplicate agent name {agent.name!r},"
                    f" already defined in {other}"
                )
                errors.append(message)
                logger.error("agent_invalid", file=str(path), errors=[message])
                continue
            if agent.workflow != "Null" and agent.workflow not in config.workflows:
                where = agent.header_locations.get("WORKFLOW", f"{path}:1:1")
                configured = ", ".join(sorted(config.workflows)) or "none"
                message = (
                    f"{where}: unknown workflow {agent.workflow!r}"
                    f"{suggest_name(agent.workflow, config.workflows)}"
                    f" (configured: {configured}, and Null; a [workflows.NAME]"
                    " table in a TOML drop-in defines one)"
                )
                errors.append(message)
                logger.error("agent_invalid", file=str(path), errors=[message])
                agents[agent.name] = LoadedAgent(
                    agent, dict(config.globals), scheduled=False, reason=message
                )
                continue
            key = (path, agent.digest, globals_key)
            live.add(key)
            loaded = self._initialized.get(key)
            if loaded is None:
                loaded = initialize(agent, config.globals, self.registry)
                self._initialized[key] = loaded
            agents[agent.name] = loaded
        # Forget agents of files that changed or went away.
        self.cache.prune({str(path) for path in config.agent_files})
        for key in list(self._initialized):
            if key not in live:
                del self._initialized[key]

        return AgentSet(agents=agents, errors=tuple(errors))
