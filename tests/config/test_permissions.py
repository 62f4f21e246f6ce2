"""As root, conf files that others could write or own are rejected."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fleetd.config import ConfigError, load_config

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def test_group_writable_toml_rejected(conf_dir: Path, write) -> None:
    path = write("10-a.toml", "[globals]\nx = 1\n")
    path.chmod(0o664)
    with pytest.raises(ConfigError) as caught:
        load_config(conf_dir)
    assert caught.value.errors == [
        (
            f"{path}: group- or world-writable (mode 0664), expected no write bit "
            f"for group and others when fleetd runs as root; run chmod go-w {path}"
        )
    ]


def test_world_writable_toml_rejected(conf_dir: Path, write) -> None:
    path = write("10-a.toml", "")
    path.chmod(0o646)
    with pytest.raises(ConfigError) as caught:
        load_config(conf_dir)
    assert "(mode 0646)" in caught.value.errors[0]


def test_toml_not_owned_by_root_rejected(conf_dir: Path, write) -> None:
    path = write("10-a.toml", "")
    os.chown(path, 4242, 4242)
    with pytest.raises(ConfigError) as caught:
        load_config(conf_dir)
    assert caught.value.errors == [
        (
            f"{path}: owned by uid 4242, expected root when fleetd runs as root; "
            f"run chown root {path}"
        )
    ]


def test_writable_conf_dir_rejected(conf_dir: Path) -> None:
    conf_dir.chmod(0o777)
    with pytest.raises(ConfigError) as caught:
        load_config(conf_dir)
    assert "(mode 0777)" in caught.value.errors[0]


def test_insecure_agent_left_out(conf_dir: Path, write) -> None:
    good = write("a.agent", "NAME A\nMNEMONIC a\n")
    bad = write("b.agent", "NAME B\nMNEMONIC b\n")
    bad.chmod(0o666)
    config = load_config(conf_dir)
    assert config.agent_files == (good,)
    assert len(config.errors) == 1
    assert config.errors[0].startswith(f"{bad}: group- or world-writable")


def test_secure_files_accepted(conf_dir: Path, write) -> None:
    write("10-a.toml", "[globals]\nx = 1\n").chmod(0o600)
    write("a.agent", "NAME A\nMNEMONIC a\n").chmod(0o644)
    config = load_config(conf_dir)
    assert config.errors == ()
    assert config.globals == {"x": 1}
