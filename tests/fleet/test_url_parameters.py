"""libpq query parameters in the state URL and in a workflow's dsn."""

from __future__ import annotations

import pytest

from tests.fleet.conftest import PgSite, json_lines

pytestmark = pytest.mark.postgres

# connect_timeout is a libpq connection parameter, carried in the query
# string of a PostgreSQL URL. It sets a client timeout, not a server setting.
PARAMETER = "connect_timeout=10"

CLOSE = """
    NAME     Close
    MNEMONIC close
    WORKFLOW tickets
    SET this.status = "closed"
    """


def test_state_url_takes_connect_timeout(site: PgSite) -> None:
    site.tickets(1)
    site.state = f"{site.state}&{PARAMETER}"
    site.settings()
    site.write("close.agent", CLOSE)

    result = site.run("once", "--json")

    assert result.returncode == 0, result.stderr
    assert [line["outcome"] for line in json_lines(result.stdout)] == ["committed"]
    [row] = site.query("SELECT status FROM tickets WHERE id = 1")
    assert row["status"] == "closed"


def test_workflow_dsn_takes_connect_timeout(site: PgSite) -> None:
    site.tickets(1)
    site.settings(dsn=f"{site.dsn}?{PARAMETER}")
    site.write("close.agent", CLOSE)

    result = site.run("once", "--json")

    assert result.returncode == 0, result.stderr
    assert [line["outcome"] for line in json_lines(result.stdout)] == ["committed"]
    [row] = site.query("SELECT status FROM tickets WHERE id = 1")
    assert row["status"] == "closed"
