"""Logging setup: levels, secrets, output choice and the journal protocol."""

from __future__ import annotations

import io
import json
import logging
import os
import pty
from collections.abc import Callable
from pathlib import Path

import pytest
import structlog

from fleetd.daemon.logging import (
    JournaldRenderer,
    configure_logging,
    journal_stream_matches,
    resolve_target,
    shift_level,
)


def json_lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_notice_level_between_info_and_warning() -> None:
    stream = io.StringIO()
    configure_logging(level="notice", target="json", stream=stream)
    log = structlog.get_logger()
    log.info("dropped")
    log.notice("agent_unscheduled", agent="a")
    log.warning("kept")
    events = json_lines(stream)
    assert [e["event"] for e in events] == ["agent_unscheduled", "kept"]
    assert events[0]["level"] == "notice"


def test_processor_may_drop_event() -> None:
    stream = io.StringIO()
    configure_logging(level="info", target="json", stream=stream)

    def drop_named_events(logger, method_name, event_dict):
        if event_dict["event"] == "dropped":
            raise structlog.DropEvent
        return event_dict

    processors = structlog.get_config()["processors"]
    structlog.configure(processors=[drop_named_events, *processors])
    log = structlog.get_logger()
    assert log.warning("dropped") is None
    log.notice("kept")
    events = json_lines(stream)
    assert [e["event"] for e in events] == ["kept"]


@pytest.mark.parametrize(
    ("spelling", "level"),
    [
        ("WARN", "warning"),
        ("err", "error"),
        ("CRIT", "critical"),
        ("emerg", "emergency"),
        ("Alert", "alert"),
        ("NOTICE", "notice"),
    ],
)
def test_log_method_takes_syslog_spellings(spelling: str, level: str) -> None:
    stream = io.StringIO()
    configure_logging(level="debug", target="json", stream=stream)
    structlog.get_logger().log(spelling, "agent_log", text="hello")
    (event,) = json_lines(stream)
    assert event["level"] == level


def test_unknown_level_rejected() -> None:
    with pytest.raises(ValueError, match="log level must be one of"):
        configure_logging(level="loud", target="json", stream=io.StringIO())


def test_secrets_rendered_as_stars() -> None:
    stream = io.StringIO()
    configure_logging(level="info", target="json", stream=stream)
    log = structlog.get_logger().bind(db_password="hunter2")
    log.info(
        "globals_loaded",
        api_secret="s3cr3t",
        variables={
            "ldap_password": "pw",
            "home_root": "/srv",
            "deep": [{"x_secret": 1}],
        },
    )
    text = stream.getvalue()
    assert "hunter2" not in text
    assert "s3cr3t" not in text
    assert '"pw"' not in text
    (event,) = json_lines(stream)
    assert event["db_password"] == "***"
    assert event["api_secret"] == "***"
    assert event["variables"]["ldap_password"] == "***"
    assert event["variables"]["home_root"] == "/srv"
    assert event["variables"]["deep"][0]["x_secret"] == "***"


def test_secrets_hidden_on_console() -> None:
    stream = io.StringIO()
    configure_logging(level="info", target="console", stream=stream)
    structlog.get_logger().info("x", smtp_password="hunter2")
    assert "hunter2" not in stream.getvalue()
    assert "smtp_password=***" in stream.getvalue()


def test_stdlib_records_reach_output() -> None:
    stream = io.StringIO()
    configure_logging(level="info", target="json", stream=stream)
    logging.getLogger("asyncio").warning("task %s failed", "t1")
    logging.getLogger("asyncio").debug("not shown")
    (event,) = json_lines(stream)
    assert event["event"] == "task t1 failed"
    assert event["logger"] == "asyncio"
    assert event["level"] == "warning"


def test_exception_rendered_in_json() -> None:
    stream = io.StringIO()
    configure_logging(level="info", target="json", stream=stream)
    try:
        raise RuntimeError("store down")
    except RuntimeError:
        structlog.get_logger().exception("cycle_failed", agent="a")
    (event,) = json_lines(stream)
    assert event["level"] == "error"
    assert "RuntimeError: store down" in event["exception"]


def test_shift_level_by_verbosity() -> None:
    assert shift_level("info", 1) == "debug"
    assert shift_level("info", 5) == "debug"
    assert shift_level("info", -1) == "notice"
    assert shift_level("warning", -2) == "critical"
    assert shift_level("WARN", 0) == "warning"


def test_auto_target_json_on_plain_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    with open(tmp_path / "log", "w") as stream:
        assert resolve_target("auto", stream) == "json"


def test_auto_target_journal_when_stream_matches(tmp_path: Path, monkeypatch) -> None:
    with open(tmp_path / "log", "w") as stream:
        stat = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{stat.st_dev}:{stat.st_ino}")
        assert journal_stream_matches(stream)
        assert resolve_target("auto", stream) == "journal"
        monkeypatch.setenv("JOURNAL_STREAM", f"{stat.st_dev}:{stat.st_ino + 1}")
        assert not journal_stream_matches(stream)
        monkeypatch.setenv("JOURNAL_STREAM", "garbage")
        assert not journal_stream_matches(stream)


