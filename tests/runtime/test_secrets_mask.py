"""Which texts a run masks for its secret globals."""

from __future__ import annotations

from fleetd.runtime.run import secret_values


def test_multi_line_secret_masked_line_by_line() -> None:
    key = "-----BEGIN KEY-----\r\nMIIEvQIBADAN\nab\n-----END KEY-----"
    texts = secret_values({"deploy_key_secret": key, "host": "web1"})
    assert texts[0] == key
    assert set(texts) == {
        key,
        "-----BEGIN KEY-----",
        "MIIEvQIBADAN",
        "-----END KEY-----",
    }


def test_only_secret_globals_are_masked() -> None:
    texts = secret_values({"db_password": "s3cret", "db_user": "fleetd", "n_secret": 7})
    assert texts == ("s3cret", "7")


def test_secret_blank_lines_not_masked() -> None:
    key = "line-one\n        \nline-two"
    texts = secret_values({"key_secret": key})
    assert set(texts) == {key, "line-one", "line-two"}
