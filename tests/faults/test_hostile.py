"""Hostile records and spool files: data stays data, bad files are invalid.

A record's fields reach a program as one argument each, whatever they
contain; the program (argv.py) writes the arguments it got as JSON.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.faults.support import Site

ARGV_SCRIPT = """#!/usr/bin/python3
import json, sys
with open(sys.argv[1], "w", encoding="utf-8", errors="surrogateescape") as out:
    json.dump(sys.argv[2:], out)
"""

AGENT = """NAME     Hostile
MNEMONIC hostile
WORKFLOW requests

EXEC_COMMAND @ROOT@/argv.py @ROOT@/markers/${this.id}.argv ${this.value} --opt=${this.value} "${this.value}"
SET this.state = "done"
ON_FAILURE
    ECHO failed
END
"""

HOSTILE_VALUES = {
    "semicolon": "x; touch @ROOT@/pwned",
    "substitution": "$(touch @ROOT@/pwned) `touch @ROOT@/pwned`",
    "pipe": "a | touch @ROOT@/pwned && rm -rf / || true > /tmp/x < /etc/passwd",
    "interpolation": "${this.id} ${secret_password} ${ENV}",
    "dashes": "--help",
    "dash": "-rf",
    "newlines": "line one\nline two\r\n\n",
    "quotes": 'it\'s "quoted" \\ back',
    "glob": "* ? [a-z] ~ ~root",
    "spaces": "  two  spaces  ",
    "empty": "",
    "unicode": "Grüße \u202e \u2028 \U0001f600",
    "long": "y" * 100_000,
}


@pytest.fixture
def hostile_site(site: Site) -> Site:
    argv = site.root / "argv.py"
    argv.write_text(ARGV_SCRIPT)
    argv.chmod(0o755)
    site.write("10-globals.toml", '[globals]\nsecret_password = "hunter2"\n')
    site.write("hostile.agent", AGENT)
    return site


def reports(site: Site, *args: str) -> tuple[int, dict[str, dict[str, Any]]]:
    done = site.run("once", "--json", "--log-target", "json", *args)
    found = {}
    for line in done.stdout.splitlines():
        if not line.startswith("{"):
            continue  # ECHO text
        report = json.loads(line)
        found[report["record"]] = report
    return done.returncode, found


def test_hostile_values_stay_one_argument(hostile_site: Site) -> None:
    site = hostile_site
    values = {
        name: value.replace("@ROOT@", str(site.root))
        for name, value in HOSTILE_VALUES.items()
    }
    for name, value in values.items():
        site.request(name, value=value)

    status, found = reports(site)

    assert status == 0
    for name, value in values.items():
        assert found[name]["outcome"] == "committed", found[name]
        argv = json.loads((site.markers / f"{name}.argv").read_text())
        assert argv == [value, f"--opt={value}", value], name
    assert not (site.root / "pwned").exists()


def test_nul_byte_fails_command(hostile_site: Site) -> None:
    site = hostile_site
    site.request("nul", value="before\0after")

    status, found = reports(site)

    assert status == 0
    assert found["nul"]["outcome"] == "rolled_back"
    assert "contains a NUL byte" in found["nul"]["reason"]
    assert not (site.markers / "nul.argv").exists()


def test_oversized_argument_fails_cleanly(hostile_site: Site) -> None:
    site = hostile_site
    # Linux limits one argument to 128 KiB (MAX_ARG_STRLEN).
    site.request("huge", value="z" * 200_000)
    site.request("fine", value="ok")

    status, found = reports(site)

    assert status == 0
    assert found["huge"]["outcome"] == "rolled_back"
    assert "Argument list too long" in found["huge"]["reason"]
    assert found["fine"]["outcome"] == "committed"


def test_huge_field_read_and_committed(hostile_site: Site) -> None:
    site = hostile_site
    site.write(
        "hostile.agent",
        AGENT.replace("${this.value}", "${this.short}"),
    )
    site.request("big", short="s", value="v" * 20_000_000)

    status, found = reports(site)

    assert status == 0
    assert found["big"]["outcome"] == "committed"
    written = json.loads((site.spool / "big.json").read_text())
    assert len(written["value"]) == 20_000_000
    assert written["state"] == "done"


@pytest.mark.parametrize(
    ("depth", "reason"),
    [
        (63, None),
        (64, "fields nested deeper than 64 levels"),
        (600, "fields nested deeper than 64 levels"),
        (200_000, "invalid JSON: nested too deeply"),
    ],
)
def test_deeply_nested_json(hostile_site: Site, depth: int, reason: str | None) -> None:
    site = hostile_site
    # One level for the object, `depth` for the lists.
    nested = "[" * depth + "]" * depth
    (site.spool / "deep.json").write_text(f'{{"value": "x", "deep": {nested}}}')
    site.request("plain", value="y")

    status, found = reports(site)

    assert found["plain"]["outcome"] == "committed"
    if reason is None:
        assert found["deep"]["outcome"] == "committed"
        assert status == 0
    else:
        assert found["deep"]["outcome"] == "invalid"
        assert found["deep"]["reason"] == reason
        assert status == 1


def test_symlinks_in_spool_invalid(hostile_site: Site, tmp_path: Path) -> None:
    site = hostile_site
    outside = tmp_path / "outside.json"
    outside.write_text('{"value": "secret"}')
    (site.spool / "escape.json").symlink_to(outside)
    (site.spool / "relative.json").symlink_to(Path("..") / "outside.json")
    site.request("target", value="inside")
    (site.spool / "chain.json").symlink_to(site.spool / "hop.link")
    (site.spool / "hop.link").symlink_to(outside)
    (site.spool / "inside.json").symlink_to(site.spool / "target.json")

    status, found = reports(site)

    assert status == 1
    for name in ("escape", "relative", "chain"):
        assert found[name]["outcome"] == "invalid", name
        assert found[name]["reason"] == "symlink pointing outside the spool"
    assert found["inside"]["outcome"] == "invalid"
    assert found["inside"]["reason"] == (
        "symlink to record 'target' of the same spool, not a record itself"
    )
    assert found["target"]["outcome"] == "committed"
    assert (site.spool / "inside.json").is_symlink()
    target = json.loads((site.spool / "target.json").read_text())
    assert target == {"value": "inside", "state": "done"}
    assert json.loads(outside.read_text()) == {"value": "secret"}


def test_odd_file_names(hostile_site: Site) -> None:
    site = hostile_site
    names = ["new\nline", "-rf", "back\\slash", "sp ace", "semi;colon", "$(x)"]
    for name in names:
        site.request(name, value=name)
    odd = os.fsencode(site.spool) + b"/odd\xff\xfe.json"
    with open(odd, "wb") as stream:
        stream.write(b'{"value": "odd"}')
    (site.spool / ".hidden.json").write_text('{"value": "hidden"}')
    (site.spool / "not-json.txt").write_text("x")

    status, found = reports(site)

    assert status == 1
    for name in names:
        assert found[name]["outcome"] == "committed", name
        argv = json.loads((site.markers / f"{name}.argv").read_text())
        assert argv[0] == name
    assert found["odd\\xff\\xfe"]["outcome"] == "invalid"
    assert found["odd\\xff\\xfe"]["reason"] == "file name is not valid UTF-8"
    assert ".hidden" not in found
    assert len(found) == len(names) + 1
    assert site.locks() == []