def test_auto_target_console_on_terminal(monkeypatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    main, secondary = pty.openpty()
    try:
        with os.fdopen(secondary, "w", closefd=False) as stream:
            assert resolve_target("auto", stream) == "console"
    finally:
        os.close(main)
        os.close(secondary)


def test_unknown_target_rejected() -> None:
    with pytest.raises(ValueError, match="log target must be one of"):
        resolve_target("syslog", io.StringIO())


def test_journal_entry_fields(listener, parse_journal: Callable) -> None:
    configure_logging(
        level="debug",
        target="journal",
        stream=io.StringIO(),
        journal_socket=listener.path,
    )
    log = structlog.get_logger().bind(
        agent="accounts", mnemonic="acct", workflow="tickets", run_id="r-1"
    )
    log.notice("phase_finished", record="42", phase="run", ldap_password="pw")
    fields = parse_journal(listener.receive())
    assert fields["PRIORITY"] == "5"
    assert fields["SYSLOG_IDENTIFIER"] == "fleetd"
    assert fields["EVENT"] == "phase_finished"
    assert fields["AGENT"] == "accounts"
    assert fields["MNEMONIC"] == "acct"
    assert fields["WORKFLOW"] == "tickets"
    assert fields["RECORD"] == "42"
    assert fields["PHASE"] == "run"
    assert fields["RUN_ID"] == "r-1"
    assert fields["LDAP_PASSWORD"] == "***"
    assert fields["MESSAGE"].startswith("phase_finished ")
    assert "agent=accounts" in fields["MESSAGE"]
    assert "pw" not in fields["MESSAGE"].replace("ldap_password", "")


@pytest.mark.parametrize(
    ("method", "priority"),
    [
        ("debug", "7"),
        ("info", "6"),
        ("notice", "5"),
        ("warning", "4"),
        ("error", "3"),
        ("critical", "2"),
        ("alert", "1"),
        ("emergency", "0"),
    ],
)
def test_journal_priority_per_level(
    listener, parse_journal: Callable, method: str, priority: str
) -> None:
    configure_logging(
        level="debug",
        target="journal",
        stream=io.StringIO(),
        journal_socket=listener.path,
    )
    getattr(structlog.get_logger(), method)("x")
    assert parse_journal(listener.receive())["PRIORITY"] == priority


def test_journal_newline_value_uses_binary_form(
    listener, parse_journal: Callable
) -> None:
    configure_logging(
        level="info",
        target="journal",
        stream=io.StringIO(),
        journal_socket=listener.path,
    )
    structlog.get_logger().info("program_output", line="a\nb=c")
    data = listener.receive()
    assert b"LINE\n" in data  # name, newline, then the 8-byte length
    assert parse_journal(data)["LINE"] == "a\nb=c"


def test_journal_large_entry_sent_as_memfd(listener, parse_journal: Callable) -> None:
    configure_logging(
        level="info",
        target="journal",
        stream=io.StringIO(),
        journal_socket=listener.path,
    )
    # Larger than the datagram limit of a unix socket (net.core.wmem_max).
    payload = "x" * (4 << 20)
    structlog.get_logger().info("big", data=payload)
    assert parse_journal(listener.receive())["DATA"] == payload


def test_journal_exception_traceback(listener, parse_journal: Callable) -> None:
    configure_logging(
        level="info",
        target="journal",
        stream=io.StringIO(),
        journal_socket=listener.path,
    )
    try:
        raise OSError("disk full")
    except OSError:
        structlog.get_logger().exception("commit_failed", agent="a")
    fields = parse_journal(listener.receive())
    assert fields["PRIORITY"] == "3"
    assert "OSError: disk full" in fields["TRACEBACK"]
    assert "OSError: disk full" in fields["MESSAGE"]


def test_journal_unreachable_falls_back_to_stream(tmp_path: Path) -> None:
    stream = io.StringIO()
    configure_logging(
        level="info", target="journal", stream=stream, journal_socket=tmp_path / "none"
    )
    structlog.get_logger().info("run_finished", agent="a")
    (event,) = json_lines(stream)
    assert event["event"] == "run_finished"
    assert event["agent"] == "a"
    assert "journal_error" in event


def test_field_names_made_valid() -> None:
    renderer = JournaldRenderer()
    (fields,), _ = renderer(
        None,
        "info",
        {"event": "e", "level": "info", "run-id": "1", "2x": 2, "message": "m"},
    )
    names = [name for name, _ in fields]
    assert "RUN_ID" in names
    assert "F2X" in names
    assert "FLEETD_MESSAGE" in names
    assert names.count("MESSAGE") == 1


def test_syslog_level_key_sets_priority(listener, parse_journal: Callable) -> None:
    configure_logging(
        level="info",
        target="journal",
        stream=io.StringIO(),
        journal_socket=listener.path,
    )
    structlog.get_logger().info("agent_unscheduled", syslog_level="notice")
    fields = parse_journal(listener.receive())
    assert fields["PRIORITY"] == "5"
    assert "SYSLOG_LEVEL" not in fields
