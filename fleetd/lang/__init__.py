"""The agent language: parser, validator, evaluator, built-ins and plugins.

Usage sketch::

    from fleetd.lang import Phase, Scope, Registry, evaluate, load_agent

    registry = Registry.default()
    agent = load_agent("/etc/fleetd/conf.d/homedir.agent", registry=registry)
    scope = Scope({"this": {"id": "42", "status": "approved"}})
    for command in agent.phase(Phase.REQUIREMENTS):
        ...  # the runtime walks the commands and calls evaluate()
"""

from fleetd.lang.ast import (
    Agent,
    And,
    Assign,
    Block,
    CallCommand,
    CleanupBlock,
    CleanupWhen,
    Command,
    Compare,
    Condition,
    Echo,
    ExecCommand,
    Expr,
    Foreach,
    FunctionCall,
    ListExpr,
    Literal,
    Location,
    Log,
    Match,
    Membership,
    Not,
    Or,
    Parallel,
    Phase,
    ProgramExec,
    ProgramOption,
    ProgramStart,
    Schedule,
    Template,
    Variable,
    When,
)
from fleetd.lang.cache import AgentCache
from fleetd.lang.errors import AgentError, Diagnostic, EvaluationError
from fleetd.lang.evaluate import evaluate, interpolate
from fleetd.lang.keywords import LOG_LEVELS, parse_duration
from fleetd.lang.parser import decode_agent, load_agent, parse_agent
from fleetd.lang.registry import (
    CommandContext,
    CommandSpec,
    FunctionSpec,
    PluginError,
    Registry,
    load_plugins,
)
from fleetd.lang.scope import Scope
from fleetd.lang.values import Value, looks_like_number, render, to_number, truth

__all__ = [
    "LOG_LEVELS",
    "Agent",
    "AgentCache",
    "AgentError",
    "And",
    "Assign",
    "Block",
    "CallCommand",
    "CleanupBlock",
    "CleanupWhen",
    "Command",
    "CommandContext",
    "CommandSpec",
    "Compare",
    "Condition",
    "Diagnostic",
    "Echo",
    "EvaluationError",
    "ExecCommand",
    "Expr",
    "Foreach",
    "FunctionCall",
    "FunctionSpec",
    "ListExpr",
    "Literal",
    "Location",
    "Log",
    "Match",
    "Membership",
    "Not",
    "Or",
    "Parallel",
    "Phase",
    "PluginError",
    "ProgramExec",
    "ProgramOption",
    "ProgramStart",
    "Registry",
    "Schedule",
    "Scope",
    "Template",
    "Value",
    "Variable",
    "When",
    "decode_agent",
    "evaluate",
    "interpolate",
    "load_agent",
    "load_plugins",
    "looks_like_number",
    "parse_agent",
    "parse_duration",
    "render",
    "to_number",
    "truth",
]
