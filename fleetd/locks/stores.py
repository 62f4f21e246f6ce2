"""Pick the state store that a `state` URL names."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from fleetd.locks.base import StateStore

POSTGRES_SCHEMES = ("postgresql", "postgres")


def sqlite_path(url: str) -> Path:
    """Return the file an SQLite URL or bare path names.

    `sqlite:////abs/path.db` (four slashes) is absolute, `sqlite:///rel.db`
    is relative to the working directory, and anything without a scheme is
    a file path.
    """
    if url.startswith("sqlite://"):
        rest = url.removeprefix("sqlite://")
        if not rest.startswith("/") or rest == "/":
            raise ValueError(
                f"invalid SQLite URL {url!r}: expected sqlite:////abs/path.db"
                " or sqlite:///relative/path.db"
            )
        path = rest[1:]
    else:
        path = url
    if path in ("", ":memory:"):
        raise ValueError(
            f"invalid state {url!r}: the state store must be a file that"
            " several processes can share"
        )

    return Path(path)


def open_store(url: str) -> StateStore:
    """Return the store for `url`, not yet opened.

    `sqlite:////abs/path.db`, `sqlite:///rel/path.db` or a bare path give
    the SQLite store; `postgresql://...` (with its query parameters) the
    PostgreSQL store.
    """
    scheme = urlsplit(url).scheme if "://" in url else ""
    if scheme in POSTGRES_SCHEMES:
        from fleetd.locks.postgres import PostgresStore

        return PostgresStore(url)
    if scheme in ("", "sqlite"):
        from fleetd.locks.sqlite import SQLiteStore

        return SQLiteStore(sqlite_path(url), url=url)
    raise ValueError(
        f"unsupported state URL scheme {scheme!r} in {url!r}: expected"
        " sqlite:// or postgresql://"
    )


async def upgrade(url: str) -> int:
    """Create or migrate the schema of the store at `url`; return its version."""
    scheme = urlsplit(url).scheme if "://" in url else ""
    if scheme in POSTGRES_SCHEMES:
        from fleetd.locks.postgres_schema import upgrade as upgrade_postgres

        return await upgrade_postgres(url)
    from fleetd.locks.sqlite import SCHEMA_VERSION

    store = open_store(url)
    await store.open()
    await store.close()

    return SCHEMA_VERSION
