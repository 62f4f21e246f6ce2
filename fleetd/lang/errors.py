"""Errors of the agent language: load-time diagnostics and evaluation errors."""

from __future__ import annotations

import msgspec

from fleetd.lang.ast import Location


class Diagnostic(msgspec.Struct, frozen=True):
    """One problem found in an agent file, at a location."""

    loc: Location
    message: str

    def __str__(self) -> str:
        return f"{self.loc}: {self.message}"


class AgentError(Exception):
    """An agent file that cannot be loaded; holds every problem found in it."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self.diagnostics = sorted(
            diagnostics, key=lambda d: (d.loc.file, d.loc.line, d.loc.column)
        )
        super().__init__("\n".join(str(d) for d in self.diagnostics))

    def __str__(self) -> str:
        return "\n".join(str(d) for d in self.diagnostics)


class EvaluationError(Exception):
    """An expression that cannot be evaluated, e.g. a function raised.

    `loc` is the location of the expression that failed, when known.
    """

    def __init__(self, message: str, loc: Location | None = None) -> None:
        self.message = message
        self.loc = loc
        super().__init__(f"{loc}: {message}" if loc else message)
