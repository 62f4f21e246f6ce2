"""As root, a path is trusted only when no other user can change it.

The rule is sshd's StrictModes: the file and every folder on the way from
/ are owned by root and not group- or world-writable. A root-owned folder
with the sticky bit, as /tmp, may be world-writable above the checked path.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fleetd.config import ConfigError, load_config
from fleetd.config.trust import untrusted_reasons
from fleetd.lang import PluginError, load_plugins

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

AGENT = "NAME A\nMNEMONIC a\n"


def folder(path: Path, mode: int = 0o755) -> Path:
    path.mkdir()
    path.chmod(mode)
    return path


def file(path: Path, text: str = "", mode: int = 0o644) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_safe_file_trusted(tmp_path: Path) -> None:
    path = file(folder(tmp_path / "safe") / "a.agent")
    assert untrusted_reasons(path) == []


def test_sticky_parent_trusted(tmp_path: Path) -> None:
    shared = folder(tmp_path / "shared", 0o1777)
    path = file(folder(shared / "own") / "a.agent")
    assert untrusted_reasons(path) == []


def test_sticky_folder_itself_rejected(tmp_path: Path) -> None:
    shared = folder(tmp_path / "shared", 0o1777)
    reasons = untrusted_reasons(shared)
    assert reasons == [
        (
            f"{shared}: group- or world-writable (mode 1777), expected no write "
            f"bit for group and others when fleetd runs as root; run chmod go-w "
            f"{shared}"
        )
    ]


def test_writable_parent_rejected(tmp_path: Path) -> None:
    open_folder = folder(tmp_path / "open", 0o777)
    path = file(folder(open_folder / "inner") / "a.agent")
    reasons = untrusted_reasons(path)
    assert reasons == [
        (
            f"{open_folder}: folder is group- or world-writable (mode 0777), "
            "expected no write bit for group and others above files that fleetd "
            f"loads as root; run chmod go-w {open_folder}"
        )
    ]


def test_foreign_parent_rejected(tmp_path: Path) -> None:
    foreign = folder(tmp_path / "foreign")
    os.chown(foreign, 4242, 4242)
    path = file(foreign / "a.agent")
    reasons = untrusted_reasons(path)
    assert len(reasons) == 1
    assert reasons[0].startswith(f"{foreign}: folder owned by uid 4242")
    assert reasons[0].endswith(f"run chown root {foreign}")


def test_symlink_target_folder_checked(tmp_path: Path) -> None:
    open_folder = folder(tmp_path / "open", 0o777)
    target = file(open_folder / "a.agent")
    link = folder(tmp_path / "safe") / "a.agent"
    link.symlink_to(target)
    reasons = untrusted_reasons(link)
    assert len(reasons) == 1
    assert reasons[0].startswith(f"{open_folder}: folder is group- or world-writable")


def test_foreign_symlink_rejected(tmp_path: Path) -> None:
    target = file(folder(tmp_path / "safe") / "a.agent")
    shared = folder(tmp_path / "shared", 0o1777)
    link = shared / "a.agent"
    link.symlink_to(target)
    os.lchown(link, 4242, 4242)
    reasons = untrusted_reasons(link)
    assert reasons == [
        (
            f"{link}: symlink owned by uid 4242, expected root when fleetd runs "
            f"as root; run chown -h root {link}"
        )
    ]


def test_symlink_chain_checked(tmp_path: Path) -> None:
    # safe/a.agent -> open/hop -> safe/real.agent: the middle link sits in a
    # world-writable folder, so anyone could point it elsewhere.
    safe = folder(tmp_path / "safe")
    open_folder = folder(tmp_path / "open", 0o777)
    real = file(safe / "real.agent")
    (open_folder / "hop").symlink_to(real)
    (safe / "a.agent").symlink_to(open_folder / "hop")
    reasons = untrusted_reasons(safe / "a.agent")
    assert len(reasons) == 1
    assert reasons[0].startswith(f"{open_folder}: folder is group- or world-writable")


def test_symlink_loop_unreadable(tmp_path: Path) -> None:
    safe = folder(tmp_path / "safe")
    (safe / "a").symlink_to(safe / "b")
    (safe / "b").symlink_to(safe / "a")
    reasons = untrusted_reasons(safe / "a")
    assert len(reasons) == 1
    assert reasons[0].startswith(f"{safe / 'a'}: cannot read: ")


def test_missing_path_unreadable(tmp_path: Path) -> None:
    missing = tmp_path / "missing.agent"
    assert untrusted_reasons(missing) == [
        f"{missing}: cannot read: No such file or directory"
    ]


def test_conf_dir_under_writable_parent_rejected(tmp_path: Path) -> None:
    open_folder = folder(tmp_path / "open", 0o777)
    conf_dir = folder(open_folder / "conf.d")
    file(conf_dir / "10-a.toml", "[globals]\nx = 1\n")
    file(conf_dir / "a.agent", AGENT)
    with pytest.raises(ConfigError) as caught:
        load_config(conf_dir)
    # Reported once, although the conf dir and each file lie below it.
    assert len(caught.value.errors) == 1
    assert caught.value.errors[0].startswith(f"{open_folder}: folder is group-")


def test_symlinked_agent_from_writable_folder_left_out(tmp_path: Path) -> None:
    open_folder = folder(tmp_path / "open", 0o777)
    target = file(open_folder / "a.agent", AGENT)
    conf_dir = folder(tmp_path / "conf.d")
    (conf_dir / "a.agent").symlink_to(target)
    good = file(conf_dir / "b.agent", "NAME B\nMNEMONIC b\n")
    config = load_config(conf_dir)
    assert config.agent_files == (good,)
    assert len(config.errors) == 1
    assert config.errors[0].startswith(f"{open_folder}: folder is group-")


def test_plugin_in_writable_folder_not_imported(tmp_path: Path) -> None:
    plugins = folder(tmp_path / "plugins", 0o777)
    marker = tmp_path / "imported"
    file(plugins / "p.py", f"open({str(marker)!r}, 'w').close()\n")
    with pytest.raises(PluginError) as caught:
        load_plugins([plugins], entry_points=False)
    assert str(caught.value).startswith(f"{plugins}: group- or world-writable")
    assert not marker.exists()


def test_plugin_bytecode_cache_unused(tmp_path: Path) -> None:
    plugins = folder(tmp_path / "plugins")
    text = (
        "from fleetd.lang import FunctionSpec\n"
        "FLEETD_FUNCTIONS = [FunctionSpec('seven', 0, 0, lambda: 7)]\n"
    )
    file(plugins / "p.py", text)
    registry = load_plugins([plugins], entry_points=False)
    assert registry.function("seven") is not None
    assert not (plugins / "__pycache__").exists()
