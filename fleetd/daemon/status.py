"""The daemon's counters and the STATUS= line systemd shows."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SupervisorStatistics", "format_status"]

# Maximum length of the last error in STATUS=, which `systemctl status` shows
# on one line.
MAX_STATUS_ERROR = 200


@dataclass(frozen=True, slots=True)
class SupervisorStatistics:
    """Counters of the daemon, for STATUS= and tests."""

    agents_running: int
    agents_not_running: int
    agent_errors: int
    runs_in_flight: int
    runs_done: int
    outcomes: dict[str, int]
    cycles: int
    overruns: int
    reloads: int
    reload_failures: int
    last_error: str | None
    stopping: bool


def format_status(stats: SupervisorStatistics) -> str:
    """Return the one-line STATUS= text: agents, runs in progress, last error."""
    parts = [
        f"{stats.agents_running} agents running",
        f"{stats.agents_not_running} not running",
        f"{stats.agent_errors} agent errors",
        f"{stats.runs_in_flight} runs in progress",
        f"{stats.runs_done} runs done",
    ]
    text = ("stopping: " if stats.stopping else "") + ", ".join(parts)
    if stats.last_error:
        error = stats.last_error
        if len(error) > MAX_STATUS_ERROR:
            error = error[: MAX_STATUS_ERROR - 3] + "..."
        text += f"; last error: {error}"

    return text
