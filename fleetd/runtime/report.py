"""What one run of one record reports: outcome, phase results, reason.

These are the objects `fleetd once --json` prints, one per line, and the
daemon logs at the end of each run.
"""

from __future__ import annotations

import enum
from typing import Any

import msgspec


class Outcome(enum.Enum):
    """How a run of a record ended, as reported to the operator."""

    COMMITTED = "committed"
    ROLLED_BACK = "rolled_back"
    ERROR = "error"
    SKIPPED = "skipped"
    LOCKED = "locked"
    DONE = "done"
    INVALID = "invalid"
    PRETEND = "pretend"

    @property
    def is_failure(self) -> bool:
        """Whether this outcome makes `fleetd once` exit with status 1."""
        return self in (Outcome.ERROR, Outcome.INVALID)


class PhaseResult(enum.Enum):
    """Result of the Run or the Cleanup phase of one run."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    NOT_RUN = "not_run"


class RunReport(msgspec.Struct, frozen=True):
    """Report of one run of one record."""

    agent: str
    mnemonic: str
    workflow: str
    record: str | None  # None for the Null workflow
    outcome: Outcome
    run: PhaseResult = PhaseResult.NOT_RUN
    cleanup: PhaseResult = PhaseResult.NOT_RUN
    reason: str | None = None
    duration_s: float = 0.0
    run_id: str | None = None
    # With `pretend`: the resolution that would follow if every command
    # succeeded ("commit", "rollback" or "error").
    would: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the report as the JSON object `once --json` prints."""
        data: dict[str, Any] = {
            "agent": self.agent,
            "mnemonic": self.mnemonic,
            "workflow": self.workflow,
            "record": self.record,
            "outcome": self.outcome.value,
            "run": self.run.value,
            "cleanup": self.cleanup.value,
            "reason": self.reason,
            "duration_s": round(self.duration_s, 6),
        }
        if self.run_id is not None:
            data["run_id"] = self.run_id
        if self.would is not None:
            data["would"] = self.would

        return data
