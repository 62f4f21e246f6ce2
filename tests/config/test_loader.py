"""Loading the drop-in directory: order, merge, leftovers, paths, defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetd.config import ConfigError, default_conf_dir, load_config


def test_empty_dir_gives_defaults(conf_dir: Path) -> None:
    config = load_config(conf_dir)
    daemon = config.daemon
    assert config.conf_dir == conf_dir
    assert daemon.max_concurrency == 64
    assert daemon.interval == 300.0
    assert daemon.splay == 30.0
    assert daemon.shutdown_grace == 30.0
    assert daemon.cleanup_timeout == 60.0
    assert daemon.lease == 60.0
    assert daemon.safe_path == ("/usr/local/bin", "/usr/bin", "/bin")
    assert daemon.plugin_dirs == ()
    assert daemon.log_level == "info"
    assert daemon.state.startswith("sqlite:////")
    assert config.workflows == {}
    assert config.globals == {}


def test_later_files_win_key_by_key(conf_dir: Path, write) -> None:
    write(
        "10-base.toml",
        '[daemon]\ninterval = "1m"\nsplay = "5s"\n'
        '[globals]\nhome_root = "/srv/home"\nshell = "/bin/sh"\n'
        "[globals.limits]\ncpu = 1\nmem = 2\n",
    )
    write(
        "20-site.toml",
        '[daemon]\nsplay = "2s"\n[globals]\nshell = "/bin/bash"\n'
        "[globals.limits]\nmem = 4\n",
    )
    config = load_config(conf_dir)
    assert config.daemon.interval == 60.0
    assert config.daemon.splay == 2.0
    assert config.globals["home_root"] == "/srv/home"
    assert config.globals["shell"] == "/bin/bash"
    assert config.globals["limits"] == {"cpu": 1, "mem": 4}


def test_files_merge_in_lexical_order(conf_dir: Path, write) -> None:
    write("b.toml", '[daemon]\nlog_level = "debug"\n')
    write("a.toml", '[daemon]\nlog_level = "error"\n')
    assert load_config(conf_dir).daemon.log_level == "debug"


def test_leftovers_ignored_silently(conf_dir: Path, write) -> None:
    for name in [
        ".hidden.toml",
        "old.toml~",
        ".x.agent.swp",
        "a.toml.swp",
        "a.toml.dpkg-old",
        "a.toml.dpkg-dist",
        "a.toml.rpmnew",
        "a.toml.rpmsave",
    ]:
        write(name, "this is not TOML [")
    config = load_config(conf_dir)
    assert config.ignored == ()
    assert config.agent_files == ()


def test_other_files_reported_and_ignored(conf_dir: Path, write) -> None:
    write("README", "notes")
    (conf_dir / "subdir").mkdir()
    write("b.agent", "NAME B\nMNEMONIC b\n")
    write("a.agent", "NAME A\nMNEMONIC a\n")
    config = load_config(conf_dir)
    ignored = dict(config.ignored)
    assert ignored[conf_dir / "README"] == "neither *.toml nor *.agent"
    assert ignored[conf_dir / "subdir"] == "not a regular file"
    assert config.agent_files == (conf_dir / "a.agent", conf_dir / "b.agent")


def test_broken_symlinks_reported_and_ignored(conf_dir: Path) -> None:
    (conf_dir / "10-loop.toml").symlink_to(conf_dir / "10-loop.toml")
    (conf_dir / "20-gone.toml").symlink_to(conf_dir / "nowhere.toml")
    (conf_dir / "30-under-file.agent").symlink_to(conf_dir / "20-gone.toml" / "x")
    config = load_config(conf_dir)
    assert dict(config.ignored) == {
        conf_dir / "10-loop.toml": "not a regular file",
        conf_dir / "20-gone.toml": "not a regular file",
        conf_dir / "30-under-file.agent": "not a regular file",
    }


def test_state_file_in_conf_dir_not_reported(conf_dir: Path, write) -> None:
    write("00-daemon.toml", '[daemon]\nstate = "state.db"\n')
    for name in ("state.db", "state.db-wal", "state.db-shm", "notes.txt"):
        write(name, "")

    config = load_config(conf_dir)

    assert dict(config.ignored) == {
        conf_dir / "notes.txt": "neither *.toml nor *.agent"
    }


def test_relative_paths_resolve_against_file(conf_dir: Path, write) -> None:
    write(
        "00-paths.toml",
        '[daemon]\nstate = "sqlite:///var/state.db"\nplugin_dirs = ["plugins"]\n'
        'safe_path = ["bin", "/usr/bin"]\n'
        '[workflows.requests]\nkind = "spool"\npath = "../spool"\n'
        '[workflows.db]\nkind = "sqlite"\npath = "data/requests.db"\ntable = "t"\n'
        '[workflows.cmd]\nkind = "command"\nlist_command = "./list-requests --all"\n'
        'update_command = ["update-request"]\n',
    )
    config = load_config(conf_dir)
    assert config.daemon.state == f"sqlite:///{conf_dir}/var/state.db"
    assert config.daemon.plugin_dirs == (str(conf_dir / "plugins"),)
    assert config.daemon.safe_path == (str(conf_dir / "bin"), "/usr/bin")
    workflows = config.workflows
    assert workflows["requests"].options["path"] == str(conf_dir.parent / "spool")
    assert workflows["db"].options["path"] == str(conf_dir / "data/requests.db")
    assert workflows["db"].options["id_column"] == "id"
    assert workflows["db"].options["where"] is None
    assert workflows["cmd"].options["list_command"] == [
        str(conf_dir / "list-requests"),
        "--all",
    ]
    assert workflows["cmd"].options["update_command"] == ["update-request"]
    assert workflows["cmd"].options["timeout"] == 60.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("sqlite:////abs/state.db", "sqlite:////abs/state.db"),
        ("sqlite:///rel/state.db", "sqlite:///{dir}/rel/state.db"),
        ("state.db", "sqlite:///{dir}/state.db"),
        ("/abs/other.db", "sqlite:////abs/other.db"),
        (
            "postgresql://fleetd@127.0.0.1/fleet?sslmode=disable",
            "postgresql://fleetd@127.0.0.1/fleet?sslmode=disable",
        ),
    ],
)
def test_state_url_forms(conf_dir: Path, write, value: str, expected: str) -> None:
    write("state.toml", f'[daemon]\nstate = "{value}"\n')
    assert load_config(conf_dir).daemon.state == expected.format(dir=conf_dir)


def test_durations_take_units(conf_dir: Path, write) -> None:
    write(
        "d.toml",
        '[daemon]\ninterval = "1h30m"\nsplay = "250ms"\nshutdown_grace = 12\n'
        'cleanup_timeout = 1.5\nlease = "2m"\n',
    )
    daemon = load_config(conf_dir).daemon
    assert daemon.interval == 5400.0
    assert daemon.splay == 0.25
    assert daemon.shutdown_grace == 12.0
    assert daemon.cleanup_timeout == 1.5
    assert daemon.lease == 120.0


def test_globals_become_agent_values(conf_dir: Path, write) -> None:
    write(
        "g.toml",
        "[globals]\nenabled = true\ndisabled = false\nport = 22\n"
        'since = 2024-05-01\nnames = ["a", true]\n',
    )
    values = load_config(conf_dir).globals
    assert values["enabled"] == 1
    assert values["disabled"] == ""
    assert values["port"] == 22
    assert values["since"] == "2024-05-01"
    assert values["names"] == ["a", 1]


def test_default_conf_dir_follows_env(monkeypatch) -> None:
    monkeypatch.setenv("FLEETD_CONF_DIR", "/tmp/elsewhere")
    assert default_conf_dir() == Path("/tmp/elsewhere")
    monkeypatch.delenv("FLEETD_CONF_DIR")
    assert default_conf_dir() == Path("/etc/fleetd/conf.d")


def test_missing_conf_dir_is_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "nowhere")
    assert "conf dir not found" in caught.value.errors[0]


def test_path_globals_resolve_against_file(conf_dir: Path, write) -> None:
    write(
        "g.toml",
        '[globals]\nsandbox_dir = "../var/sandbox"\nkey_path = "keys/a.pub"\n'
        'abs_dir = "/srv/home"\nhome_root = "relative/stays"\n',
    )
    values = load_config(conf_dir).globals
    assert values["sandbox_dir"] == str(conf_dir.parent / "var/sandbox")
    assert values["key_path"] == str(conf_dir / "keys/a.pub")
    assert values["abs_dir"] == "/srv/home"
    assert values["home_root"] == "relative/stays"
