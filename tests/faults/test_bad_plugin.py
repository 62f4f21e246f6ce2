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
