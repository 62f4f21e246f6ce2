"""Every configuration error names the file, the key and the expected form."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fleetd.config import ConfigError, load_config


def errors_of(conf_dir: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(conf_dir)
    return caught.value.errors


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            '[daemon]\nmax_concurrency = "lots"\n',
            (
                "daemon.max_concurrency: expected a whole number of at least 1, "
                "got a string ('lots')"
            ),
        ),
        (
            "[daemon]\nmax_concurrency = 0\n",
            "daemon.max_concurrency: expected a whole number of at least 1, got 0",
        ),
        (
            '[daemon]\ninterval = "5 minutes"\n',
            (
                'daemon.interval: expected a duration such as "250ms", "30s", "5m" '
                "or \"1h30m\", got '5 minutes'"
            ),
        ),
        (
            "[daemon]\nmax_concurrency = -3\n",
            "daemon.max_concurrency: expected a whole number of at least 1, got -3",
        ),
        (
            '[workflows.req]\nkind = "spool"\npath = ""\n',
            "workflows.req.path: expected a folder path, got ''",
        ),
        (
            "[daemon]\nsplay = -1\n",
            "daemon.splay: expected a duration such as",
        ),
        (
            '[daemon]\nlease = "0s"\n',
            "daemon.lease: expected a duration above 0",
        ),
        (
            '[daemon]\ninterval = "0s"\n',
            "daemon.interval: expected a duration above 0",
        ),
        (
            "[daemon]\ncleanup_timeout = 0\n",
            "daemon.cleanup_timeout: expected a duration above 0",
        ),
        (
            '[daemon]\nsafe_path = "/usr/bin"\n',
            "daemon.safe_path: expected a list of folder paths, got a string",
        ),
        (
            '[daemon]\nlog_level = "loud"\n',
            "daemon.log_level: expected one of debug, info, notice, warning",
        ),
        (
            '[daemon]\nloop = "trio"\n',
            'daemon.loop: expected "asyncio" or "uvloop", got a string (\'trio\')',
        ),
        (
            "[daemon]\nbogus = 1\n",
            "daemon.bogus: unknown key, expected one of state, max_concurrency",
        ),
        (
            '[daemon]\nstate = "mysql://db/fleet"\n',
            (
                "daemon.state: unsupported state URL 'mysql://db/fleet': expected "
                "sqlite:////absolute/path.db"
            ),
        ),
        (
            "[daemon]\nstate = 5\n",
            "daemon.state: expected sqlite:////absolute/path.db",
        ),
        (
            "[server]\nport = 1\n",
            "server: unknown key, expected one of the tables [daemon], [globals]",
        ),
        (
            "daemon = 1\n",
            "daemon: expected a table [daemon]",
        ),
        (
            '[globals]\n"bad-name" = 1\n',
            "globals.bad-name: invalid variable name",
        ),
        (
            '[workflows.req]\npath = "/x"\n',
            (
                "workflows.req: missing key kind, expected spool | sqlite | postgresql "
                "| command"
            ),
        ),
        (
            '[workflows.req]\nkind = "ldap"\n',
            (
                "workflows.req.kind: expected spool | sqlite | postgresql | command, "
                "got 'ldap'"
            ),
        ),
        (
            '[workflows.req]\nkind = "spool"\n',
            "workflows.req: missing key path, expected a folder path",
        ),
        (
            '[workflows.req]\nkind = "spool"\npath = "/x"\ntable = "t"\n',
            "workflows.req.table: unknown key for kind spool, expected one of path",
        ),
        (
            '[workflows.db]\nkind = "sqlite"\npath = "x.db"\n',
            "workflows.db: missing key table, expected a table name",
        ),
        (
            '[workflows.pg]\nkind = "postgresql"\ntable = "t"\n',
            "workflows.pg: missing key dsn, expected a postgresql:// URL",
        ),
        (
            (
                '[workflows.pg]\nkind = "postgresql"\ntable = "t"\n'
                'dsn = "mysql://fleet:s3cret@db/fleet"\n'
            ),
            (
                "workflows.pg.dsn: expected a postgresql:// URL, got "
                "'mysql://fleet:***@db/fleet'"
            ),
        ),
        (
            '[workflows.cmd]\nkind = "command"\n',
            "workflows.cmd: missing key list_command, expected a list of words",
        ),
        (
            (
                '[workflows.cmd]\nkind = "command"\nlist_command = ["ls"]\n'
                'timeout = "0s"\n'
            ),
            "workflows.cmd.timeout: expected a duration above 0",
        ),
        (
            '[workflows.cmd]\nkind = "command"\nlist_command = []\n',
            "workflows.cmd.list_command: expected a list of words such as",
        ),
        (
            (
                '[workflows.cmd]\nkind = "command"\nlist_command = ["ls"]\n'
                'timeout = "soon"\n'
            ),
            "workflows.cmd.timeout: expected a duration such as",
        ),
        (
            '[workflows.Null]\nkind = "spool"\npath = "/x"\n',
            "workflows.Null: invalid workflow name",
        ),
        (
            '[workflows."a b"]\nkind = "spool"\npath = "/x"\n',
            "workflows.a b: invalid workflow name, expected letters, digits, _ and -",
        ),
    ],
)
def test_error_names_file_key_and_form(
    conf_dir: Path, write, table: str, message: str
) -> None:
    path = write("50-site.toml", table)
    errors = errors_of(conf_dir)
    assert len(errors) == 1, errors
    position = rf"{re.escape(str(path))}:\d+:\d+: "
    assert re.match(position + re.escape(message), errors[0]), errors[0]


def test_toml_syntax_error_has_line_and_column(conf_dir: Path, write) -> None:
    path = write("10-bad.toml", '[daemon]\ninterval = "5m\n')
    errors = errors_of(conf_dir)
    assert len(errors) == 1
    assert errors[0].startswith(f"{path}:2:")
    assert "invalid TOML" in errors[0]


def test_all_errors_of_all_files_reported(conf_dir: Path, write) -> None:
    first = write("10-a.toml", '[daemon]\nmax_concurrency = "x"\nbogus = 1\n')
    second = write("20-b.toml", '[daemon]\nsplay = "later"\n')
    third = write("30-c.toml", "[daemon\n")
    errors = errors_of(conf_dir)
    assert len(errors) == 4
    assert f"{first}:2:1: daemon.max_concurrency: expected" in "\n".join(errors)
    assert f"{first}:3:1: daemon.bogus: unknown key" in "\n".join(errors)
    assert f"{second}:2:1: daemon.splay: expected" in "\n".join(errors)
    assert any(e.startswith(f"{third}:1:") for e in errors)


def test_error_names_file_that_set_key(conf_dir: Path, write) -> None:
    write("10-a.toml", '[workflows.req]\nkind = "spool"\npath = "/x"\n')
    second = write("20-b.toml", "[workflows.req]\npath = 5\n")
    errors = errors_of(conf_dir)
    assert errors == [
        f"{second}:2:1: workflows.req.path: expected a folder path, "
        + "got a whole number (5)"
    ]


def test_error_position_points_at_key(conf_dir: Path, write) -> None:
    path = write(
        "10-a.toml",
        '# site settings\n[daemon]\nlog_level = "info"\n\n'
        '  splay = "never"\n[workflows."night shift"]\nkind = "spool"\n'
        'path = "/x"\n[workflows.ok]\nkind = "spool"\npath = 7\n',
    )
    errors = errors_of(conf_dir)
    assert errors[0].startswith(f"{path}:5:3: daemon.splay: expected a duration")
    assert errors[1].startswith(f"{path}:6:1: workflows.night shift: invalid")
    assert errors[2].startswith(f"{path}:11:1: workflows.ok.path: expected")
