"""libpq connection parameters in PostgreSQL URLs, mapped for asyncpg."""

from __future__ import annotations

import pytest

from fleetd.pgurl import connect_arguments

BASE = "postgresql://fleetd@127.0.0.1/fleet"


def test_url_without_query_is_unchanged() -> None:
    assert connect_arguments(BASE) == (BASE, {})


def test_connect_timeout_becomes_the_connection_timeout() -> None:
    url, arguments = connect_arguments(f"{BASE}?connect_timeout=10&sslmode=require")
    assert url == f"{BASE}?sslmode=require"
    assert arguments == {"timeout": 10.0}


@pytest.mark.parametrize(("value", "expected"), [("1", {"timeout": 2.0}), ("0", {})])
def test_connect_timeout_follows_libpq_limits(value: str, expected: dict) -> None:
    # libpq waits at least 2 seconds, and 0 means no limit of its own.
    assert connect_arguments(f"{BASE}?connect_timeout={value}")[1] == expected


def test_options_become_server_settings() -> None:
    url, arguments = connect_arguments(
        f"{BASE}?options=-c%20search_path%3Dfleetd%20--statement-timeout%3D5s"
    )
    assert url == BASE
    assert arguments == {
        "server_settings": {"search_path": "fleetd", "statement_timeout": "5s"}
    }


def test_fallback_application_name_only_without_application_name() -> None:
    _, fallback = connect_arguments(f"{BASE}?fallback_application_name=fleetd")
    assert fallback == {"server_settings": {"application_name": "fleetd"}}
    url, named = connect_arguments(
        f"{BASE}?application_name=ops&fallback_application_name=fleetd"
    )
    assert url == f"{BASE}?application_name=ops"
    assert named == {}


def test_tcp_and_optional_parameters_are_dropped() -> None:
    url, arguments = connect_arguments(
        f"{BASE}?keepalives=1&keepalives_idle=30&tcp_user_timeout=1000"
        "&gssencmode=disable&channel_binding=prefer&target_session_attrs=read-write"
    )
    assert url == f"{BASE}?target_session_attrs=read-write"
    assert arguments == {}


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("gssencmode=require", "GSSAPI encryption is not supported"),
        ("channel_binding=require", "channel binding is not supported"),
        ("connect_timeout=soon", "expected a whole number of seconds"),
        ("options=-x", "expected '-c name=value'"),
    ],
)
def test_parameters_fleetd_cannot_honour_are_refused(query: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        connect_arguments(f"{BASE}?{query}")
