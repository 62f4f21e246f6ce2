"""The STATUS= line."""

from __future__ import annotations

from fleetd.daemon.status import MAX_STATUS_ERROR, SupervisorStatistics, format_status


def make_stats(
    last_error: str | None = None, stopping: bool = False
) -> SupervisorStatistics:
    return SupervisorStatistics(
        agents_running=3,
        agents_not_running=1,
        agent_errors=2,
        runs_in_flight=5,
        runs_done=40,
        outcomes={},
        cycles=10,
        overruns=0,
        reloads=0,
        reload_failures=0,
        last_error=last_error,
        stopping=stopping,
    )


def test_status_lists_counts() -> None:
    assert format_status(make_stats()) == (
        "3 agents running, 1 not running, 2 agent errors,"
        " 5 runs in progress, 40 runs done"
    )


def test_status_while_stopping() -> None:
    assert format_status(make_stats(stopping=True)).startswith("stopping: 3 agents")


def test_status_last_error_truncated() -> None:
    text = format_status(make_stats(last_error="x" * 1000))
    error = text.split("; last error: ", 1)[1]
    assert len(error) == MAX_STATUS_ERROR
    assert error.endswith("...")
