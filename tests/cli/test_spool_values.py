"""Numbers and split results of spool records, through `fleetd once --json`."""

from __future__ import annotations

import json

from tests.cli.support import Site

COMPARE_AGENT = """\
NAME     Compare
MNEMONIC compare
WORKFLOW requests

REQUIRE this.n = 18446744073709551615
SET this.matched = 1
CLEANUP
    LOG info compared ${this.id}
END
"""

FOREACH_AGENT = """\
NAME     Fields
MNEMONIC fields
WORKFLOW requests

FOREACH item IN split({pattern}, this.text, {limit}) DO
    ECHO item [${{item}}]
END
CLEANUP
    LOG info split ${{this.id}}
END
"""


def echoed_items(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("item [")]


def test_huge_json_number_compares_like_text(site: Site, reports) -> None:
    # Perl 5.36 with JSON::PP reads 18446744073709551616 as a double,
    # whether the record contains a JSON number or text, and as doubles
    # the two sides are equal. fleetd compares the text form that way.
    site.request("number", n=18446744073709551616)
    site.request("text", n="18446744073709551616")
    site.write("compare.agent", COMPARE_AGENT)

    result = site.run("once", "--json")

    assert result.returncode == 0, result.stderr
    outcomes = {line["record"]: line["outcome"] for line in reports(result.stdout)}
    assert outcomes["text"] == "committed"
    assert outcomes["number"] == "committed"
    assert json.loads((site.spool / "number.json").read_text())["matched"] == 1


def test_foreach_split_empty_text_runs_never(site: Site, reports) -> None:
    # Perl's split of an empty string gives no field, whatever the limit.
    site.request("r1", text="")
    site.write("fields.agent", FOREACH_AGENT.format(pattern='","', limit="-1"))

    result = site.run("once", "--json")

    assert result.returncode == 0, result.stderr
    assert [line["outcome"] for line in reports(result.stdout)] == ["committed"]
    assert echoed_items(result.stdout) == []


def test_foreach_split_groups_with_limit(site: Site, reports) -> None:
    # The captured separators do not count toward the limit of 3 fields:
    # Perl gives a, =, b, =, c.
    site.request("r1", text="a=b=c")
    site.write("fields.agent", FOREACH_AGENT.format(pattern='"(=)"', limit="3"))

    result = site.run("once", "--json")

    assert result.returncode == 0, result.stderr
    assert echoed_items(result.stdout) == [
        "item [a]",
        "item [=]",
        "item [b]",
        "item [=]",
        "item [c]",
    ]
