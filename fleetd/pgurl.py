"""libpq's connection parameters in a PostgreSQL URL, for asyncpg.

Operators copy PostgreSQL URLs from psql and other libpq programs, whose
query strings may carry libpq connection parameters. asyncpg reads some
of them (`sslmode`, `sslrootcert`, `target_session_attrs`, `passfile`,
...) and sends every other one to the server as a setting, so
`?connect_timeout=10` failed the connection with "unrecognized
configuration parameter". No library maps the rest, so this module does,
for the parameters that have a meaning without libpq:

- `connect_timeout` becomes asyncpg's connection timeout (libpq waits at
  least 2 seconds; 0 means asyncpg's default of 60 seconds);
- `options` (`-c name=value` ...) and `fallback_application_name` become
  server settings, as libpq sends them;
- the TCP keepalive and user timeout parameters are dropped, since asyncpg
  leaves them to the system, and so are `gssencmode` and `channel_binding`
  when they do not ask for more than asyncpg does (`disable`, `prefer`).
  A URL that requires GSSAPI encryption or channel binding is refused.
"""

from __future__ import annotations

import shlex
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# libpq parameters that tune the TCP connection, which asyncpg cannot set.
_TCP_PARAMETERS = frozenset(
    {
        "keepalives",
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_count",
        "tcp_user_timeout",
    }
)
# libpq parameters whose weaker values are what asyncpg does anyway.
_OPTIONAL_FEATURES = {
    "gssencmode": "GSSAPI encryption",
    "channel_binding": "channel binding",
}


def connect_arguments(url: str) -> tuple[str, dict[str, Any]]:
    """Return the URL for asyncpg and the keyword arguments to connect with.

    Raises:
        ValueError: a parameter requests what asyncpg cannot do, or has a
            value libpq would reject. The message names the parameter.
    """
    parts = urlsplit(url)
    if not parts.query:
        return url, {}
    remaining: list[tuple[str, str]] = []
    arguments: dict[str, Any] = {}
    settings: dict[str, str] = {}
    fallback_name: str | None = None
    named = False
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "connect_timeout":
            arguments.update(_timeout(value))
        elif key == "options":
            settings.update(_server_options(value))
        elif key == "fallback_application_name":
            fallback_name = value
        elif key in _TCP_PARAMETERS:
            continue
        elif key in _OPTIONAL_FEATURES:
            if value not in ("disable", "prefer"):
                feature = _OPTIONAL_FEATURES[key]
                raise ValueError(
                    f"{key}={value}: {feature} is not supported by fleetd's"
                    " PostgreSQL driver (asyncpg); use disable or prefer"
                )
        else:
            named = named or key == "application_name"
            remaining.append((key, value))
    if fallback_name is not None and not named:
        settings.setdefault("application_name", fallback_name)
    if settings:
        arguments["server_settings"] = settings
    query = urlencode(remaining)

    return urlunsplit(parts._replace(query=query)), arguments


def _timeout(value: str) -> dict[str, float]:
    try:
        seconds = int(value)
    except ValueError:
        raise ValueError(
            f"connect_timeout={value}: expected a whole number of seconds"
        ) from None
    if seconds <= 0:
        return {}

    return {"timeout": float(max(seconds, 2))}


def _server_options(value: str) -> dict[str, str]:
    """Parse libpq's `options`: `-c name=value` or `--name=value`, blank-separated."""
    try:
        words = shlex.split(value)
    except ValueError as error:
        raise ValueError(f"options={value}: {error}") from None
    settings: dict[str, str] = {}
    index = 0
    while index < len(words):
        word = words[index]
        if word == "-c" and index + 1 < len(words):
            assignment = words[index + 1]
            index += 2
        elif (
            word.startswith("-c")
            and len(word) > 2
            or word.startswith("--")
            and "=" in word
        ):
            assignment = word[2:]
            index += 1
        else:
            raise ValueError(
                f"options={value}: expected '-c name=value' or '--name=value',"
                f" got {word!r}"
            )
        name, equals, setting = assignment.partition("=")
        if not equals or not name:
            raise ValueError(
                f"options={value}: expected name=value, got {assignment!r}"
            )
        settings[name.replace("-", "_")] = setting

    return settings
