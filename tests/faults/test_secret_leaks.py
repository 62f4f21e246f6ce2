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
        'EXEC_COMMAND sh -c \'printf "%s\\n" "$1" >&2; exit 3\' sh ${key_secret}\n',
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


def test_update_command_stderr_hides_secret(site: Site) -> None:
    # The agent stages a secret into a record of a command workflow, and
    # update_command fails after printing the record it read to stderr.
    # Its stderr ends up in the reason of the failed commit.
    lister = site.root / "list.sh"
    lister.write_text('#!/bin/sh\necho \'[{"id": "r1"}]\'\n')
    lister.chmod(0o755)
    updater = site.root / "update.sh"
    updater.write_text("#!/bin/sh\ncat >&2\nexit 1\n")
    updater.chmod(0o755)
    site.write(
        "10-listed.toml",
        f'[globals]\ntoken_secret = "{SECRET}"\n\n'
        f'[workflows.listed]\nkind = "command"\nlist_command = ["{lister}"]\n'
        f'update_command = ["{updater}"]\n',
    )
    site.write(
        "tool.agent",
        "NAME Tool\nMNEMONIC tool\nWORKFLOW listed\nSET this.token = token_secret\n",
    )

    result = site.run("once", "--json", "--log-target", "json")
    status = site.run("status", "--json")
    history = site.run("history", "r1", "--json")

    assert result.returncode == 1, result.stderr
    assert "update_command exited with status 1" in result.stdout
    assert SECRET not in result.stdout
    assert SECRET not in result.stderr
    assert SECRET not in status.stdout
    assert SECRET not in history.stdout
