"""Keep secret globals out of logs and status output.

A global whose name ends in `_secret` or `_password` is a secret: wherever
globals are logged or shown, its value is replaced with `***`. Passwords in
`postgresql://` URLs are masked the same way.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

MASK = "***"
_SECRET_SUFFIXES = ("_secret", "_password")
_URL_PASSWORD = re.compile(r"^(?P<head>[a-z][a-z0-9+.-]*://[^:/@]*:)[^@]*(?P<at>@)")


def is_secret(name: str) -> bool:
    """Whether a global named `name` holds a secret."""
    return name.lower().endswith(_SECRET_SUFFIXES)


def redact_globals(variables: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of `variables` with every secret value masked."""
    return {
        name: (MASK if is_secret(name) else value) for name, value in variables.items()
    }


def redact_url(url: str) -> str:
    """Return `url` with the password of its user part masked."""
    return _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}{m['at']}", url, count=1)
