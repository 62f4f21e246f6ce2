"""Secret globals and URL passwords are masked."""

from __future__ import annotations

from fleetd.config import is_secret, redact_globals, redact_url


def test_secret_names() -> None:
    assert is_secret("ldap_password")
    assert is_secret("api_secret")
    assert is_secret("API_SECRET")
    assert not is_secret("password_hint_text")
    assert not is_secret("home_root")


def test_redact_globals_masks_values() -> None:
    values = {"ldap_password": "hunter2", "api_secret": "s3", "home_root": "/srv"}
    assert redact_globals(values) == {
        "ldap_password": "***",
        "api_secret": "***",
        "home_root": "/srv",
    }


def test_redact_url_masks_password() -> None:
    url = "postgresql://fleetd:hunter2@127.0.0.1/fleet"
    assert redact_url(url) == "postgresql://fleetd:***@127.0.0.1/fleet"
    assert redact_url("postgresql://fleetd@127.0.0.1/x") == (
        "postgresql://fleetd@127.0.0.1/x"
    )
