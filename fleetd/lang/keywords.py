"""Keywords of the agent language and the values of header lines."""

from __future__ import annotations

import re

from fleetd.lang.ast import CleanupWhen, Phase

HEADER_KEYWORDS = frozenset(
    {
        "NAME",
        "MNEMONIC",
        "DESCRIPTION",
        "VERSION",
        "WORKFLOW",
        "SCHEDULE",
        "CONCURRENCY",
        "TIMEOUT",
    }
)
SET_PHASES = {
    "PREREQUISITE_SET": Phase.INITIALIZE,
    "REQUIRE_SET": Phase.REQUIREMENTS,
    "CHECK_SET": Phase.CHECK,
    "SET": Phase.RUN,
}
CONDITION_PHASES = {
    "PREREQUISITE": Phase.INITIALIZE,
    "REQUIRE": Phase.REQUIREMENTS,
    "CHECK": Phase.CHECK,
}
CLEANUP_KEYWORDS = {
    "CLEANUP": CleanupWhen.ALWAYS,
    "ON_FAILURE": CleanupWhen.FAILURE,
    "ON_SUCCESS": CleanupWhen.SUCCESS,
}
PROGRAM_KEYWORDS = frozenset(
    {"COMMAND", "OPTION", "OPTION_IF", "EXEC", "EXEC_IF_OPTION"}
)
COMMAND_KEYWORDS = frozenset(
    {
        *SET_PHASES,
        *CONDITION_PHASES,
        *CLEANUP_KEYWORDS,
        *PROGRAM_KEYWORDS,
        "ECHO",
        "LOG",
        "EXEC_COMMAND",
        "CALL",
        "WHEN",
        "FOREACH",
        "PARALLEL",
        "END",
    }
)
LOG_LEVELS = {
    "DEBUG": "debug",
    "INFO": "info",
    "NOTICE": "notice",
    "WARNING": "warning",
    "WARN": "warning",
    "ERROR": "error",
    "ERR": "error",
    "CRITICAL": "critical",
    "CRIT": "critical",
    "ALERT": "alert",
    "EMERGENCY": "emergency",
    "EMERG": "emergency",
}

# The grammar start symbol of the expression part of each command.
FORM_OF_KEYWORD = {
    **dict.fromkeys(SET_PHASES, "assignment"),
    **dict.fromkeys(CONDITION_PHASES, "condition"),
    "WHEN": "when_head",
    "FOREACH": "foreach_head",
    "OPTION_IF": "option_if",
    "CALL": "call_command",
}
MNEMONIC_RE = re.compile(r"[A-Za-z0-9_-]+\Z")
WORKFLOW_RE = re.compile(r"[A-Za-z0-9_.-]+\Z")
_DURATION_RE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h))+\Z")
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Return the seconds of a duration such as `90s`, `5m` or `1h30m`.

    Raises:
        ValueError: `text` is not a sequence of numbers with units ms, s, m, h.
    """
    if not _DURATION_RE.match(text):
        raise ValueError(
            f"invalid duration {text!r}; expected a number with a unit ms, s, m or h, e.g. 5m"
        )
    return sum(
        float(number) * _DURATION_UNITS[unit]
        for number, unit in _DURATION_PART_RE.findall(text)
    )
