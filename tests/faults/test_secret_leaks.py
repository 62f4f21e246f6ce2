"""Secret globals stay out of logs, reports and the state store's reasons."""

from __future__ import annotations

from tests.faults.support import Site

SECRET = "hunter2-in-path"


def test_missing_program_path_hides_secret(site: Site) -> None:
    # The program name is built from a secret, and no such program exists.
    # The error that names the missing program must show *** instead.
    site.write("10-globals.toml", f'[globals]\ntool_secret = "{SECRET}"\n')
    site.write(
        "tool.agent",
        "NAME Tool\nMNEMONIC tool\nEXEC_COMMAND /nonexistent/${tool_secret}/run\n",
    )

    result = site.run("once", "--json", "--log-target", "json")
    status = site.run("status", "--json")
    history = site.run("history", "", "--json")

    assert result.returncode == 1, result.stderr
    assert "/nonexistent/***/run" in result.stdout
    assert SECRET not in result.stdout
    assert SECRET not in result.stderr
    assert SECRET not in status.stdout
    assert SECRET not in history.stdout


def test_multiline_secret_hidden_in_reason(site: Site) -> None:
    # A private key or a certificate bundle spans several lines. A program
    # that prints it to stderr splits it into lines, and the failure reason
    # shows the last one, which is part of the secret.
    site.write(
        "10-globals.toml", '[globals]\nkey_secret = "first-line\\nhunter2-tail"\n'
    )
    site.write(
        "tool.agent",
        "NAME Tool\nMNEMONIC tool\n"
        "EXEC_COMMAND sh -c 'printf \"%s\\n\" \"$1\" >&2; exit 3' sh ${key_secret}\n",
    )

    result = site.run("once", "--json", "--log-target", "json")
    status = site.run("status", "--json")
    history = site.run("history", "", "--json")

    assert result.returncode == 1, result.stderr
    assert "exited with status 3" in result.stdout
    assert "hunter2-tail" not in result.stdout
    assert "hunter2-tail" not in result.stderr
    assert "hunter2-tail" not in status.stdout
    assert "hunter2-tail" not in history.stdout
