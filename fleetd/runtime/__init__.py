"""The agent runtime: phases, program execution, agent loading, the engine."""

from fleetd.runtime.agents import AgentLoader, AgentSet, LoadedAgent, initialize
from fleetd.runtime.engine import Engine, EngineStatistics
from fleetd.runtime.process import ProgramResult, run_program
from fleetd.runtime.report import Outcome, PhaseResult, RunReport

__all__ = [
    "AgentLoader",
    "AgentSet",
    "Engine",
    "EngineStatistics",
    "LoadedAgent",
    "Outcome",
    "PhaseResult",
    "ProgramResult",
    "RunReport",
    "initialize",
    "run_program",
]
