"""A plugin file that cannot be imported stops no agent that does not use it."""

from __future__ import annotations

from tests.faults.support import Site


def test_broken_plugin_spares_other_agents(site: Site) -> None:
    plugins = site.root / "plugins"
    plugins.mkdir()
    broken = plugins / "broken.py"
    broken.write_text("def broken(:\n")
    broken.chmod(0o644)
    site.write("10-plugins.toml", '[daemon]\nplugin_dirs = ["../plugins"]\n')
    site.write("host.agent", "NAME Host\nMNEMONIC host\nECHO host-ran\n")

    result = site.run("once", "--log-target", "console")

    # Like an invalid agent file, the broken file is reported and once exits
    # 2, but the agents that do not use it still run.
    assert result.returncode == 2, result.stderr
    assert str(broken) in result.stderr
    assert "host-ran" in result.stdout.splitlines()


def test_plugin_calling_exit_spares_agents(site: Site) -> None:
    # A script dropped into a plugin folder may parse its own arguments at
    # import, and argparse then raises SystemExit, which is not an
    # Exception. Such a file is still just a plugin that cannot load.
    plugins = site.root / "plugins"
    plugins.mkdir()
    script = plugins / "script.py"
    script.write_text(
        "import argparse\n"
        "parser = argparse.ArgumentParser()\n"
        "parser.add_argument('--limit', type=int, required=True)\n"
        "parser.parse_args()\n"
    )
    script.chmod(0o644)
    site.write("10-plugins.toml", '[daemon]\nplugin_dirs = ["../plugins"]\n')
    site.write("host.agent", "NAME Host\nMNEMONIC host\nECHO host-ran\n")

    result = site.run("once", "--log-target", "console")

    assert "host-ran" in result.stdout.splitlines(), result.stderr
    assert str(script) in result.stderr
    assert result.returncode == 2, result.stderr


def test_plugin_exit_zero_is_reported(site: Site) -> None:
    plugins = site.root / "plugins"
    plugins.mkdir()
    script = plugins / "quit.py"
    script.write_text("import sys\nsys.exit(0)\n")
    script.chmod(0o644)
    site.write("10-plugins.toml", '[daemon]\nplugin_dirs = ["../plugins"]\n')
    site.write("host.agent", "NAME Host\nMNEMONIC host\nECHO host-ran\n")

    checked = site.run("check", "--log-target", "console")
    result = site.run("once", "--log-target", "console")

    assert checked.returncode == 2, checked.stderr
    assert str(script) in checked.stderr
    assert "host-ran" in result.stdout.splitlines(), result.stderr
    assert result.returncode == 2, result.stderr
